// The process-wide CPU thread pool (see parallel.h): OpenMP, with oneDNN and OpenBLAS kept at the same count.
#include "core/parallel.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>

#include "core/error.h"
#if TL_OPENMP
#include <omp.h>
#endif

extern "C" void openblas_set_num_threads(int);  // OpenBLAS's own API (cblas.h of some builds lacks it)

namespace tl {
namespace {

int affinity_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

// The default: OMP_NUM_THREADS when set (OpenMP reads it itself), else the cores of this process's affinity
// mask (OpenMP's own default is every online core, which over-subscribes a CPU-limited container).
int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return affinity_cores();
}

struct Pool {
  int threads;
  Pool() : threads(default_threads()) { apply(threads); }
  static void apply(int n) {
#if TL_OPENMP
    omp_set_num_threads(n);
#endif
    openblas_set_num_threads(n);
  }
};

Pool& pool() {
  static Pool p;  // configured once, before the first parallel region; set_num_threads changes it
  return p;
}

}  // namespace

int num_threads() { return pool().threads; }

void set_num_threads(int n) {
  TL_CHECK(n >= 1, ValueError, "set_num_threads: the thread count must be >= 1, got ", n);
  pool().threads = n;
  Pool::apply(n);
}

bool openmp_enabled() { return TL_OPENMP != 0; }

namespace detail {

int chunks_for(int64_t n, int64_t grain) {
  const int t = num_threads();
#if TL_OPENMP
  if (t <= 1 || omp_in_parallel()) return 1;
#else
  return 1;
#endif
  const int64_t by_grain = n / std::max<int64_t>(grain, 1);
  return static_cast<int>(std::min<int64_t>(t, by_grain));
}

void run_chunks(int chunks, void (*fn)(void*, int), void* ctx) {
  std::exception_ptr first;
  std::mutex m;
#if TL_OPENMP
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
#endif
  for (int i = 0; i < chunks; ++i) {
    try {
      fn(ctx, i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace detail
}  // namespace tl
