// Memory: the storage behind tensors. CPU memory is 64-byte aligned host memory (blocks of 1 MiB and more are
// cached for reuse when freed, up to 4 GiB, so a training step does not fault in fresh pages); CUDA memory comes
// from CUDA's stream-ordered pool (cudaMallocAsync/cudaFreeAsync on cuda::stream()), whose release
// threshold is raised so freed blocks stay cached: no cudaMalloc/cudaFree per op.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; declared here so that this header needs no CUDA header

namespace tl {

// CUDA memory is freed on the stream it was allocated on (the thread's cuda::stream() at allocation), whichever
// thread destroys the storage: that stream must outlive it. The free is stream-ordered, so work that other
// streams queue on the memory would not be waited for, and the pool could hand the memory to a new tensor while
// that work still reads or writes it: record_stream(s) says that stream `s` uses it (PyTorch's
// Tensor.record_stream), and the free then waits for the work queued on `s` up to the storage's destruction.
class Storage {
 public:
  Storage(size_t bytes, Device device);  // uninitialised memory
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // Marks the memory as used by work queued on CUDA stream `s` (e.g. a copy or a collective on a side stream): at
  // destruction an event is recorded on each such stream and the allocation stream waits for it before the
  // cudaFreeAsync. No-op for CPU storages and for the allocation stream itself; `s` must outlive the storage.
  // Not thread-safe against another record_stream on the same storage.
  void record_stream(CUstream_st* s);
  const std::vector<CUstream_st*>& used_on_streams() const { return used_on_; }  // tests

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  CUstream_st* stream_ = nullptr;  // CUDA: the stream it was allocated on, and is freed on
  std::vector<CUstream_st*> used_on_;  // other streams that use it (record_stream), each once
};

struct MemoryStats {
  size_t current_bytes = 0;  // bytes held by live tensors on this device
  size_t peak_bytes = 0;
  size_t allocations = 0;  // number of Storage objects created
};
MemoryStats memory_stats(Device d);
void reset_peak_memory(Device d);

}  // namespace tl
