// Host launcher of the dropout kernel (layers/dropout.h has the op). The mask is kernels/random_hash.h's
// keep_element(seed, offset, logical index, threshold), identical to the CPU's.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// dst = src * mask * scale (or dst += ... when accumulate). n elements; for an NHWC 4-D tensor (nhwc) the mask
// index is the logical NCHW index, computed from (C, H, W), so the mask does not depend on the layout.
void dropout_apply(const void* src, void* dst, DType dtype, int64_t n, bool nhwc, int64_t C, int64_t H, int64_t W,
                   uint64_t seed, uint64_t offset, uint64_t threshold, double scale, bool accumulate,
                   cudaStream_t stream);
}  // namespace tl::kernels
