// Dropout: CPU reference, CUDA dispatch and autograd (see dropout.h). The mask comes from kernels/random_hash.h.
#include "layers/dropout.h"

#include "core/device.h"
#if TL_WITH_CUDA
#include "kernels/dropout.h"
#endif
#include "kernels/random_hash.h"
#include "layers/layer_util.h"

namespace tl {
namespace {
void check_p(double p) {
  TL_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout: probability p = ", p, " must be in [0, 1]");
}
// 1 / (1 - p), or 0 when everything is dropped.
double keep_scale(double p) { return p >= 1.0 ? 0.0 : 1.0 / (1.0 - p); }

// dst (+)= src * mask * scale on the host. Memory index i is mapped to the logical index for NHWC tensors.
template <typename T>
void dropout_cpu(const T* src, T* dst, const Tensor& like, uint64_t seed, uint64_t offset, uint64_t threshold,
                 T scale, bool accumulate) {
  const int64_t n = like.numel();
  const bool nhwc = like.ndim() == 4 && like.layout() == Layout::NHWC;
  const int64_t C = nhwc ? like.size(1) : 1, H = nhwc ? like.size(2) : 1, W = nhwc ? like.size(3) : 1;
  for (int64_t i = 0; i < n; ++i) {
    int64_t logical = i;
    if (nhwc) {
      const int64_t c = i % C, w = (i / C) % W, h = (i / (C * W)) % H, b = i / (C * W * H);
      logical = ((b * C + c) * H + h) * W + w;
    }
    const T v = rng::keep_element(seed, offset, static_cast<uint64_t>(logical), threshold) ? src[i] * scale : T(0);
    dst[i] = accumulate ? dst[i] + v : v;
  }
}

void apply(const Tensor& src, Tensor& dst, double p, uint64_t seed, uint64_t offset, bool accumulate) {
  const uint64_t threshold = rng::drop_threshold(p);
  const double scale = keep_scale(p);
  if (src.is_cuda()) {
#if TL_WITH_CUDA
    const bool nhwc = src.ndim() == 4 && src.layout() == Layout::NHWC;
    kernels::dropout_apply(src.data(), dst.data(), src.dtype(), src.numel(), nhwc, nhwc ? src.size(1) : 1,
                           nhwc ? src.size(2) : 1, nhwc ? src.size(3) : 1, seed, offset, threshold, scale, accumulate,
                           cuda::stream());
#endif
  } else if (src.dtype() == DType::F32) {
    dropout_cpu(src.data_as<float>(), dst.data_as<float>(), src, seed, offset, threshold, static_cast<float>(scale),
                accumulate);
  } else {
    dropout_cpu(src.data_as<double>(), dst.data_as<double>(), src, seed, offset, threshold, scale, accumulate);
  }
}
}  // namespace

Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  check_defined(x, "dropout");
  check_p(p);
  if (!x.is_cuda()) check_cpu_float(x, "dropout");
#if TL_WITH_CUDA
  // The seed and offset are kernel arguments: every replay of a captured CUDA graph would drop the same elements.
  TL_CHECK(!x.is_cuda() || p == 0.0 || !cuda::stream_is_capturing(), ValueError,
           "dropout (p = ", p, ") cannot run in a captured CUDA graph: every replay would drop the same elements; "
           "train with --dropout 0 or without --cuda-graphs");
#endif
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  apply(x, y, p, seed, offset, false);
  return y;
}

void dropout_backward(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx, bool accumulate) {
  check_defined(dy, "dropout_backward");
  check_p(p);
  if (!dy.is_cuda()) check_cpu_float(dy, "dropout_backward");
  prepare_grad(dx, dy, accumulate, "dropout_backward");
  TL_CHECK(dx.layout() == dy.layout(), ShapeError, "dropout_backward: layouts differ: ", dx.str(), " vs ", dy.str());
  apply(dy, dx, p, seed, offset, accumulate);
}

Variable dropout(const Variable& x, double p, bool training, uint64_t seed, uint64_t offset) {
  check_p(p);
  if (!training || p == 0.0) return x;
  Tensor y = dropout_forward(x.value(), p, seed, offset);
  if (!should_record({&x})) return Variable(y);
  return record_op("dropout", y, {&x}, 0, [p, seed, offset](const Tensor& dy, std::vector<GradSlot>& s) {
    if (s[0].needed) dropout_backward(dy, p, seed, offset, s[0].grad, s[0].accumulate);
  });
}
}  // namespace tl
