// Strided block copy kernel for concatenation (see kernels/concat.h).
#include "kernels/common.cuh"
#include "kernels/concat.h"

namespace tl::kernels {
namespace {
// I: the index type (kernels/index_math.h), 32-bit when rows * max(src_ld, dst_ld) fits.
template <typename T, typename I>
__global__ void strided_copy_kernel(const T* src, I src_ld, T* dst, I dst_ld, int64_t rows, I cols) {
  TL_KERNEL_LOOP_AS(I, i, rows * cols) {
    const I r = i / cols, j = i - r * cols;
    dst[r * dst_ld + j] = src[r * src_ld + j];
  }
}
template <typename T, typename I>
__global__ void strided_add_kernel(const T* src, I src_ld, T* dst, I dst_ld, int64_t rows, I cols) {
  TL_KERNEL_LOOP_AS(I, i, rows * cols) {
    const I r = i / cols, j = i - r * cols;
    dst[r * dst_ld + j] = from_acc<T>(load(dst, r * dst_ld + j) + load(src, r * src_ld + j));
  }
}
template <typename T>
void launch_strided(const T* s, int64_t src_ld, T* d, int64_t dst_ld, int64_t rows, int64_t cols, bool accumulate,
                    cudaStream_t stream) {
  const int64_t n = rows * cols;
  with_index_type({n, rows * src_ld, rows * dst_ld}, [&](auto index) {
    using I = decltype(index);
    if (accumulate)
      strided_add_kernel<T, I><<<grid_for(n), 256, 0, stream>>>(s, I(src_ld), d, I(dst_ld), rows, I(cols));
    else
      strided_copy_kernel<T, I><<<grid_for(n), 256, 0, stream>>>(s, I(src_ld), d, I(dst_ld), rows, I(cols));
  });
}
}  // namespace

void strided_copy(const void* src, int64_t src_ld, int64_t src_off, void* dst, int64_t dst_ld, int64_t dst_off,
                  int64_t rows, int64_t cols, DType dtype, bool accumulate, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  if (!accumulate && dtype == DType::I32) {  // a copy needs no arithmetic: int32 (labels) may be concatenated too
    launch_strided(static_cast<const int32_t*>(src) + src_off, src_ld, static_cast<int32_t*>(dst) + dst_off, dst_ld,
                   rows, cols, false, stream);
    TL_LAUNCH_CHECK();
    return;
  }
  TL_DISPATCH_ALL(dtype, "concat", {
    const scalar_t* s = static_cast<const scalar_t*>(src) + src_off;
    scalar_t* d = static_cast<scalar_t*>(dst) + dst_off;
    launch_strided(s, src_ld, d, dst_ld, rows, cols, accumulate, stream);
  });
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
