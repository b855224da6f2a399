// Host launchers of the loss kernels: log-softmax, NLL and fused softmax cross-entropy (layers/loss.h has the
// ops and the formulas). Row kernels use one block per row of a row-major (N, C) matrix. `dtype` is the
// logits/log-probability dtype; the accumulation type A is double for float64 and float otherwise, and
// `weights` (C, or null for all ones), `lse` (N), `stats` (2: [denominator, sum of class weights]), `loss` (1)
// and `dloss` (1) are arrays of A. Targets are int32. Everything runs on `stream`; reductions are
// deterministic (no atomics) and nothing synchronises the host.
//
// Targets are not validated against C on the device (that would need a host sync): a target outside [0, C)
// that is not ignore_index makes the loss and its row of the gradient NaN, without reading out of bounds.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// y = x - logsumexp(x) per row.
void log_softmax_forward(const void* x, void* y, DType dtype, int64_t N, int64_t C, cudaStream_t stream);
// dx = dy - exp(y) * sum_c dy (or dx += ... when accumulate).
void log_softmax_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t N, int64_t C,
                          bool accumulate, cudaStream_t stream);
// loss = sum_i -w[t_i] logp[i, t_i] / sum_i w[t_i] over rows with t_i != ignore_index.
void nll_forward(const void* logp, const int32_t* target, const void* weights, void* loss, void* stats, DType dtype,
                 int64_t N, int64_t C, int ignore_index, cudaStream_t stream);
// dlogp[i, t_i] = -w[t_i] * dloss / stats[0], zero elsewhere (or added when accumulate).
void nll_backward(const void* dloss, const int32_t* target, const void* weights, const void* stats, void* dlogp,
                  DType dtype, int64_t N, int64_t C, int ignore_index, bool accumulate, cudaStream_t stream);
// Fused log-softmax + label-smoothed, class-weighted NLL (PyTorch's formula, see layers/loss.h).
// Writes lse (N), loss (1), stats (2); `scratch` holds 2 * N values of A.
void cross_entropy_forward(const void* logits, const int32_t* target, const void* weights, void* lse, void* scratch,
                           void* loss, void* stats, DType dtype, int64_t N, int64_t C, int ignore_index,
                           double smoothing, cudaStream_t stream);
// dlogits = dloss / D * (softmax * ((1-e) w[t] + e/C sum(w)) - (1-e) w[t] onehot(t) - e/C w), zero for ignored rows.
void cross_entropy_backward(const void* dloss, const void* logits, const int32_t* target, const void* weights,
                            const void* lse, const void* stats, void* dlogits, DType dtype, int64_t N, int64_t C,
                            int ignore_index, double smoothing, bool accumulate, cudaStream_t stream);
}  // namespace tl::kernels
