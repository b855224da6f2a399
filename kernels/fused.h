// Host launchers of the conv + batch-norm folding kernels (layers/fused.h has the op; cuDNN does the convolution).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// Folds an inference-mode batch norm into the preceding convolution, per output channel k:
//   s[k] = gamma[k] / sqrt(running_var[k] + eps)
//   w_out[k * inner + j] = w[k * inner + j] * s[k]     (k is the outermost dimension in NCHW and NHWC weights)
//   b_out[k] = beta[k] + ((bias ? bias[k] : 0) - running_mean[k]) * s[k]
// `out_dtype` is w_out's dtype (the convolution input's: float32, float64, bfloat16, float16). Everything else
// (w, bias, gamma, beta, running stats, b_out) has the parameter dtype: float64 when out_dtype is float64, else
// float32. Arithmetic in the parameter dtype.
void fold_conv_bn(const void* w, const void* bias, const void* gamma, const void* beta, const void* running_mean,
                  const void* running_var, double eps, void* w_out, void* b_out, DType out_dtype, int64_t k,
                  int64_t inner, cudaStream_t stream);
// In place on the (N, K, HW) convolution output y (NCHW or NHWC), y's dtype T, float accumulation:
//   y = act(y + b[k] + residual)   with b in the parameter dtype (float64 for float64 y, else float32),
//   residual (y's dtype and layout) optional (nullptr), act = ReLU when relu, else identity.
void bias_add_act(void* y, const void* b, const void* residual, bool relu, DType dtype, int64_t n, int64_t k,
                  int64_t hw, bool nhwc, cudaStream_t stream);
}  // namespace tl::kernels
