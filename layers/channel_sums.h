// Blocked, deterministic per-channel sums over a 4-D float tensor's (N, H, W) values, on the thread pool
// (core/parallel.h): the CPU float32 batch-norm passes (layers/batchnorm.cpp) and the fused concat + batch norm +
// ReLU (layers/concat_bn_relu.cpp) share them, so both add every channel's terms in the same order. A channel's
// sums depend only on its own values and on N, H, W (never on the other channels, nor the thread count): NHWC
// sums fixed blocks of kRowBlock rows, then the blocks in block order, in double; NCHW sums each (n, c) plane,
// then the planes in n order, in double.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/parallel.h"

namespace tl::channel_sums {

constexpr int64_t kRowBlock = 128;

// Two per-channel sums (e.g. sum x and sum (x - mu)^2, or sum dy and sum dy (x - mu)).
struct ChannelSums {
  std::vector<double> a, b;  // the two sums per channel
};

// NHWC: `rows` rows of C values. fn(row * C, acc_a, acc_b) adds one row's terms into double accumulators (double,
// as the NCHW planes: a channel whose mean is large against its spread needs it for the mean).
template <typename RowFn>
ChannelSums nhwc_sums(int64_t rows, int64_t C, RowFn&& fn) {
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<double> pa(static_cast<size_t>(blocks * C)), pb(static_cast<size_t>(blocks * C));
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> fa(static_cast<size_t>(C)), fb(static_cast<size_t>(C));
    for (int64_t blk = b0; blk < b1; ++blk) {
      std::fill(fa.begin(), fa.end(), 0.0);
      std::fill(fb.begin(), fb.end(), 0.0);
      const int64_t r1 = std::min(rows, (blk + 1) * kRowBlock);
      for (int64_t r = blk * kRowBlock; r < r1; ++r) fn(r * C, fa.data(), fb.data());
      for (int64_t c = 0; c < C; ++c) pa[blk * C + c] = fa[c], pb[blk * C + c] = fb[c];
    }
  });
  ChannelSums s{std::vector<double>(static_cast<size_t>(C)), std::vector<double>(static_cast<size_t>(C))};
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t c = 0; c < C; ++c) s.a[c] += pa[blk * C + c], s.b[c] += pb[blk * C + c];
  return s;
}

// NCHW: planes (n, c) of HW values. fn(plane = n * C + c, c, &a, &b) returns one plane's sums in double.
template <typename PlaneFn>
ChannelSums nchw_sums(int64_t N, int64_t C, PlaneFn&& fn) {
  std::vector<double> pa(static_cast<size_t>(N * C)), pb(static_cast<size_t>(N * C));
  parallel_for(N * C, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(p, p % C, &pa[p], &pb[p]);
  });
  ChannelSums s{std::vector<double>(static_cast<size_t>(C)), std::vector<double>(static_cast<size_t>(C))};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) s.a[c] += pa[n * C + c], s.b[c] += pb[n * C + c];
  return s;
}

}  // namespace tl::channel_sums
