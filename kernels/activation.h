// Host launchers of the ReLU and ReLU6 kernels (layers/activation.h has the op).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
void relu_forward(const void* x, void* y, DType dtype, int64_t n, cudaStream_t stream);
// dx = dy * (y > 0), or dx += ... when accumulate
void relu_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate,
                   cudaStream_t stream);
void relu6_forward(const void* x, void* y, DType dtype, int64_t n, cudaStream_t stream);
// dx = dy * (0 < y < 6), or dx += ... when accumulate
void relu6_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate,
                    cudaStream_t stream);
}  // namespace tl::kernels
