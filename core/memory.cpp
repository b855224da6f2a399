// Host and stream-ordered device allocation for Storage, with per-device usage counters.
#include "core/memory.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "core/device.h"
#include "core/error.h"

namespace tl {
namespace {
struct Counters {
  std::atomic<size_t> current{0}, peak{0}, count{0};
};
Counters& counters(Device d) {
  static Counters cpu, gpu;
  return d == Device::CPU ? cpu : gpu;
}
void count_alloc(Device d, size_t bytes) {
  Counters& c = counters(d);
  size_t now = c.current.fetch_add(bytes) + bytes;
  size_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {}
  c.count.fetch_add(1);
}

#if TL_WITH_CUDA
void configure_pool_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t threshold = UINT64_MAX;  // keep freed memory cached in the pool
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
}

void* cuda_alloc(size_t bytes, size_t request) {
  configure_pool_once();
  void* ptr = nullptr;
  cudaError_t st = cudaMallocAsync(&ptr, request, cuda::stream());
  if (st == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cuda::memory_info(&free_b, &total_b);
    throw OutOfMemoryError(detail::concat("CUDA out of memory: tried to allocate ", bytes / (1 << 20), " MiB with ",
                                          free_b / (1 << 20), " MiB free of ", total_b / (1 << 20),
                                          " MiB; use a smaller batch size"),
                           bytes);
  }
  CUDA_CHECK(st);
  return ptr;
}
#endif
}  // namespace

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  size_t request = bytes == 0 ? 1 : bytes;
  if (device == Device::CPU) {
    size_t rounded = (request + 63) / 64 * 64;
    ptr_ = std::aligned_alloc(64, rounded);
    if (!ptr_) throw OutOfMemoryError(detail::concat("host allocation of ", bytes, " bytes failed"), bytes);
  } else {
    TL_CHECK(cuda::available(), Error, "a CUDA tensor was requested but ", cuda::unavailable_reason());
#if TL_WITH_CUDA
    ptr_ = cuda_alloc(bytes, request);
#endif
  }
  count_alloc(device, bytes);
}

Storage::~Storage() {
  if (!ptr_) return;
  if (device_ == Device::CPU) {
    std::free(ptr_);
  } else {
#if TL_WITH_CUDA
    cudaFreeAsync(ptr_, cuda::stream());  // no throw from a destructor
#endif
  }
  counters(device_).current.fetch_sub(bytes_);
}

MemoryStats memory_stats(Device d) {
  Counters& c = counters(d);
  return MemoryStats{c.current.load(), c.peak.load(), c.count.load()};
}
void reset_peak_memory(Device d) { counters(d).peak.store(counters(d).current.load()); }

}  // namespace tl
