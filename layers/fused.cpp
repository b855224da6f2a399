// Conv + batch norm folding with a fused bias + residual + ReLU epilogue (see fused.h).
#include "layers/fused.h"

#include <algorithm>
#include <cmath>

#include "core/device.h"
#if TL_WITH_CUDA
#include "kernels/fused.h"
#endif
#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/layer_util.h"
#include "layers/mac_counter.h"

namespace tl {
namespace {
// Folding is on unless a ConvBnFoldingGuard on this thread turned it off (as autograd's NoGradGuard: scoped).
thread_local bool t_folding = true;
thread_local ConvBnCounts t_counts;

bool on_device(const Tensor& t, Device d, DType dt) { return t.defined() && t.device() == d && t.dtype() == dt; }

// Everything the folded path reads is consistent; otherwise the unfused ops run (and report any error).
bool tensors_fit(const nn::Conv2d& conv, const nn::BatchNorm2d& bn, const Variable& x, const Variable* residual) {
  if (!x.defined() || x.value().ndim() != 4) return false;
  const Tensor& xv = x.value();
  const Device d = xv.device();
  if (d == Device::CPU && xv.dtype() != DType::F32 && xv.dtype() != DType::F64) return false;
  const DType p = batchnorm_param_dtype(xv.dtype());
  if (!on_device(conv.weight.value(), d, p) || conv.weight.value().ndim() != 4) return false;
  const int64_t k = conv.weight.value().size(0);
  for (const Tensor* t : {&bn.weight.value(), &bn.bias.value(), &bn.buffers.running_mean, &bn.buffers.running_var})
    if (!on_device(*t, d, p) || t->ndim() != 1 || t->size(0) != k) return false;
  if (conv.bias.defined() && !on_device(conv.bias.value(), d, p)) return false;
  if (residual && (!residual->defined() || residual->value().device() != d || residual->value().dtype() != xv.dtype()))
    return false;
  return true;
}

template <typename T>
void fold_cpu(const T* w, const T* bias, const T* gamma, const T* beta, const T* mean, const T* var, double eps,
              T* w_out, T* b_out, int64_t k, int64_t inner) {
  for (int64_t c = 0; c < k; ++c) {
    const double s = static_cast<double>(gamma[c]) / std::sqrt(static_cast<double>(var[c]) + eps);
    for (int64_t j = 0; j < inner; ++j) w_out[c * inner + j] = static_cast<T>(static_cast<double>(w[c * inner + j]) * s);
    const double b = bias ? static_cast<double>(bias[c]) : 0.0;
    b_out[c] = static_cast<T>(static_cast<double>(beta[c]) + (b - static_cast<double>(mean[c])) * s);
  }
}

// y = act(y + residual), in place (y already holds conv + folded bias).
template <typename T>
void add_act_cpu(T* y, const T* residual, bool relu, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v = residual ? y[i] + residual[i] : y[i];
    y[i] = relu ? (v > T(0) ? v : T(0)) : v;
  }
}

std::vector<const void*> sources_of(const nn::Conv2d& conv, const nn::BatchNorm2d& bn) {
  return {&conv,
          conv.weight.value().data(),
          conv.bias.defined() ? conv.bias.value().data() : nullptr,
          bn.weight.value().data(),
          bn.bias.value().data(),
          bn.buffers.running_mean.data(),
          bn.buffers.running_var.data()};
}
}  // namespace

ConvBnFoldingGuard::ConvBnFoldingGuard(bool enabled) : previous_(t_folding) { t_folding = enabled; }
ConvBnFoldingGuard::~ConvBnFoldingGuard() { t_folding = previous_; }
bool conv_bn_folding() { return t_folding; }
ConvBnCounts conv_bn_counts() { return t_counts; }

