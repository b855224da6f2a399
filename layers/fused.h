// Conv + batch norm (+ residual add) (+ ReLU) with inference-mode batch norm folded into the convolution, for the
// frozen prefix of a model under --freeze-bn (or in eval mode).
//
//   conv_bn_act(conv, bn, x, residual, relu) = act(bn(conv(x)) [+ *residual])     act = ReLU when relu
//
// Folded path, taken when can_fold_conv_bn(...) holds: the convolution's weight (and bias) and the batch norm's
// weight and bias are frozen, the batch norm normalises with its running statistics (eval mode, or
// frozen_uses_running_stats), and nothing needs a gradient (x and the residual do not require grad, or autograd is
// off). Then, per output channel k, with s[k] = gamma[k] / sqrt(running_var[k] + eps):
//   w'[k] = w[k] * s[k]        b'[k] = beta[k] + (bias[k] - running_mean[k]) * s[k]   (bias = 0 when absent)
//   y = act(conv(x, w') + b' [+ residual])
// CPU: conv2d_forward(x, w', b') and one pass for the add and ReLU. CUDA: conv2d_forward(x, w') (cuDNN) and one
// kernel for bias + add + ReLU (kernels/fused.cu); w' is made on the device, no host sync. bfloat16/float16
// inputs: w' is folded in float32 and rounded once to the input's dtype; b' stays float32.
// Nothing is recorded on the tape (nothing needs a gradient) and the running statistics are not touched.
// w' and b' are cached in bn.folded (see nn::BatchNorm2d::FoldedConv for when the cache is valid).
//
// Otherwise (fallback): exactly the unfused ops, bn(conv(x)), add, relu, with their usual autograd and
// batch-norm semantics (batch statistics and running-statistics updates in training mode).
//
// DenseNet's batch norms come before their convolutions (pre-activation: norm, relu, conv), so there is no
// conv followed by an affine map to fold; DenseNet does not use this.
#pragma once
#include <cstdint>
#include <string>

#include "layers/module.h"

namespace tl {

// Whether conv_bn_act would take the folded path for these arguments (and folding is enabled).
bool can_fold_conv_bn(const nn::Conv2d& conv, const nn::BatchNorm2d& bn, const Variable& x,
                      const Variable* residual);

// See the top of this file. `residual` may be nullptr; when given it has the output's shape.
Variable conv_bn_act(const nn::Conv2d& conv, nn::BatchNorm2d& bn, const Variable& x, const Variable* residual,
                     bool relu);

// The folded weight (in the input's dtype and layout) and bias (parameter dtype), computed or taken from
// bn.folded when still valid, for an input of dtype `input_dtype` and layout `input_layout`; for tests and
// benchmarks. Requires the parameters and statistics in the parameter dtype on one device.
const nn::BatchNorm2d::FoldedConv& folded_conv_bn(const nn::Conv2d& conv, nn::BatchNorm2d& bn, DType input_dtype,
                                                  Layout input_layout = Layout::NCHW);

namespace nn {
// Convolution (no bias) + batch norm + activation as one module, the layer the Inception, GoogLeNet, MobileNet and
// MNASNet graphs repeat. Its two children are named as the model's state dict names them (Inception's
// BasicConv2d: "conv" and "bn"; torchvision's Conv2dNormActivation: "0" and "1"), and it runs through
// conv_bn_act, so it is folded in a frozen prefix with running statistics. ReLU6 runs after the (folded or not)
// conv + batch norm.
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
};

// A convolution (no bias) and its batch norm added to a flat Sequential at indices i and i + 1, as torchvision's
// MNASNet and ShuffleNet V2 name them ("layers.0", "layers.1"); called like ConvBnAct, through conv_bn_act.
struct ConvBnPair {
  Conv2d* conv = nullptr;
  BatchNorm2d* bn = nullptr;
  Variable operator()(const Variable& x, bool relu, const Variable* residual = nullptr) const;
};
ConvBnPair add_conv_bn(Sequential& seq, int i, int64_t in, int64_t out, int kernel, int stride, int groups,
                       Generator& gen, double momentum = 0.1);
}  // namespace nn

// Folding off for a scope on this thread (default on; restored by the destructor, like NoGradGuard): conv_bn_act
// then always takes the unfused path (tests comparing the two, benchmarks).
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

// Counters of this thread's conv_bn_act calls since it started: how many folded, and how many calls in all.
// Models report the difference over one forward (models::Model::folded_conv_bn()).
struct ConvBnCounts {
  int64_t folded = 0, calls = 0;
};
ConvBnCounts conv_bn_counts();

}  // namespace tl
