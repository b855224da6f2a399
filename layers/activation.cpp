// ReLU and ReLU6: CPU reference, CUDA dispatch and autograd (see activation.h).
#include "layers/activation.h"

#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/activation.h"
#endif
#include "layers/layer_util.h"

namespace tl {
namespace {
constexpr int64_t kGrain = 1 << 14;  // elements per thread at least

// ReLU and ReLU6 are one clamped ReLU: y = x > 0 ? (hi > 0 ? min(x, hi) : x) : 0, and the gradient passes where
// 0 < y (< hi); hi = 0 means no upper bound (ReLU).
template <typename T>
void forward_cpu(const T* x, T* y, int64_t n, T hi) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > T(0) ? (hi > T(0) && x[i] > hi ? hi : x[i]) : T(0);
  });
}
template <typename T>
void backward_cpu(const T* y, const T* dy, T* dx, int64_t n, T hi, bool accumulate) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T g = y[i] > T(0) && (hi == T(0) || y[i] < hi) ? dy[i] : T(0);
      dx[i] = accumulate ? dx[i] + g : g;
    }
  });
}

Tensor clamped_forward(const Tensor& x, double hi, const char* what) {
  check_defined(x, what);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    kernels::clamped_relu_forward(x.data(), y.data(), x.dtype(), x.numel(), static_cast<float>(hi), cuda::stream());
#endif
  } else {
    check_cpu_float(x, what);
    with_cpu_float(x.dtype(), [&](auto t) {
      using T = decltype(t);
      forward_cpu(x.data_as<T>(), y.data_as<T>(), x.numel(), static_cast<T>(hi));
    });
  }
  return y;
}

void clamped_backward(const Tensor& y, const Tensor& dy, Tensor& dx, double hi, bool accumulate, const char* what) {
  check_same_shape(y, dy, what);
  check_same_dtype_device(y, dy, what);
  TL_CHECK(y.layout() == dy.layout(), ShapeError, what, ": layouts differ: ", y.str(), " vs ", dy.str());
  prepare_grad(dx, y, accumulate, what);
  if (y.is_cuda()) {
#if TL_WITH_CUDA
    kernels::clamped_relu_backward(y.data(), dy.data(), dx.data(), y.dtype(), y.numel(), static_cast<float>(hi),
                                   accumulate, cuda::stream());
#endif
  } else {
    check_cpu_float(y, what);
    with_cpu_float(y.dtype(), [&](auto t) {
      using T = decltype(t);
      backward_cpu(y.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), y.numel(), static_cast<T>(hi), accumulate);
    });
  }
}

Variable clamped(const Variable& x, double hi, const char* what) {
  Tensor y = clamped_forward(x.value(), hi, what);
  if (!should_record({&x})) return Variable(y);
  return record_op(what, y, {&x}, bytes_of({y}), [y, hi, what](const Tensor& dy, std::vector<GradSlot>& s) {
    clamped_backward(y, dy, s[0].grad, hi, s[0].accumulate, what);
  });
}
}  // namespace

Tensor relu_forward(const Tensor& x) { return clamped_forward(x, 0, "relu"); }
void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate) {
  clamped_backward(y, dy, dx, 0, accumulate, "relu_backward");
}
Variable relu(const Variable& x) { return clamped(x, 0, "relu"); }

Tensor relu6_forward(const Tensor& x) { return clamped_forward(x, 6, "relu6"); }
void relu6_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate) {
  clamped_backward(y, dy, dx, 6, accumulate, "relu6_backward");
}
Variable relu6(const Variable& x) { return clamped(x, 6, "relu6"); }
}  // namespace tl
