// Host launcher of the channel shuffle kernel (layers/shuffle.h has the op).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// dst[n, o, h, w] (+)= src[n, (o % groups) * (C / groups) + o / groups, h, w] for (N, C, H, W) tensors in NCHW or
// NHWC (nhwc), += when accumulate. The backward of a shuffle with g groups is this with C / g groups.
void channel_shuffle(const void* src, void* dst, DType dtype, int64_t n, int64_t c, int64_t plane, int64_t groups,
                     bool nhwc, bool accumulate, cudaStream_t stream);
}  // namespace tl::kernels
