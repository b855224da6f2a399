// Classification losses: log-softmax, negative log-likelihood and fused softmax cross-entropy, mean reduction
// with PyTorch 1.13's exact semantics (class weights, ignore_index, label smoothing).
//
// Shapes: logits / log-probabilities (N, C) row-major; target int32 (N) class indices on the same device;
// class_weights (C) float32 or float64 (or undefined: all ones), on the same device.
// The loss is a 1-element tensor on the logits' device, float64 for float64 inputs and float32 otherwise
// (bfloat16/float16 logits accumulate in float32). Its reduction runs on the device: nothing synchronises.
//
// Formulas (rows i with t_i == ignore_index are left out everywhere; w = class_weights, or 1):
//   logp        = x - logsumexp(x) per row (max-subtracted)
//   D           = sum_i w[t_i]                                            (the weighted mean's denominator)
//   nll_loss    = sum_i -w[t_i] logp[i, t_i] / D
//   cross_entropy with smoothing e (torch.nn.functional.cross_entropy, reduction='mean'):
//               = (1 - e) * nll_loss + e / C * sum_i ( -sum_c w_c logp[i, c] ) / D
//     i.e. the smoothing term is weighted per class and shares nll's denominator. All targets ignored: NaN.
// Gradients:
//   d logp[i, c]   (nll)   = -w[t_i] [c == t_i] * dloss / D
//   d x[i, c]      (CE)    = dloss / D * (softmax[i, c] ((1-e) w[t_i] + e/C sum_c' w_c') - (1-e) w[t_i] [c == t_i]
//                                         - e/C w_c)
//   d x            (log_softmax) = dy - exp(y) * sum_c dy
//
// Target validation: on the CPU an out-of-range target (not in [0, C) and not ignore_index) throws ValueError
// naming the row and the label. On CUDA that check would need a host sync, so it is not done: such a target
// turns the loss (and its gradient row) into NaN, with no out-of-bounds read. Labels must be validated on the
// host where they are produced (the data loader).
//
// Low-level functions: `stats` is a 2-element tensor in the accumulation dtype ([D, sum_c w_c]) written by
// the forward and read by the backward; `lse` holds each row's logsumexp (N), same dtype.
//
// Gradient contract (the same for every backward function in layers/):
//   accumulate == false: the gradient output is ASSIGNED (allocated when undefined, else overwritten);
//   accumulate == true:  the gradient is ADDED into the existing gradient output.
// Autograd savings: log_softmax saves y; nll_loss saves target, weights and stats (not logp);
// cross_entropy saves logits, lse, target, weights and stats. Nothing is saved when no input needs a gradient.
#pragma once
#include "core/autograd.h"

namespace tl {

struct CrossEntropyOptions {
  double label_smoothing = 0;  // in [0, 1]
  Tensor class_weights;        // float32/float64 (C), or undefined
  int ignore_index = -100;
};

// The accumulation dtype of losses over `dtype`: float64 for float64, float32 otherwise.
DType loss_dtype(DType dtype);

Tensor log_softmax_forward(const Tensor& x);
void log_softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate);

Tensor nll_loss_forward(const Tensor& logp, const Tensor& target, const Tensor& class_weights, int ignore_index,
                        Tensor* stats = nullptr);
// dlogp is (N, num_classes) of `dtype` (the log-probabilities' dtype), on dloss's device.
void nll_loss_backward(const Tensor& dloss, const Tensor& target, const Tensor& class_weights, int ignore_index,
                       const Tensor& stats, int64_t num_classes, DType dtype, Tensor& dlogp, bool accumulate);

Tensor cross_entropy_forward(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& options = {},
                             Tensor* lse = nullptr, Tensor* stats = nullptr);
void cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& target, const Tensor& lse,
                            const Tensor& stats, const CrossEntropyOptions& options, Tensor& dlogits, bool accumulate);

// Autograd ops. `target` and the class weights are never differentiated.
Variable log_softmax(const Variable& x);
Variable nll_loss(const Variable& logp, const Tensor& target, const Tensor& class_weights = Tensor(),
                  int ignore_index = -100);
Variable cross_entropy(const Variable& logits, const Tensor& target, const CrossEntropyOptions& options = {});

}  // namespace tl
