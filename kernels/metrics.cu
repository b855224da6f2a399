// The metrics kernel (see metrics.h): one thread per sample ranks its row with the shared rules of
// kernels/metrics_rank.h and adds to the counts with atomics (integer adds: the result does not depend on order;
// the loss sum is one add per batch).
#include "kernels/common.cuh"
#include "kernels/metrics.h"
#include "kernels/metrics_rank.h"

namespace tl::kernels {
namespace {

template <typename T>
struct RowValues {
  const T* row;
  __device__ double operator()(int64_t j) const { return static_cast<double>(load(row, j)); }
};

template <typename T, typename L>
__global__ void accumulate_metrics_kernel(const T* logits, const int32_t* labels, const L* loss, int64_t n, int64_t c,
                                          int k, unsigned long long* counts, double* sums) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (first == 0) {
    const double l = static_cast<double>(loss[0]);
    sums[0] += l * static_cast<double>(n);
    if (!isfinite(l)) sums[1] += 1.0;
    sums[2] += static_cast<double>(n);
  }
  TL_KERNEL_LOOP(i, n) {
    const int64_t y = labels[i];
    if (y < 0 || y >= c) {
      atomicAdd(&counts[c * c + 1], 1ULL);
      continue;
    }
    const rank::RowRank r = rank::rank_row(RowValues<T>{logits + i * c}, c, y, k);
    atomicAdd(&counts[y * c + r.predicted], 1ULL);
    if (r.in_top_k) atomicAdd(&counts[c * c], 1ULL);
    if (r.predicted == y) atomicAdd(&sums[3], 1.0);
  }
}

template <typename T>
void launch(const T* logits, const int32_t* labels, const void* loss, DType loss_dtype, int64_t n, int64_t c, int k,
            uint64_t* counts, double* sums, cudaStream_t stream) {
  auto* cnt = reinterpret_cast<unsigned long long*>(counts);
  const unsigned grid = grid_for(n);
  if (loss_dtype == DType::F64)
    accumulate_metrics_kernel<<<grid, 256, 0, stream>>>(logits, labels, static_cast<const double*>(loss), n, c, k, cnt,
                                                        sums);
  else
    accumulate_metrics_kernel<<<grid, 256, 0, stream>>>(logits, labels, static_cast<const float*>(loss), n, c, k, cnt,
                                                        sums);
  TL_LAUNCH_CHECK();
}
}  // namespace

void accumulate_metrics(const void* logits, DType dtype, const int32_t* labels, const void* loss, DType loss_dtype,
                        int64_t n, int64_t c, int k, uint64_t* counts, double* sums, cudaStream_t stream) {
  TL_CHECK(loss_dtype == DType::F32 || loss_dtype == DType::F64, DTypeError,
           "accumulate_metrics: the loss must be float32 or float64");
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "accumulate_metrics",
                  launch(static_cast<const scalar_t*>(logits), labels, loss, loss_dtype, n, c, k, counts, sums, stream));
}
}  // namespace tl::kernels
