// Batch normalisation over (N, H, W) per channel of a 4-D tensor, with PyTorch's BatchNorm2d semantics.
//
// Forward, training mode (batch statistics), per channel c over the m = N*H*W values:
//   mean = sum(x) / m,  var = sum((x - mean)^2) / m (biased),  invstd = 1 / sqrt(var + eps)
//   y = (x - mean) * invstd * gamma + beta
//   running_mean = (1 - f) * running_mean + f * mean
//   running_var  = (1 - f) * running_var  + f * var * m / (m - 1)   (the UNBIASED variance, as PyTorch)
//   num_batches_tracked += 1;  f = momentum, or 1 / num_batches_tracked when cumulative_average
//   (PyTorch's momentum=None). m must be > 1 (PyTorch: "Expected more than 1 value per channel").
// Forward, eval mode: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta; no update.
//
// Backward (xhat = (x - mean) * invstd; mean/invstd are the batch statistics in training mode, the running
// statistics in eval mode):
//   dgamma = sum(dy * xhat),  dbeta = sum(dy)
//   training: dx = gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)
//   eval:     dx = dy * gamma * invstd   (the statistics are constants)
//
// Types: gamma, beta, running stats, saved mean/invstd and dgamma/dbeta have the "parameter dtype":
// float64 when x is float64, otherwise float32 (x/y/dy/dx may be bfloat16/float16 on CUDA; this is cuDNN's
// derived BN descriptor rule). x in NCHW or NHWC; y and dx take x's layout.
// CPU: float32/float64 reference with sums in double. CUDA: cuDNN for float32, float16 and float64 training
// forward, training backward with dx, and eval forward: NHWC float32/float16 training in
// CUDNN_BATCHNORM_SPATIAL_PERSISTENT mode through the *Ex functions (PyTorch's choice), everything else legacy
// spatial mode. Own kernels (kernels/batchnorm.cu) for bfloat16 (PyTorch also keeps bfloat16 off cuDNN BN),
// eval-mode backward, backward without dx, tensors beyond cuDNN's limits (2^31 elements, PyTorch's batch
// limits), and whatever cuDNN answers with a status of the NOT_SUPPORTED category.
// gamma/beta and the running statistics are required (affine=True, track_running_stats=True).
//
// Synchronised batch norm (BatchNormSync, `--sync-bn`, PyTorch's SyncBatchNorm; CPU only): in training mode the
// batch statistics are those of the union of all ranks' batches. The forward pass sums per channel sum(x) and the
// value count over the ranks, takes the mean, then sums sum((x - mean)^2) over the ranks: the same two passes the
// CPU reference makes over one batch (not E[x^2] - mean^2, which cancels), so 2 ranks x B give the statistics of
// 1 rank x 2B up to the order of the double sums. The running variance uses the global count (m / (m - 1) over all
// ranks). The backward pass computes dgamma and dbeta from this rank's dy alone (the gradient averaging between
// ranks takes their mean, as PyTorch), and dx from sum(dy) and sum(dy * (x - mean)) summed over the ranks (only
// when dx is needed: every rank runs the same graph, so all take part or none).
//
// Gradient contract (the same for every backward function in layers/), per requested output:
//   accumulate == false: the gradient output is ASSIGNED (allocated when undefined, else overwritten);
//   accumulate == true:  the gradient is ADDED into the existing gradient output.
//
// Autograd (batch_norm2d): in training mode the running statistics update even when nothing needs a
// gradient, and then nothing is recorded. Saved for backward, only what the needed gradients use:
//   training: x, save_mean, save_invstd when dx or dgamma is needed (+ gamma, and cuDNN's reserve space where
//             the persistent path ran, when dx is needed); nothing when only dbeta is needed;
//   eval:     invstd (of the running variance) and gamma when dx is needed; x, mean, invstd when dgamma is
//             needed; nothing when only dbeta is needed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/distributed.h"

