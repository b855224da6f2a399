// Host launchers of the batch-norm CUDA kernels (layers/batchnorm.h has the op). These cover what cuDNN's
// legacy BN does not: bfloat16 data, eval-mode backward, backward without dx, and whatever cuDNN refuses.
// The per-channel reductions (statistics, backward sums) are two-level: channel-tiled blocks read coalesced
// chunks of rows into per-(chunk, channel) partials in `scratch` (bn_reduce_scratch_bytes), then one thread per
// channel merges them in chunk order; values accumulate in float (double for float64), the merge runs in double.
// Parameter-like arrays (gamma, beta, mean, invstd, running stats, dgamma, dbeta, sums) are float, or double when
// the data is float64. x, y, dy and dx of one call share one layout.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {

struct BnDims {
  int64_t n, c, hw;  // hw = H * W
  bool nhwc;
};

// Bytes of device scratch that bn_batch_stats and bn_backward_reduce need for dims d (no other call may use it
// until they are queued).
size_t bn_reduce_scratch_bytes(DType dtype, BnDims d);
// save_mean/save_invstd of the batch; when running_mean != null also
// running = (1 - factor) * running + factor * stat (the variance unbiased: * m / (m - 1)).
void bn_batch_stats(const void* x, DType dtype, BnDims d, void* save_mean, void* save_invstd, void* running_mean,
                    void* running_var, double factor, double eps, void* scratch, cudaStream_t stream);
// y = (x - mean[c]) * inv[c] * gamma[c] + beta[c], inv = stat (stat_is_var == false) or 1/sqrt(stat + eps).
void bn_normalize(const void* x, void* y, DType dtype, BnDims d, const void* mean, const void* stat, bool stat_is_var,
                  double eps, const void* gamma, const void* beta, cudaStream_t stream);
// invstd[c] = 1 / sqrt(var[c] + eps); param_dtype F32 or F64.
void bn_invstd(const void* var, void* invstd, DType param_dtype, int64_t c, double eps, cudaStream_t stream);
// Per channel: sum_dy = sum(dy), sum_dy_xhat = sum(dy * (x - mean) * invstd) (0 when x == null).
// dgamma = sum_dy_xhat and dbeta = sum_dy (each may be null; assigned, or added when its accumulate flag is set);
// sums (may be null) receives [sum_dy (C values), sum_dy_xhat (C values)].
void bn_backward_reduce(const void* x, const void* dy, DType dtype, BnDims d, const void* mean, const void* invstd,
                        void* dgamma, bool dgamma_accumulate, void* dbeta, bool dbeta_accumulate, void* sums,
                        void* scratch, cudaStream_t stream);
// training: dx = gamma * invstd * (dy - sum_dy / m - xhat * sum_dy_xhat / m) with `sums` from bn_backward_reduce;
// eval: dx = dy * gamma * invstd (x, mean and sums unused). Assigned, or added when accumulate.
void bn_backward_dx(const void* x, const void* dy, void* dx, DType dtype, BnDims d, const void* mean,
                    const void* invstd, const void* gamma, const void* sums, bool training, bool accumulate,
                    cudaStream_t stream);

}  // namespace tl::kernels
