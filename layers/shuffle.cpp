// Channel shuffle: CPU loops, CUDA dispatch and autograd (see shuffle.h).
#include "layers/shuffle.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/shuffle.h"
#endif
#include "layers/layer_util.h"

namespace tl {
namespace {

constexpr int64_t kGrain = int64_t{1} << 14;  // elements per thread at least

void check_groups(const Tensor& t, int64_t groups, const char* op) {
  check_rank(t, 4, op, "x");
  TL_CHECK(groups >= 1 && t.size(1) % groups == 0, ShapeError, op, ": groups=", groups,
           " must be >= 1 and divide the channels of ", t.str());
}

// dst[:, o] (+)= src[:, (o % groups) * (C / groups) + o / groups]; src and dst share shape and layout.
void shuffle(const Tensor& src, const Tensor& dst, int64_t groups, bool accumulate) {
  const int64_t n = src.size(0), c = src.size(1), plane = src.size(2) * src.size(3), per_group = c / groups;
  const bool nhwc = src.layout() == Layout::NHWC;
  if (src.is_cuda()) {
#if TL_WITH_CUDA
    kernels::channel_shuffle(src.data(), dst.data(), src.dtype(), n, c, plane, groups, nhwc, accumulate,
                             cuda::stream());
    return;
#endif
  }
  std::vector<int64_t> from(static_cast<size_t>(c));
  for (int64_t o = 0; o < c; ++o) from[static_cast<size_t>(o)] = (o % groups) * per_group + o / groups;
  if (!accumulate) {
    const size_t es = dtype_size(src.dtype());
    const char* s = static_cast<const char*>(src.data());
    char* d = static_cast<char*>(dst.data());
    if (!nhwc) {
      parallel_for(n * c, std::max<int64_t>(1, kGrain / std::max<int64_t>(plane, 1)), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t src_plane = p / c * c + from[static_cast<size_t>(p % c)];
          std::memcpy(d + p * plane * es, s + src_plane * plane * es, static_cast<size_t>(plane) * es);
        }
      });
    } else {
      parallel_for(n * plane, std::max<int64_t>(1, kGrain / std::max<int64_t>(c, 1)), [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t o = 0; o < c; ++o)
            std::memcpy(d + (q * c + o) * es, s + (q * c + from[static_cast<size_t>(o)]) * es, es);
      });
    }
    return;
  }
  check_cpu_float(src, "channel_shuffle_backward");
  auto add = [&](auto* s, auto* d) {
    if (!nhwc) {
      parallel_for(n * c, std::max<int64_t>(1, kGrain / std::max<int64_t>(plane, 1)), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const auto* sp = s + (p / c * c + from[static_cast<size_t>(p % c)]) * plane;
          auto* dp = d + p * plane;
          for (int64_t i = 0; i < plane; ++i) dp[i] += sp[i];
        }
      });
    } else {
      parallel_for(n * plane, std::max<int64_t>(1, kGrain / std::max<int64_t>(c, 1)), [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t o = 0; o < c; ++o) d[q * c + o] += s[q * c + from[static_cast<size_t>(o)]];
      });
    }
  };
  with_cpu_float(src.dtype(), [&](auto t) { add(src.data_as<decltype(t)>(), dst.data_as<decltype(t)>()); });
}

}  // namespace

Tensor channel_shuffle_forward(const Tensor& x, int64_t groups) {
  check_defined(x, "channel_shuffle");
  check_groups(x, groups, "channel_shuffle");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  shuffle(x, y, groups, false);
  return y;
}

void channel_shuffle_backward(const Tensor& dy, int64_t groups, Tensor& dx, bool accumulate) {
  check_defined(dy, "channel_shuffle_backward");
  check_groups(dy, groups, "channel_shuffle_backward");
  if (!dy.is_cuda() && accumulate) check_cpu_float(dy, "channel_shuffle_backward");
  prepare_grad(dx, dy, accumulate, "channel_shuffle_backward");
  const Tensor src = dx.layout() == dy.layout() ? dy : dy.to_layout(dx.layout());
  shuffle(src, dx, dy.size(1) / groups, accumulate);  // the inverse: the shuffle with C / g groups
}

Variable channel_shuffle(const Variable& x, int64_t groups) {
  TL_CHECK(x.defined(), ValueError, "channel_shuffle: undefined input Variable");
  Tensor y = channel_shuffle_forward(x.value(), groups);
  if (!should_record({&x})) return Variable(y);
  return record_op("channel_shuffle", y, {&x}, 0, [groups](const Tensor& dy, std::vector<GradSlot>& s) {
    channel_shuffle_backward(dy, groups, s[0].grad, s[0].accumulate);
  });
}
}  // namespace tl
