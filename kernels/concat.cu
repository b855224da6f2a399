// Strided block copy kernel for concatenation (see kernels/concat.h).
#include "kernels/common.cuh"
#include "kernels/concat.h"

namespace tl::kernels {
namespace {
template <typename T>
__global__ void strided_copy_kernel(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
                                    int64_t cols) {
  TL_KERNEL_LOOP(i, rows * cols) {
    const int64_t r = i / cols, j = i % cols;
    dst[r * dst_ld + j] = src[r * src_ld + j];
  }
}
template <typename T>
__global__ void strided_add_kernel(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
                                   int64_t cols) {
  TL_KERNEL_LOOP(i, rows * cols) {
    const int64_t r = i / cols, j = i % cols;
    dst[r * dst_ld + j] = from_acc<T>(load(dst, r * dst_ld + j) + load(src, r * src_ld + j));
  }
}
}  // namespace

void strided_copy(const void* src, int64_t src_ld, int64_t src_off, void* dst, int64_t dst_ld, int64_t dst_off,
                  int64_t rows, int64_t cols, DType dtype, bool accumulate, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  if (!accumulate && dtype == DType::I32) {  // a copy needs no arithmetic: int32 (labels) may be concatenated too
    strided_copy_kernel<int32_t><<<grid_for(n), 256, 0, stream>>>(static_cast<const int32_t*>(src) + src_off, src_ld,
                                                                   static_cast<int32_t*>(dst) + dst_off, dst_ld, rows,
                                                                   cols);
    TL_LAUNCH_CHECK();
    return;
  }
  TL_DISPATCH_ALL(dtype, "concat", {
    const scalar_t* s = static_cast<const scalar_t*>(src) + src_off;
    scalar_t* d = static_cast<scalar_t*>(dst) + dst_off;
    if (accumulate) strided_add_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(s, src_ld, d, dst_ld, rows, cols);
    else strided_copy_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(s, src_ld, d, dst_ld, rows, cols);
  });
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
