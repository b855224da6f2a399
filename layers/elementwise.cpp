// Element-wise add and flatten: CPU reference, CUDA dispatch and autograd (see elementwise.h).
#include "layers/elementwise.h"

#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/tensor_kernels.h"
#endif
#include "layers/layer_util.h"

namespace tl {
namespace {
template <typename T>
void add_cpu(const T* a, const T* b, T* y, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
  });
}
}  // namespace

Tensor add_forward(const Tensor& a, const Tensor& b) {
  check_same_shape(a, b, "add");
  check_same_dtype_device(a, b, "add");
  TL_CHECK(a.ndim() != 4 || a.layout() == b.layout(), ShapeError, "add: layouts differ: ", a.str(), " vs ", b.str());
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device(), a.layout());
  if (a.is_cuda()) {
#if TL_WITH_CUDA
    kernels::add(a.data(), b.data(), y.data(), a.dtype(), a.numel(), 1.0, cuda::stream());
#endif
  } else {
    check_cpu_float(a, "add");
    if (a.dtype() == DType::F32) add_cpu(a.data_as<float>(), b.data_as<float>(), y.data_as<float>(), a.numel());
    else add_cpu(a.data_as<double>(), b.data_as<double>(), y.data_as<double>(), a.numel());
  }
  return y;
}

Variable add(const Variable& a, const Variable& b) {
  Tensor y = add_forward(a.value(), b.value());
  if (!should_record({&a, &b})) return Variable(y);
  return record_op("add", y, {&a, &b}, 0, [](const Tensor& dy, std::vector<GradSlot>& s) {
    give_grad(s[0], dy);
    give_grad(s[1], dy);
  });
}

Variable add(const Variable& a, const Variable& b, double alpha) {
  if (alpha == 1.0) return add(a, b);
  TL_CHECK(a.shape() == b.shape(), ShapeError, "add: shapes ", a.value().str(), " and ", b.value().str(), " differ");
  Tensor y = a.value().clone();
  y.add_(b.value(), alpha);
  if (!should_record({&a, &b})) return Variable(y);
  return record_op("add", y, {&a, &b}, 0, [alpha](const Tensor& dy, std::vector<GradSlot>& s) {
    give_grad(s[0], dy);
    if (!s[1].needed) return;
    Tensor g = dy.clone();  // dy's shape, dtype, device and layout
    g.zero_();
    g.add_(dy, alpha);
    give_grad(s[1], g);
  });
}

Variable flatten(const Variable& x, int start_dim) {
  const Tensor& v = x.value();
  TL_CHECK(start_dim >= 0 && start_dim < v.ndim(), ShapeError, "flatten: start_dim ", start_dim, " for ", v.str());
  Tensor src = v.layout() == Layout::NHWC ? v.to_layout(Layout::NCHW) : v;
  Tensor y = src.flatten_from(start_dim);
  if (!should_record({&x})) return Variable(y);
  Shape in_shape = v.shape();
  Layout in_layout = v.layout();
  return record_op("flatten", y, {&x}, 0, [in_shape, in_layout](const Tensor& dy, std::vector<GradSlot>& s) {
    Tensor g = dy.reshape(in_shape);
    if (in_layout == Layout::NHWC) g = g.to_layout(Layout::NHWC);
    give_grad(s[0], g);
  });
}

Variable cast(const Variable& x, DType dtype) {
  if (x.value().dtype() == dtype) return x;
  Tensor y = x.value().to(dtype);
  if (!should_record({&x})) return Variable(y);
  const DType in_dtype = x.value().dtype();
  return record_op("cast", y, {&x}, 0, [in_dtype](const Tensor& dy, std::vector<GradSlot>& s) {
    give_grad(s[0], dy.to(in_dtype));
  });
}
}  // namespace tl
