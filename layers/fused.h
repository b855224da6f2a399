// nn::ConvBn: a convolution and the batch norm after it, run as one unit, with inference-mode batch norm folded
// into the convolution for the frozen prefix of a model under --freeze-bn (or in eval mode). Every model's
// conv + batch norm pairs run through it (ResNet, VGG-BN, MobileNet V2, MNASNet, ShuffleNet V2, and through
// nn::ConvBnAct Inception v3 and GoogLeNet).
//
//   ConvBn(conv, bn)(x, relu, residual) = act(bn(conv(x)) [+ *residual])     act = ReLU when relu
//
// Folded path, taken when can_fold(x, residual) holds: the convolution's weight (and bias) and the batch norm's
// weight and bias are frozen, the batch norm normalises with its running statistics (eval mode, or
// frozen_uses_running_stats), and nothing needs a gradient (x and the residual do not require grad, or autograd is
// off). Then, per output channel k, with s[k] = gamma[k] / sqrt(running_var[k] + eps):
//   w'[k] = w[k] * s[k]        b'[k] = beta[k] + (bias[k] - running_mean[k]) * s[k]   (bias = 0 when absent)
//   y = act(conv(x, w') + b' [+ residual])
// CPU: conv2d_forward(x, w', b') and one pass for the add and ReLU. CUDA: conv2d_forward(x, w') (cuDNN) and one
// kernel for bias + add + ReLU (kernels/fused.cu); w' is made on the device, no host sync. bfloat16/float16
// inputs: w' is folded in float32 and rounded once to the input's dtype; b' stays float32.
// Nothing is recorded on the tape (nothing needs a gradient) and the running statistics are not touched.
// w' and b' are cached in the ConvBn (nn::FoldedConvBn says when the cache is valid).
//
// Otherwise (fallback): exactly the unfused ops, bn(conv(x)), add, relu, with their usual autograd and
// batch-norm semantics (batch statistics and running-statistics updates in training mode).
//
// DenseNet's batch norms come before their convolutions (pre-activation: norm, relu, conv), so there is no
// conv followed by an affine map to fold; DenseNet does not use this.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/module.h"

namespace tl {
namespace nn {

// The convolution folded into its batch norm, cached: valid while `epoch` == state_epoch() and every tensor it
// was computed from is the same storage (`sources`). Dropped by every ConvBn call that does not fold (so an
// optimizer step, which needs an unfolded forward with gradients first, can never leave it stale).
struct FoldedConvBn {
  Tensor weight;  // w * gamma / sqrt(running_var + eps), in the input's dtype and layout
  Tensor bias;    // beta + (conv bias - running_mean) * gamma / sqrt(running_var + eps), parameter dtype
  uint64_t epoch = 0;
  std::vector<const void*> sources;
  DType input_dtype = DType::F32;
  Layout input_layout = Layout::NCHW;
  double eps = 0;
  bool valid() const { return weight.defined(); }
};

// See the top of this file. The two modules stay where the model's state dict puts them (siblings "conv1"/"bn1"
// of a ResNet block, "0"/"1" of a Sequential, children "conv"/"bn" of a ConvBnAct); a ConvBn refers to them and
// owns the folded weights.
class ConvBn {
 public:
  ConvBn() = default;
  ConvBn(Conv2d& conv, BatchNorm2d& bn) : conv_(&conv), bn_(&bn) {}
  // act(bn(conv(x)) [+ *residual]); `residual` may be nullptr, when given it has the output's shape.
  Variable operator()(const Variable& x, bool relu, const Variable* residual = nullptr);
  // Whether the call would take the folded path for these arguments (and folding is enabled on this thread).
  bool can_fold(const Variable& x, const Variable* residual = nullptr) const;
  // The folded weight (in the input's dtype and layout) and bias (parameter dtype), computed or taken from the
  // cache when still valid; for tests and benchmarks. Requires the parameters and statistics in the parameter
  // dtype on one device.
  const FoldedConvBn& folded(DType input_dtype, Layout input_layout = Layout::NCHW);
  const FoldedConvBn& cache() const { return folded_; }
  explicit operator bool() const { return conv_ != nullptr; }
  Conv2d& conv() const { return *conv_; }
  BatchNorm2d& bn() const { return *bn_; }

 private:
  Conv2d* conv_ = nullptr;
  BatchNorm2d* bn_ = nullptr;
  FoldedConvBn folded_;
};

// A convolution (no bias) and its batch norm added to a flat Sequential at indices i and i + 1, as torchvision's
// MNASNet and ShuffleNet V2 name them ("layers.0", "layers.1").
ConvBn add_conv_bn(Sequential& seq, int i, int64_t in, int64_t out, int kernel, int stride, int groups,
                   Generator& gen, double momentum = 0.1);

// Convolution (no bias) + batch norm + activation as one module, the layer the Inception, GoogLeNet, MobileNet and
// MNASNet graphs repeat. Its two children are named as the model's state dict names them (Inception's
// BasicConv2d: "conv" and "bn"; torchvision's Conv2dNormActivation: "0" and "1"), and it runs through its ConvBn,
// so it is folded in a frozen prefix with running statistics. ReLU6 runs after the (folded or not) conv + batch
// norm.
enum class Act { None, ReLU, ReLU6 };
struct ConvBnActOptions {
  std::string conv_name = "conv", bn_name = "bn";
  Size2 stride = 1, padding = 0;
  int groups = 1;
  double eps = 1e-5, momentum = 0.1;  // the batch norm's (Inception and GoogLeNet: eps 0.001; MNASNet: momentum 3e-4)
  Act act = Act::ReLU;
};
class ConvBnAct : public Module {
 public:
  ConvBnAct(int64_t in, int64_t out, Size2 kernel, const ConvBnActOptions& o, Generator& gen);
  // act(bn(conv(x)) [+ *residual]).
  Variable operator()(const Variable& x, const Variable* residual = nullptr);
  Conv2d& conv;
  BatchNorm2d& bn;
  Act act;

 private:
  ConvBn unit_;
};
}  // namespace nn

// Folding off for a scope on this thread (default on; restored by the destructor, like NoGradGuard): ConvBn then
// always takes the unfused path (tests comparing the two, benchmarks).
class ConvBnFoldingGuard {
 public:
  explicit ConvBnFoldingGuard(bool enabled);
  ~ConvBnFoldingGuard();
  ConvBnFoldingGuard(const ConvBnFoldingGuard&) = delete;
  ConvBnFoldingGuard& operator=(const ConvBnFoldingGuard&) = delete;

 private:
  bool previous_;
};
bool conv_bn_folding();

// Counters of this thread's ConvBn calls since it started: how many folded, and how many calls in all.
// Models report the difference over one forward (models::Model::folded_conv_bn()).
struct ConvBnCounts {
  int64_t folded = 0, calls = 0;
};
ConvBnCounts conv_bn_counts();

}  // namespace tl
