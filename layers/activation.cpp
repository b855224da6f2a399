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
// The loops carry no branch but selects (the bound and accumulate choices are made outside them, both operands are
// loaded unconditionally, & instead of &&), so that the compiler vectorizes them: with short-circuit conditions in
// the loop GCC reported "control flow in loop" and ran them one element at a time, a data-dependent branch per
// element (about 12% of a densenet121 CPU step; bench/NOTES.md). The values are the definition's, bit for bit
// (NaN in gives 0, -0 gives +0, +inf passes the ReLU gradient): Relu.SpecialValuesFollowTheDefinitionInEveryLoop.
template <typename T>
void forward_cpu(const T* x, T* y, int64_t n, T hi) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    if (hi > T(0)) {
      const T h = hi;  // a local copy: the captured reference could alias y for the compiler
      for (int64_t i = i0; i < i1; ++i) {
        const T c = x[i] > h ? h : x[i];  // NaN stays NaN here and becomes 0 below, as in the definition
        y[i] = c > T(0) ? c : T(0);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
    }
  });
}
// One loop per (bounded, accumulate) case, so that none carries a branch.
template <bool kBounded, bool kAccumulate, typename T>
void backward_loop(const T* y, const T* dy, T* dx, int64_t i0, int64_t i1, T hi) {
  for (int64_t i = i0; i < i1; ++i) {
    const T v = y[i], d = dy[i];  // both loaded unconditionally: a select, not a branch
    const bool pass = kBounded ? (v > T(0)) & (v < hi) : v > T(0);
    const T g = pass ? d : T(0);
    if constexpr (kAccumulate) {
      dx[i] += g;
    } else {
      dx[i] = g;
    }
  }
}
template <typename T>
void backward_cpu(const T* y, const T* dy, T* dx, int64_t n, T hi, bool accumulate) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    if (hi > T(0)) {
      accumulate ? backward_loop<true, true>(y, dy, dx, i0, i1, hi) : backward_loop<true, false>(y, dy, dx, i0, i1, hi);
    } else {
      accumulate ? backward_loop<false, true>(y, dy, dx, i0, i1, hi)
                 : backward_loop<false, false>(y, dy, dx, i0, i1, hi);
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