namespace nn {
bool ConvBn::can_fold(const Variable& x, const Variable* residual) const {
  const Conv2d& conv = *conv_;
  const BatchNorm2d& bn = *bn_;
  if (!conv_bn_folding()) return false;
  if (conv.weight.trainable() || (conv.bias.defined() && conv.bias.trainable())) return false;
  if (bn.weight.trainable() || bn.bias.trainable() || !bn.uses_running_stats()) return false;
  const bool input_grad = needs_grad(x) || (residual && needs_grad(*residual));
  if (input_grad && grad_enabled()) return false;
  return tensors_fit(conv, bn, x, residual);
}

// Caching is safe because everything w' and b' are computed from is covered by the cache key: the parameter and
// statistics tensors can change only (a) by an optimizer step, which needs an unfolded forward with gradients
// first, and every unfolded ConvBn call drops the cache; (b) by training-mode batch norm, also unfolded;
// (c) through Module::state() (load_weights, checkpoint restore, to, to_dtype), train()/eval() or
// set_trainable, which bump nn::state_epoch(); (d) by direct writes, which must call
// nn::invalidate_derived_state() (module.h). Replaced tensors also change the storage pointers in `sources`.
const FoldedConvBn& ConvBn::folded(DType input_dtype, Layout input_layout) {
  const Conv2d& conv = *conv_;
  const BatchNorm2d& bn = *bn_;
  FoldedConvBn& f = folded_;
  std::vector<const void*> sources = sources_of(conv, bn);
  if (f.valid() && f.epoch == state_epoch() && f.sources == sources && f.input_dtype == input_dtype &&
      f.input_layout == input_layout && f.eps == bn.eps)
    return f;
  const DType p = batchnorm_param_dtype(input_dtype);
  const Tensor w = conv.weight.value().to(p);  // no-op: tensors_fit checked the dtype
  const Tensor bias = conv.bias.defined() ? conv.bias.value() : Tensor();
  const Tensor& gamma = bn.weight.value();
  const Tensor& beta = bn.bias.value();
  const Tensor& mean = bn.buffers.running_mean;
  const Tensor& var = bn.buffers.running_var;
  const int64_t k = w.size(0), inner = w.numel() / std::max<int64_t>(k, 1);
  for (const Tensor* t : {&gamma, &beta, &mean, &var})
    TL_CHECK(t->dtype() == p && t->device() == w.device() && t->ndim() == 1 && t->size(0) == k, ShapeError,
             "ConvBn::folded: batch-norm tensor ", t->str(), " does not fit the convolution weight ", w.str());
  if (bias.defined())
    TL_CHECK(bias.dtype() == p && bias.device() == w.device() && bias.numel() == k, ShapeError,
             "ConvBn::folded: convolution bias ", bias.str(), " does not fit the weight ", w.str());
  Tensor w_out = Tensor::empty(w.shape(), w.is_cuda() ? input_dtype : p, w.device(), w.layout());
  Tensor b_out = Tensor::empty({k}, p, w.device());
  if (w.is_cuda()) {
#if TL_WITH_CUDA
    kernels::fold_conv_bn(w.data(), bias.defined() ? bias.data() : nullptr, gamma.data(), beta.data(), mean.data(),
                          var.data(), bn.eps, w_out.data(), b_out.data(), input_dtype, k, inner, cuda::stream());
#endif
  } else if (p == DType::F32) {
    TL_CHECK(input_dtype == DType::F32, DTypeError, "ConvBn::folded: the CPU path supports float32 and float64");
    fold_cpu(w.data_as<float>(), bias.defined() ? bias.data_as<float>() : nullptr, gamma.data_as<float>(),
             beta.data_as<float>(), mean.data_as<float>(), var.data_as<float>(), bn.eps, w_out.data_as<float>(),
             b_out.data_as<float>(), k, inner);
  } else {
    fold_cpu(w.data_as<double>(), bias.defined() ? bias.data_as<double>() : nullptr, gamma.data_as<double>(),
             beta.data_as<double>(), mean.data_as<double>(), var.data_as<double>(), bn.eps, w_out.data_as<double>(),
             b_out.data_as<double>(), k, inner);
  }
  // conv2d_forward would convert a weight in another layout than x's on every call: convert once here.
  if (w_out.layout() != input_layout) w_out = w_out.to_layout(input_layout);
  f.weight = w_out;
  f.bias = b_out;
  f.epoch = state_epoch();
  f.sources = std::move(sources);
  f.input_dtype = input_dtype;
  f.input_layout = input_layout;
  f.eps = bn.eps;
  return f;
}


Variable ConvBn::operator()(const Variable& x, bool relu, const Variable* residual) {
  const Conv2d& conv = *conv_;
  ++t_counts.calls;
  if (!can_fold(x, residual)) {
    folded_ = FoldedConvBn{};  // see folded(): unfolded calls drop the cache
    Variable h = (*bn_)(conv(x));
    if (residual) h = add(h, *residual);
    return relu ? tl::relu(h) : h;
  }
  ++t_counts.folded;
  const Tensor& xv = x.value();
  const FoldedConvBn& f = folded(xv.dtype(), xv.layout());
  const Shape out = conv2d_output_shape(xv.shape(), f.weight.shape(), conv.options);
  record_macs(conv.weight.value(), static_cast<double>(f.weight.numel()) * out[2] * out[3], false, false, xv.shape(),
              out);
  record_shapes(bn_->weight.value(), out, out);
  Tensor r;
  if (residual) {
    r = residual->value();
    const Shape y_shape = conv2d_output_shape(xv.shape(), f.weight.shape(), conv.options);
    TL_CHECK(r.shape() == y_shape, ShapeError, "ConvBn: residual ", r.str(), " does not match the output ",
             shape_str(y_shape));
    if (r.layout() != xv.layout()) r = r.to_layout(xv.layout());  // y takes x's layout
  }
  if (xv.is_cuda()) {
#if TL_WITH_CUDA
    Tensor y = conv2d_forward(xv, f.weight, Tensor(), conv.options);
    const int64_t n = y.size(0), k = y.size(1), hw = y.size(2) * y.size(3);
    kernels::bias_add_act(y.data(), f.bias.data(), r.defined() ? r.data() : nullptr, relu, y.dtype(), n, k, hw,
                          y.layout() == Layout::NHWC, cuda::stream());
    return Variable(y);
#endif
  }
  Tensor y = conv2d_forward(xv, f.weight, f.bias, conv.options);
  if (r.defined() || relu) {
    if (!y.is_unique()) y = y.clone();  // never write into storage shared with another tensor
    if (y.dtype() == DType::F32)
      add_act_cpu(y.data_as<float>(), r.defined() ? r.data_as<float>() : nullptr, relu, y.numel());
    else
      add_act_cpu(y.data_as<double>(), r.defined() ? r.data_as<double>() : nullptr, relu, y.numel());
  }
  return Variable(y);
}

ConvBn add_conv_bn(Sequential& seq, int i, int64_t in, int64_t out, int kernel, int stride, int groups,
                   Generator& gen, double momentum) {
  return {seq.add<Conv2d>(std::to_string(i), in, out, kernel, stride, kernel / 2, false, gen, groups),
          seq.add<BatchNorm2d>(std::to_string(i + 1), out, 1e-5, momentum)};
}

ConvBnAct::ConvBnAct(int64_t in, int64_t out, Size2 kernel, const ConvBnActOptions& o, Generator& gen)
    : conv(add_module<Conv2d>(o.conv_name, in, out, kernel, o.stride, o.padding, false, gen, o.groups)),
      bn(add_module<BatchNorm2d>(o.bn_name, out, o.eps, o.momentum)),
      act(o.act),
      unit_(conv, bn) {}

Variable ConvBnAct::operator()(const Variable& x, const Variable* residual) {
  Variable y = unit_(x, act == Act::ReLU, residual);
  return act == Act::ReLU6 ? relu6(y) : y;
}
}  // namespace nn

}  // namespace tl
