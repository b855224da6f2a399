// Modules: named trees of Parameters and buffers whose dotted names are torchvision's state_dict keys
// (e.g. "layer1.0.conv1.weight", "features.denseblock1.denselayer1.norm1.running_mean"), and the three
// modules with state: Conv2d, BatchNorm2d, Linear. Stateless ops (relu, pooling, add, concat) are called
// directly in the models' forward functions.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"

namespace tl::nn {

// One entry of a module's state: a Parameter, a buffer tensor, or a host counter (num_batches_tracked).
struct StateEntry {
  std::string name;
  Parameter* param = nullptr;
  Tensor* buffer = nullptr;
  int64_t* counter = nullptr;
  Shape shape() const;  // counters are 0-d: {}
};

// A process-wide counter of "module state may have changed" events: bumped by Module::state() (which hands out
// writable pointers: load_weights, checkpoint restore, to(), to_dtype() all go through it), Module::train() and
// set_trainable(). Caches derived from parameter values (layers/fused.h: nn::ConvBn's folded weights) are
// valid only while it is unchanged. Code that writes a parameter or buffer directly (weight.mutable_value(),
// bn.buffers.running_mean) after a forward pass must call invalidate_derived_state().
uint64_t state_epoch();
void invalidate_derived_state();

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Parameters with their full dotted names, in registration (= torchvision) order.
  std::vector<std::pair<std::string, Parameter>> named_parameters() const;
  // Every state_dict entry (parameters, buffers, counters), in torchvision order. The entries point at the
  // live tensors, so callers may write through them: each call therefore bumps state_epoch().
  std::vector<StateEntry> state();
  // This module and all descendants with dotted names ("" for this one).
  std::vector<std::pair<std::string, Module*>> named_modules();
  std::vector<std::pair<std::string, const Module*>> named_modules() const;

  // train(true): batch statistics in batch norm, dropout on. train(false): eval mode.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves every parameter and buffer (gradients are dropped). 4-D convolution weights take `layout`.
  void to(Device device, Layout layout = Layout::NCHW);
  // Converts every floating-point parameter and buffer to `dtype` (float64 for reference checks).
  void to_dtype(DType dtype);

  const std::vector<std::pair<std::string, std::unique_ptr<Module>>>& children() const { return children_; }
  // Replaces the child `name` (keeping its place in the order) by a new module.
  template <class M, class... Args>
  M& replace_module(const std::string& name, Args&&... args) {
    for (auto& [n, child] : children_) {
      if (n != name) continue;
      auto m = std::make_unique<M>(std::forward<Args>(args)...);
      M& ref = *m;
      child = std::move(m);
      return ref;
    }
    throw ValueError("replace_module: no child named '" + name + "'");
  }
  // The direct child `name` as an M (ValueError when there is none of that type).
  template <class M>
  M& child(const std::string& name) {
    for (auto& [n, c] : children_)
      if (n == name)
        if (auto* typed = dynamic_cast<M*>(c.get())) return *typed;
    throw ValueError("no child module '" + name + "' of the expected kind");
  }
  // Removes the direct child `name` and everything below it (ValueError when there is none).
  void remove_module(const std::string& name);

 protected:
  Parameter& add_parameter(const std::string& name, Tensor value, bool trainable = true);
  Tensor& add_buffer(const std::string& name, Tensor* storage);  // the tensor lives in the subclass
  void add_counter(const std::string& name, int64_t* counter);
  template <class M, class... Args>
  M& add_module(const std::string& name, Args&&... args) {
    auto m = std::make_unique<M>(std::forward<Args>(args)...);
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }
  virtual void on_train(bool) {}

 private:
  void collect_state(const std::string& prefix, std::vector<StateEntry>& out);
  std::vector<std::pair<std::string, Parameter>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, int64_t*>> counters_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
  bool training_ = true;
};

// Seeded source of initial weights (float32, on the host, so CPU and CUDA models start identical).
// A splitmix64 stream with Box-Muller normals: fast enough to initialise VGG16's 138M weights in well under a second.
class Generator {
 public:
  explicit Generator(uint64_t seed) : state_(seed) {}
  Tensor uniform(const Shape& shape, double lo, double hi);
  Tensor normal(const Shape& shape, double stddev);