namespace tl {

// The ranks a batch norm layer shares its batch statistics with (--sync-bn). `what` names the layer in the
// messages of its collectives (a timeout), `at` (may be null: the trainer's) the epoch and step. A null or
// single-rank `dist` is the plain per-batch batch norm.
struct BatchNormSync {
  const Distributed* dist = nullptr;
  std::string what;
  const StepPosition* at = nullptr;
  // The layer's sums and value count on their way through the all-reduce: allocated by its first reduction, grown
  // only when one needs more (the backward's 2C + 1 values), then reused by every step.
  mutable std::vector<double> buffer = {};
  bool active() const { return dist && dist->world_size() > 1; }
};

// Running statistics of one BatchNorm layer (PyTorch's buffers). Tensors of shape (C), parameter dtype,
// on the op's device; updated in place. num_batches_tracked is a host counter (no device sync): the state dict
// reads it as it is. Under CUDA graphs the host code of a replayed step does not run, so the graph launcher adds
// what the captured step added (train/cuda_graph.h); with momentum (every torchvision model) the counter never
// reaches the device, and the cumulative-average factor (momentum=None), which cuDNN takes by value, is refused
// during a capture.
struct BatchNormBuffers {
  Tensor running_mean, running_var;
  int64_t num_batches_tracked = 0;
  // CUDA persistent (NHWC) path: cuDNN's reserve space of the last training forward, reused by the next one
  // when nothing holds it any more (scratch, not state: not in the state dict).
  Tensor cudnn_reserve = Tensor();
};

struct BatchNormOptions {
  bool training = true;
  double momentum = 0.1;
  bool cumulative_average = false;  // PyTorch momentum=None: f = 1 / num_batches_tracked
  double eps = 1e-5;
  const BatchNormSync* sync = nullptr;  // training: statistics over all ranks (see the top of this file)
};

// The dtype of gamma/beta/running stats for an input of dtype `x`: float64 for float64, else float32.
DType batchnorm_param_dtype(DType x);
// Fresh PyTorch-initialised buffers: running_mean = 0, running_var = 1.
BatchNormBuffers batchnorm_buffers(int64_t channels, DType param_dtype = DType::F32, Device device = Device::CPU);

// Training-mode forward: returns y; writes save_mean and save_invstd (shape C, parameter dtype; allocated
// here) and updates `buffers` (running stats and num_batches_tracked) following `opt`. `reserve` (optional)
// receives cuDNN's reserve space when the persistent NHWC path ran (else an undefined tensor): passing it to
// batchnorm_backward lets the backward run the matching persistent kernel.
Tensor batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormBuffers& buffers,
                               const BatchNormOptions& opt, Tensor& save_mean, Tensor& save_invstd,
                               Tensor* reserve = nullptr);
// Per-channel batch statistics of a CPU float32/float64 x (this batch only), exactly as batchnorm_forward_train
// computes them: mean, biased variance, and the count m of values per channel. float32: the mean is rounded to
// float32 (the value the forward subtracts and saves) and the variance taken around that rounded mean. A channel's
// statistics depend on its own values only (layers/channel_sums.h), so those of a channel slice of x are the same
// numbers (fused concat + batch norm, layers/concat_bn_relu.h).
struct BatchMoments {
  std::vector<double> mean, var;
  double count = 0;
};
BatchMoments batchnorm_batch_moments(const Tensor& x);
// The running-statistics update of a training forward from given statistics (CPU buffers): num_batches_tracked
// += 1, then running_mean and running_var (unbiased: var * m / (m - 1)) as batchnorm_forward_train updates them.
void batchnorm_update_running(BatchNormBuffers& buffers, const BatchMoments& moments, const BatchNormOptions& opt);

// Eval-mode forward with the running statistics (buffers unchanged).
Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const BatchNormBuffers& buffers, double eps);
// 1 / sqrt(running_var + eps) (shape C): the eval-mode invstd for batchnorm_backward.
Tensor batchnorm_invstd(const Tensor& running_var, double eps);

// Requested gradient outputs: a null pointer means "not needed" (nothing is computed or written for it).
// Each output has its own accumulate flag (autograd slots are independent).
struct BatchNormGrads {
  Tensor* dx = nullptr;
  bool dx_accumulate = false;
  Tensor* dgamma = nullptr;
  bool dgamma_accumulate = false;
  Tensor* dbeta = nullptr;
  bool dbeta_accumulate = false;
  const BatchNormSync* sync = nullptr;  // training: dx from sums over all ranks (see the top of this file)
};
// Backward of either mode. training == true: mean/invstd are save_mean/save_invstd from
// batchnorm_forward_train; training == false: mean = running_mean, invstd = batchnorm_invstd(running_var).
// What must be defined: dy always; x and mean when dx (training) or dgamma is requested; invstd when dx or
// dgamma is requested; gamma when dx is requested.
// eps is the forward's (cuDNN asks for it); `reserve` is the forward's (optional, see batchnorm_forward_train).
void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean,
                        const Tensor& invstd, bool training, double eps, const BatchNormGrads& grads,
                        const Tensor& reserve = Tensor());

// Autograd op (see the top of this file). x: (N, C, H, W); gamma, beta: (C).
Variable batch_norm2d(const Variable& x, const Variable& gamma, const Variable& beta, BatchNormBuffers& buffers,
                      const BatchNormOptions& opt);

}  // namespace tl
