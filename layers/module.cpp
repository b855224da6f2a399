// Module tree, state enumeration, initialisation and the Conv2d / BatchNorm2d / Linear modules.
#include "layers/module.h"

#include <atomic>
#include <cmath>

#include "layers/dropout.h"
#include "layers/elementwise.h"
#include "layers/linear.h"

namespace tl::nn {

namespace {
std::atomic<uint64_t> g_state_epoch{1};
}  // namespace
uint64_t state_epoch() { return g_state_epoch.load(std::memory_order_relaxed); }
void invalidate_derived_state() { g_state_epoch.fetch_add(1, std::memory_order_relaxed); }

Shape StateEntry::shape() const {
  if (param) return param->shape();
  if (buffer) return buffer->shape();
  return {};
}

std::vector<std::pair<std::string, Parameter>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Parameter>> out;
  auto self = const_cast<Module*>(this);
  for (const StateEntry& e : self->state())
    if (e.param) out.emplace_back(e.name, *e.param);
  return out;
}

std::vector<StateEntry> Module::state() {
  invalidate_derived_state();  // the entries are writable
  std::vector<StateEntry> out;
  collect_state("", out);
  return out;
}

// torchvision orders a module's own parameters, then its own buffers, then each child in turn.
void Module::collect_state(const std::string& prefix, std::vector<StateEntry>& out) {
  for (auto& [name, p] : params_) out.push_back(StateEntry{prefix + name, &p, nullptr, nullptr});
  for (auto& [name, b] : buffers_) out.push_back(StateEntry{prefix + name, nullptr, b, nullptr});
  for (auto& [name, c] : counters_) out.push_back(StateEntry{prefix + name, nullptr, nullptr, c});
  for (auto& [name, child] : children_) child->collect_state(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_) {
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  }
  return out;
}

std::vector<std::pair<std::string, const Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, const Module*>> out;
  for (auto& [name, m] : const_cast<Module*>(this)->named_modules()) out.emplace_back(name, m);
  return out;
}

void Module::train(bool on) {
  invalidate_derived_state();
  training_ = on;
  on_train(on);
  for (auto& [name, child] : children_) child->train(on);
}

void Module::to(Device device, Layout layout) {
  for (StateEntry& e : state()) {
    if (e.param) {
      Tensor& v = e.param->mutable_value();
      v = v.to(device, v.dtype(), v.ndim() == 4 ? layout : Layout::NCHW);
      e.param->zero_grad();
    } else if (e.buffer && e.buffer->defined()) {
      *e.buffer = e.buffer->to(device);
    }
  }
}

void Module::to_dtype(DType dtype) {
  for (StateEntry& e : state()) {
    if (e.param) {
      e.param->mutable_value() = e.param->value().to(dtype);
      e.param->zero_grad();
    } else if (e.buffer && e.buffer->defined()) {
      *e.buffer = e.buffer->to(dtype);
    }
  }
}

Parameter& Module::add_parameter(const std::string& name, Tensor value, bool trainable) {
  params_.emplace_back(name, Parameter(std::move(value), name, trainable));
  return params_.back().second;
}
Tensor& Module::add_buffer(const std::string& name, Tensor* storage) {
  buffers_.emplace_back(name, storage);
  return *storage;
}
void Module::add_counter(const std::string& name, int64_t* counter) { counters_.emplace_back(name, counter); }

