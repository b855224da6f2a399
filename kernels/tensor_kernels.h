// Host launchers of the CUDA kernels behind Tensor's own methods (fill, dtype cast, layout change, axpy).
// All run on `stream` and never synchronise.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// dst[0:n] = value (every dtype, int32/int64 included; integers take value truncated, as on the host)
void fill(void* dst, DType dtype, int64_t n, double value, cudaStream_t stream);
// dst[i] = convert(src[i]) between any two dtypes, int32/int64 included (through double, as on the host)
void cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, cudaStream_t stream);
// (N,C,H,W) in NCHW order <-> NHWC order, same dtype (any). to_nhwc=false goes NHWC -> NCHW.
void convert_layout(const void* src, void* dst, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W, bool to_nhwc,
                    cudaStream_t stream);
// y[i] += alpha * x[i]
void axpy(void* y, const void* x, DType dtype, int64_t n, double alpha, cudaStream_t stream);
}  // namespace tl::kernels

namespace tl::kernels {
// y[i] = a[i] + alpha * b[i]
void add(const void* a, const void* b, void* y, DType dtype, int64_t n, double alpha, cudaStream_t stream);
}  // namespace tl::kernels
