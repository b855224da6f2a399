// Memory: the storage behind tensors. CPU memory is 64-byte aligned host memory (blocks of 1 MiB and more are
// cached for reuse when freed, up to 4 GiB, so a training step does not fault in fresh pages); CUDA memory comes
// from CUDA's stream-ordered pool (cudaMallocAsync/cudaFreeAsync on cuda::stream()), whose release
// threshold is raised so freed blocks stay cached: no cudaMalloc/cudaFree per op.
#pragma once
#include <cstddef>
#include <memory>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; declared here so that this header needs no CUDA header

namespace tl {

// CUDA memory is freed on the stream it was allocated on (the thread's cuda::stream() at allocation), whichever
// thread destroys the storage: that stream must outlive it, and work on other streams that reads it must be
// ordered before the free by the caller (events), as with PyTorch's record_stream.
class Storage {
 public:
  Storage(size_t bytes, Device device);  // uninitialised memory
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  CUstream_st* stream_ = nullptr;  // CUDA: the stream it was allocated on, and is freed on
};

struct MemoryStats {
  size_t current_bytes = 0;  // bytes held by live tensors on this device
  size_t peak_bytes = 0;
  size_t allocations = 0;  // number of Storage objects created
};
MemoryStats memory_stats(Device d);
void reset_peak_memory(Device d);

}  // namespace tl
