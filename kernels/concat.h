// Host launcher of the strided block copy behind concatenation (layers/concat.h has the op).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// For r < rows, j < cols: dst[r*dst_ld + dst_off + j] (+)= src[r*src_ld + src_off + j]  (+= when accumulate).
// Forward concat copies input k into its column block; backward copies the block back out.
void strided_copy(const void* src, int64_t src_ld, int64_t src_off, void* dst, int64_t dst_ld, int64_t dst_off,
                  int64_t rows, int64_t cols, DType dtype, bool accumulate, cudaStream_t stream);
}  // namespace tl::kernels