 private:
  double next_unit();  // uniform in (0, 1)
  uint64_t state_;
};

// A (height, width) pair of a convolution's kernel, stride, padding or dilation; an int gives both (square).
// Inception v3's factorised convolutions: Conv2d(c, k, Size2{1, 7}, 1, Size2{0, 3}, false, gen).
struct Size2 {
  int h, w;
  Size2(int v) : h(v), w(v) {}  // NOLINT(google-explicit-constructor): 3 means 3x3, as PyTorch's int arguments
  Size2(int h_, int w_) : h(h_), w(w_) {}
};

class Conv2d : public Module {
 public:
  // PyTorch's default nn.Conv2d init, kaiming_uniform with a = sqrt(5): weight and bias both
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups * kernel_h * kernel_w; models
  // re-initialise as torchvision does.
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel, int stride, int padding, bool bias, Generator& gen,
         int groups = 1, int dilation = 1);
  // Rectangular kernels and per-dimension stride, padding and dilation (weight (K, C/groups, kernel.h, kernel.w)).
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel, Size2 stride, Size2 padding, bool bias,
         Generator& gen, int groups = 1, Size2 dilation = 1);
  Variable operator()(const Variable& x) const;
  Parameter weight, bias;  // bias undefined when bias == false
  Conv2dOptions options;
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Variable operator()(const Variable& x);
  // The options operator() runs with now (training follows uses_running_stats(); sync when active).
  BatchNormOptions options() const;
  Parameter weight, bias;
  BatchNormBuffers buffers;
  double eps, momentum;
  // Frozen batch norm (weight and bias not trainable) runs on its running statistics when true
  // (Keras semantics, `--freeze-bn`); PyTorch's default keeps batch statistics in train().
  bool frozen_uses_running_stats = false;
  // --sync-bn: the ranks whose batches this layer's batch statistics cover in training (unset: this batch only).
  // Set by train::enable_sync_bn; the module holds it, so the backward pass of a graph can point at it.
  BatchNormSync sync;
  // True when this layer normalises with its running statistics in the next forward (eval mode, or frozen with
  // frozen_uses_running_stats).
  bool uses_running_stats() const;
};

class Linear : public Module {
 public:
  // PyTorch's nn.Linear init: weight and bias U(-1/sqrt(in), 1/sqrt(in)).
  Linear(int64_t in_features, int64_t out_features, Generator& gen, bool bias = true);
  Variable operator()(const Variable& x) const;
  Parameter weight, bias;
};

// nn.Dropout(p): in training mode each call draws a fresh mask (layers/dropout.h) from (seed, an offset that
// advances by the elements each call covers), so two calls differ and a run with the same seed repeats exactly;
// the identity in eval mode or with p == 0.
class Dropout : public Module {
 public:
  Dropout(double p, uint64_t seed) : p(p), seed_(seed) {}
  Variable operator()(const Variable& x);
  double p;
  // Where the next call's mask starts (a checkpoint saves it, so a resumed run draws the masks it would have drawn).
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t offset) { offset_ = offset; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// A plain container whose children are named "0", "1", ... or by the caller (torchvision's Sequential).
class Sequential : public Module {
 public:
  template <class M, class... Args>
  M& add(const std::string& name, Args&&... args) {
    return add_module<M>(name, std::forward<Args>(args)...);
  }
};

// torchvision's kaiming_normal_(nonlinearity="relu") of a convolution weight: std = sqrt(2 / fan), with
// fan = out_channels * k * k (mode "fan_out", ResNet, VGG) or in_channels / groups * k * k ("fan_in", DenseNet).
enum class FanMode { In, Out };
void kaiming_normal(Conv2d& conv, Generator& gen, FanMode mode);

// Sets every parameter of `m` (and descendants) trainable or frozen.
void set_trainable(Module& m, bool trainable);

}  // namespace tl::nn
