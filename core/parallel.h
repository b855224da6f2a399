// The CPU thread pool: one for the whole process. tlengine's own CPU loops (parallel_for), oneDNN's
// convolutions and its float32 GEMM all run on OpenMP's pool; OpenBLAS (float64 GEMM only) is given the same
// thread count. Default: OMP_NUM_THREADS when set, else the cores this process may run on (its CPU affinity),
// as PyTorch does with torch.set_num_threads. The data loader's decoding workers are separate threads
// (--workers): they run between steps, or overlap a step when prefetching, so keep workers + threads near the
// core count on small machines (README, "Threads").
//
// Builds without OpenMP (a compiler without it) run parallel_for serially. tlengine's own loops give the same
// results for any thread count: parallel_for hands out disjoint index ranges, and their reductions combine
// fixed-size blocks in a fixed order (never one partial per thread). oneDNN's kernels may split reductions by
// thread count.
#pragma once
#include <cstdint>

namespace tl {

int num_threads();             // the threads parallel_for, oneDNN and OpenBLAS use now
void set_num_threads(int n);   // n >= 1 (ValueError otherwise); applies to OpenMP, oneDNN and OpenBLAS
bool openmp_enabled();         // whether this build runs parallel_for on more than one thread

// Calls body(begin, end) on disjoint sub-ranges covering [0, n), in parallel when n >= 2 * grain (so that each
// range has at least `grain` indices); grain >= 1. Exceptions thrown by body are rethrown (the first one) on
// the calling thread after all ranges finish. Nested calls run serially.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& body);

namespace detail {
int chunks_for(int64_t n, int64_t grain);                        // 1 when serial
void run_chunks(int chunks, void (*fn)(void*, int), void* ctx);  // fn(ctx, chunk) for chunk in [0, chunks)
}  // namespace detail

template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& body) {
  if (n <= 0) return;
  const int chunks = detail::chunks_for(n, grain);
  if (chunks <= 1) {
    body(int64_t{0}, n);
    return;
  }
  struct Ctx {
    F* body;
    int64_t n;
    int chunks;
  } ctx{&body, n, chunks};
  detail::run_chunks(chunks, [](void* p, int i) {
    auto* c = static_cast<Ctx*>(p);
    const int64_t begin = c->n * i / c->chunks, end = c->n * (i + 1) / c->chunks;
    if (begin < end) (*c->body)(begin, end);
  }, &ctx);
}

}  // namespace tl