double Generator::next_unit() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return (static_cast<double>(z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

Tensor Generator::uniform(const Shape& shape, double lo, double hi) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(lo + (hi - lo) * next_unit());
  return t;
}

Tensor Generator::normal(const Shape& shape, double stddev) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data_as<float>();
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < t.numel(); i += 2) {
    const double r = std::sqrt(-2.0 * std::log(next_unit())) * stddev, a = two_pi * next_unit();
    p[i] = static_cast<float>(r * std::cos(a));
    if (i + 1 < t.numel()) p[i + 1] = static_cast<float>(r * std::sin(a));
  }
  return t;
}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int kernel, int stride, int padding, bool has_bias,
               Generator& gen, int groups, int dilation)
    : Conv2d(in_channels, out_channels, Size2(kernel), Size2(stride), Size2(padding), has_bias, gen, groups,
             Size2(dilation)) {}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel, Size2 stride, Size2 padding, bool has_bias,
               Generator& gen, int groups, Size2 dilation) {
  TL_CHECK(groups >= 1 && in_channels % groups == 0 && out_channels % groups == 0, ShapeError, "Conv2d: channels ",
           in_channels, " -> ", out_channels, " not divisible by groups ", groups);
  TL_CHECK(kernel.h >= 1 && kernel.w >= 1, ValueError, "Conv2d: kernel must be >= 1, got ", kernel.h, "x", kernel.w);
  const int64_t fan_in = in_channels / groups * kernel.h * kernel.w;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight = add_parameter("weight",
                         gen.uniform({out_channels, in_channels / groups, kernel.h, kernel.w}, -bound, bound));
  if (has_bias) bias = add_parameter("bias", gen.uniform({out_channels}, -bound, bound));
  options.stride_h = stride.h, options.stride_w = stride.w;
  options.pad_h = padding.h, options.pad_w = padding.w;
  options.dilation_h = dilation.h, options.dilation_w = dilation.w;
  options.groups = groups;
}

// Mixed precision: float32 master weights are cast to the input's dtype (bfloat16) inside the graph, so their
// gradients come back in float32.
namespace {
Variable in_dtype_of(const Variable& p, const Variable& x) {
  return p.defined() ? cast(p, x.value().dtype()) : p;
}
}  // namespace

Variable Conv2d::operator()(const Variable& x) const {
  return conv2d(x, in_dtype_of(weight, x), in_dtype_of(bias, x), options);
}

BatchNorm2d::BatchNorm2d(int64_t channels, double eps_, double momentum_) : eps(eps_), momentum(momentum_) {
  weight = add_parameter("weight", Tensor::full({channels}, 1.0));
  bias = add_parameter("bias", Tensor::zeros({channels}));
  buffers = batchnorm_buffers(channels);
  add_buffer("running_mean", &buffers.running_mean);
  add_buffer("running_var", &buffers.running_var);
  add_counter("num_batches_tracked", &buffers.num_batches_tracked);
}

Variable BatchNorm2d::operator()(const Variable& x) { return batch_norm2d(x, weight, bias, buffers, options()); }

BatchNormOptions BatchNorm2d::options() const {
  BatchNormOptions o;
  o.eps = eps;
  o.momentum = momentum;
  o.training = !uses_running_stats();
  if (o.training && sync.active()) o.sync = &sync;
  return o;
}

bool BatchNorm2d::uses_running_stats() const {
  return !is_training() || (frozen_uses_running_stats && !weight.trainable() && !bias.trainable());
}

Linear::Linear(int64_t in_features, int64_t out_features, Generator& gen, bool has_bias) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight = add_parameter("weight", gen.uniform({out_features, in_features}, -bound, bound));
  if (has_bias) bias = add_parameter("bias", gen.uniform({out_features}, -bound, bound));
}

Variable Linear::operator()(const Variable& x) const {
  return linear(x, in_dtype_of(weight, x), in_dtype_of(bias, x));
}

void Module::remove_module(const std::string& name) {
  for (auto it = children_.begin(); it != children_.end(); ++it) {
    if (it->first != name) continue;
    children_.erase(it);
    return;
  }
  throw ValueError("remove_module: no child named '" + name + "'");
}

Variable Dropout::operator()(const Variable& x) {
  if (!is_training() || p == 0) return x;
  const uint64_t offset = offset_;
  offset_ += static_cast<uint64_t>(x.value().numel());
  return dropout(x, p, true, seed_, offset);
}

void kaiming_normal(Conv2d& conv, Generator& gen, FanMode mode) {
  const Shape& s = conv.weight.shape();
  const double fan = static_cast<double>((mode == FanMode::Out ? s[0] : s[1]) * s[2] * s[3]);
  conv.weight.mutable_value() = gen.normal(s, std::sqrt(2.0 / fan));
}

void set_trainable(Module& m, bool trainable) {
  invalidate_derived_state();
  for (StateEntry& e : m.state())
    if (e.param) e.param->set_trainable(trainable);
}

}  // namespace tl::nn
