// Host launchers of the ReLU kernels (layers/activation.h has the ops): one clamped ReLU serves ReLU (hi = 0: no
// upper bound) and ReLU6 (hi = 6).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// y = x > 0 ? (hi > 0 ? min(x, hi) : x) : 0
void clamped_relu_forward(const void* x, void* y, DType dtype, int64_t n, float hi, cudaStream_t stream);
// dx = dy * (y > 0 && (hi == 0 || y < hi)), or dx += ... when accumulate
void clamped_relu_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, float hi,
                           bool accumulate, cudaStream_t stream);
}  // namespace tl::kernels
