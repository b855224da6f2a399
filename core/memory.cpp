// Host and stream-ordered device allocation for Storage, with per-device usage counters.
#include "core/memory.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
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

// Host blocks of 1 MiB and more are kept for reuse when freed (keyed by their rounded size): a training step
// allocates the same activation sizes every step, and a fresh large malloc is an mmap whose pages the kernel
// must fault in and zero again each time. At most kHostCacheBytes stay cached; what does not fit is freed.
// Not under AddressSanitizer (reuse would hide use-after-free).
#if defined(__SANITIZE_ADDRESS__)
#define TL_HOST_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_HOST_CACHE 0
#endif
#endif
#ifndef TL_HOST_CACHE
#define TL_HOST_CACHE 1
#endif
constexpr size_t kHostCacheMin = size_t(1) << 20;
constexpr size_t kHostCacheBytes = size_t(4) << 30;

class HostCache {
 public:
  void* take(size_t rounded) {
    if (!TL_HOST_CACHE || rounded < kHostCacheMin) return nullptr;
    std::lock_guard<std::mutex> lock(m_);
    auto it = free_.find(rounded);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= rounded;
    return p;
  }
  // Frees every cached block (before reporting that the host is out of memory); returns the bytes freed.
  size_t release_all() {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& [bytes, p] : free_) std::free(p);
    free_.clear();
    const size_t freed = cached_;
    cached_ = 0;
    return freed;
  }
  bool give(void* p, size_t rounded) {
    if (!TL_HOST_CACHE || rounded < kHostCacheMin) return false;
    std::lock_guard<std::mutex> lock(m_);
    if (cached_ + rounded > kHostCacheBytes) return false;
    free_.emplace(rounded, p);
    cached_ += rounded;
    return true;
  }

 private:
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};
HostCache& host_cache() {
  static HostCache* c = new HostCache();  // never destroyed: storages may be freed during static destruction
  return *c;
}
size_t host_rounded(size_t request) { return (request + 63) / 64 * 64; }

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

// Makes `later` wait for the work queued on `earlier` so far (an event recorded on `earlier`; destroying it
// right after the wait is allowed, the wait keeps what it captured). Called from a destructor: no throw; when the
// event cannot be made, the whole device is synchronised instead, so the memory is never released early.
void order_after(cudaStream_t earlier, cudaStream_t later) noexcept {
  cudaEvent_t e = nullptr;
  if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess &&
      cudaEventRecord(e, earlier) == cudaSuccess && cudaStreamWaitEvent(later, e, 0) == cudaSuccess) {
    cudaEventDestroy(e);
    return;
  }
  (void)cudaGetLastError();
  if (e) cudaEventDestroy(e);
  (void)cudaDeviceSynchronize();
}

void* cuda_alloc(size_t bytes, size_t request, cudaStream_t stream) {
  configure_pool_once();
  void* ptr = nullptr;
  cudaError_t st = cudaMallocAsync(&ptr, request, stream);
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
    const size_t rounded = host_rounded(request);
    ptr_ = host_cache().take(rounded);
    if (!ptr_) ptr_ = std::aligned_alloc(64, rounded);
    if (!ptr_ && host_cache().release_all() > 0) ptr_ = std::aligned_alloc(64, rounded);  // cached blocks first
    if (!ptr_)
      throw OutOfMemoryError(detail::concat("host out of memory: an allocation of ", bytes, " bytes (",
                                            bytes >> 20, " MiB) failed; use a smaller --batch-size, or lower "
                                            "--cache-images / --cache-budget"),
                             bytes);
  } else {
    TL_CHECK(cuda::available(), Error, "a CUDA tensor was requested but ", cuda::unavailable_reason());
#if TL_WITH_CUDA
    stream_ = cuda::stream();
    ptr_ = cuda_alloc(bytes, request, stream_);
#endif
  }
  count_alloc(device, bytes);
}

void Storage::record_stream(CUstream_st* s) {
  if (device_ == Device::CPU || s == stream_) return;
  if (std::find(used_on_.begin(), used_on_.end(), s) == used_on_.end()) used_on_.push_back(s);
}

Storage::~Storage() {
  if (!ptr_) return;
  if (device_ == Device::CPU) {
    if (!host_cache().give(ptr_, host_rounded(bytes_ == 0 ? 1 : bytes_))) std::free(ptr_);
  } else {
#if TL_WITH_CUDA
    for (CUstream_st* s : used_on_) order_after(s, stream_);
    cudaFreeAsync(ptr_, stream_);  // on the allocating stream, not this thread's; no throw from a destructor
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
