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

template <typename T>
void relu_forward_cpu(const T* x, T* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
  });
}
template <typename T>
void relu_backward_cpu(const T* y, const T* dy, T* dx, int64_t n, bool accumulate) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T g = y[i] > T(0) ? dy[i] : T(0);
      dx[i] = accumulate ? dx[i] + g : g;
    }
  });
}
template <typename T>
void relu6_forward_cpu(const T* x, T* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > T(0) ? (x[i] < T(6) ? x[i] : T(6)) : T(0);
  });
}
template <typename T>
void relu6_backward_cpu(const T* y, const T* dy, T* dx, int64_t n, bool accumulate) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T g = y[i] > T(0) && y[i] < T(6) ? dy[i] : T(0);
      dx[i] = accumulate ? dx[i] + g : g;
    }
  });
}
}  // namespace

Tensor relu_forward(const Tensor& x) {
  check_defined(x, "relu");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    kernels::relu_forward(x.data(), y.data(), x.dtype(), x.numel(), cuda::stream());
#endif
  } else {
    check_cpu_float(x, "relu");
    if (x.dtype() == DType::F32) relu_forward_cpu(x.data_as<float>(), y.data_as<float>(), x.numel());
    else relu_forward_cpu(x.data_as<double>(), y.data_as<double>(), x.numel());
  }
  return y;
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate) {
  check_same_shape(y, dy, "relu_backward");
  check_same_dtype_device(y, dy, "relu_backward");
  TL_CHECK(y.layout() == dy.layout(), ShapeError, "relu_backward: layouts differ: ", y.str(), " vs ", dy.str());
  prepare_grad(dx, y, accumulate, "relu_backward");
  if (y.is_cuda()) {
#if TL_WITH_CUDA
    kernels::relu_backward(y.data(), dy.data(), dx.data(), y.dtype(), y.numel(), accumulate, cuda::stream());
#endif
  } else if (y.dtype() == DType::F32) {
    relu_backward_cpu(y.data_as<float>(), dy.data_as<float>(), dx.data_as<float>(), y.numel(), accumulate);
  } else {
    check_cpu_float(y, "relu_backward");
    relu_backward_cpu(y.data_as<double>(), dy.data_as<double>(), dx.data_as<double>(), y.numel(), accumulate);
  }
}

Variable relu(const Variable& x) {
  Tensor y = relu_forward(x.value());
  if (!should_record({&x})) return Variable(y);
  return record_op("relu", y, {&x}, bytes_of({y}), [y](const Tensor& dy, std::vector<GradSlot>& s) {
    relu_backward(y, dy, s[0].grad, s[0].accumulate);
  });
}

Tensor relu6_forward(const Tensor& x) {
  check_defined(x, "relu6");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    kernels::relu6_forward(x.data(), y.data(), x.dtype(), x.numel(), cuda::stream());
#endif
  } else {
    check_cpu_float(x, "relu6");
    if (x.dtype() == DType::F32) relu6_forward_cpu(x.data_as<float>(), y.data_as<float>(), x.numel());
    else relu6_forward_cpu(x.data_as<double>(), y.data_as<double>(), x.numel());
  }
  return y;
}

void relu6_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate) {
  check_same_shape(y, dy, "relu6_backward");
  check_same_dtype_device(y, dy, "relu6_backward");
  TL_CHECK(y.layout() == dy.layout(), ShapeError, "relu6_backward: layouts differ: ", y.str(), " vs ", dy.str());
  prepare_grad(dx, y, accumulate, "relu6_backward");
  if (y.is_cuda()) {
#if TL_WITH_CUDA
    kernels::relu6_backward(y.data(), dy.data(), dx.data(), y.dtype(), y.numel(), accumulate, cuda::stream());
#endif
  } else if (y.dtype() == DType::F32) {
    relu6_backward_cpu(y.data_as<float>(), dy.data_as<float>(), dx.data_as<float>(), y.numel(), accumulate);
  } else {
    check_cpu_float(y, "relu6_backward");
    relu6_backward_cpu(y.data_as<double>(), dy.data_as<double>(), dx.data_as<double>(), y.numel(), accumulate);
  }
}

Variable relu6(const Variable& x) {
  Tensor y = relu6_forward(x.value());
  if (!should_record({&x})) return Variable(y);
  return record_op("relu6", y, {&x}, bytes_of({y}), [y](const Tensor& dy, std::vector<GradSlot>& s) {
    relu6_backward(y, dy, s[0].grad, s[0].accumulate);
  });
}
}  // namespace tl
