// The scalar coefficients of the SGD and Adam/AdamW updates and the kernel tables' element types, shared by the
// CPU reference (train/optimizer.cpp) and the CUDA kernels (kernels/optimizer.h); no CUDA header, so the CPU-only
// build (TL_WITH_CUDA == 0) uses it too. Computed in double exactly as torch.optim 1.13 computes its Python-float
// scalars; each is rounded to the parameter dtype where it meets a tensor, as in PyTorch. The host computes them
// once per launch and step into the per-step scalar table (train/step_scalars.h); the CPU loops read the table's
// entry and the kernels the same bytes in device memory, so both use identical doubles.
#pragma once
#include <cmath>
#include <cstdint>

namespace tl::kernels {

constexpr int64_t kOptimChunk = 8192;  // elements per thread block

struct OptimTensor {
  void* param;
  void* state0;  // SGD: momentum buffer; Adam: exp_avg
  void* state1;  // Adam: exp_avg_sq
  void* state2;  // Adam with amsgrad: max_exp_avg_sq
  int64_t numel;
};
struct OptimChunk {
  int32_t tensor;  // index into the tensor table
  int32_t chunk;   // elements [chunk * kOptimChunk, min(numel, (chunk + 1) * kOptimChunk))
};

// SGD, per element (torch.optim.sgd._single_tensor_sgd):
//   d = g; if weight_decay != 0: d = d + weight_decay * p
//   if momentum != 0: buf = first ? d : buf * momentum + one_minus_dampening * d
//                     d = nesterov ? d + momentum * buf : buf
//   p = p + neg_lr * d
struct SgdCoefficients {
  double neg_lr, weight_decay, momentum, one_minus_dampening;
  bool nesterov;
  bool first;  // the momentum buffer does not exist yet: it is initialised to d (PyTorch's clone)
};
inline SgdCoefficients sgd_coefficients(double lr, double weight_decay, double momentum, double dampening,
                                        bool nesterov, bool first) {
  return {-lr, weight_decay, momentum, 1.0 - dampening, nesterov, first};
}

// Adam / AdamW, per element (torch.optim.adam/adamw._single_tensor_adam[w], capturable=False):
//   AdamW: p = p * decay_factor                       (decay_factor = 1 - lr * weight_decay)
//   Adam:  if l2 != 0: g = g + l2 * p                  (l2 = weight_decay)
//   m = m * beta1 + one_minus_beta1 * g
//   v = v * beta2 + one_minus_beta2 * g * g
//   amsgrad: vmax = max(vmax, v), den = vmax; else den = v
//   den = sqrt(den) / bias_correction2_sqrt + eps
//   p = p + neg_step_size * m / den                    (step_size = lr / (1 - beta1^step))
struct AdamCoefficients {
  double l2, decay_factor, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
  bool decoupled, amsgrad;
};
// `step` is the parameter's step count after this update's increment (1 on the first update).
inline AdamCoefficients adam_coefficients(double lr, double weight_decay, double beta1, double beta2, double eps,
                                          int64_t step, bool decoupled, bool amsgrad) {
  AdamCoefficients c{};
  c.decoupled = decoupled;
  c.amsgrad = amsgrad;
  c.l2 = decoupled ? 0.0 : weight_decay;
  c.decay_factor = decoupled ? 1.0 - lr * weight_decay : 1.0;
  c.beta1 = beta1;
  c.one_minus_beta1 = 1.0 - beta1;
  c.beta2 = beta2;
  c.one_minus_beta2 = 1.0 - beta2;
  const double s = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1, s);
  const double bias_correction2 = 1.0 - std::pow(beta2, s);
  c.neg_step_size = -(lr / bias_correction1);
  c.bias_correction2_sqrt = std::sqrt(bias_correction2);
  c.eps = eps;
  return c;
}

}  // namespace tl::kernels
