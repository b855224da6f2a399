// The ranking rules of the classification metrics (train/metrics.h), shared by the CPU code and the CUDA kernel
// (kernels/metrics.cu) so that both count exactly the same samples as correct:
//  - a ranks above b when it is larger, NaN above every number (as torch.argmax / torch.topk);
//  - the predicted class is the first index of the largest value;
//  - the true class y is in the top k when fewer than k classes rank above it, where j ranks above y when
//    logit[j] > logit[y], or when they are equal and j < y.
// Values are compared as double (float32, bfloat16 and float16 convert to it exactly).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TL_RANK_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define TL_RANK_HD inline
#endif

namespace tl::rank {

TL_RANK_HD bool is_nan(double v) { return v != v; }
TL_RANK_HD bool ranks_above(double a, double b) {
  if (is_nan(a)) return !is_nan(b);
  if (is_nan(b)) return false;
  return a > b;
}
TL_RANK_HD bool same_rank(double a, double b) { return (is_nan(a) && is_nan(b)) || a == b; }

struct RowRank {
  int predicted;  // first index of the largest value
  bool in_top_k;  // the true class is among the k best
};

// `value(j)` returns the row's j-th value as double; `y` is the true class in [0, c).
template <typename Value>
TL_RANK_HD RowRank rank_row(Value value, int64_t c, int64_t y, int k) {
  int predicted = 0;
  double best = value(0);
  for (int64_t j = 1; j < c; ++j) {
    const double v = value(j);
    if (ranks_above(v, best)) {
      best = v;
      predicted = static_cast<int>(j);
    }
  }
  const double vy = value(y);
  int above = 0;  // classes ranked above the true class
  for (int64_t j = 0; j < c && above < k; ++j) {
    const double v = value(j);
    if (ranks_above(v, vy) || (j < y && same_rank(v, vy))) ++above;
  }
  return {predicted, above < k};
}

}  // namespace tl::rank
