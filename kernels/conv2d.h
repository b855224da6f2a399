// Host launchers of the convolution bias kernels (layers/conv2d.h has the op; cuDNN does the convolutions).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// y[n, k, h, w] += b[k] for a (N, K, HW) tensor y stored NCHW or NHWC (b has y's dtype).
void conv_bias_add(void* y, const void* b, DType dtype, int64_t n, int64_t k, int64_t hw, bool nhwc,
                   cudaStream_t stream);
// db[k] = sum over n and hw of dy[n, k, hw] (or db[k] += ... when accumulate), float accumulation.
// `scratch` holds conv_bias_grad_scratch_bytes(...) bytes (partial sums).
size_t conv_bias_grad_scratch_bytes(DType dtype, int64_t n, int64_t k, int64_t hw);
void conv_bias_grad(const void* dy, void* db, DType dtype, int64_t n, int64_t k, int64_t hw, bool nhwc,
                    bool accumulate, void* scratch, cudaStream_t stream);
}  // namespace tl::kernels
