// CUDA kernels behind Tensor's fill, cast, layout conversion and axpy (see tensor_kernels.h).
#include "kernels/common.cuh"
#include "kernels/tensor_kernels.h"

namespace tl::kernels {
namespace {
template <typename T>
__global__ void fill_kernel(T* dst, int64_t n, typename Acc<T>::type v) {
  T value = from_acc<T>(v);
  TL_KERNEL_LOOP(i, n) dst[i] = value;
}
template <typename S, typename D>
__global__ void cast_kernel(const S* src, D* dst, int64_t n) {
  TL_KERNEL_LOOP(i, n) dst[i] = from_acc<D>(static_cast<typename Acc<D>::type>(load(src, i)));
}
// Index i walks the destination; the source offset is computed from it. E is an unsigned type of the element's
// size (a layout change moves bytes), I the index type (kernels/index_math.h).
template <typename E, typename I>
__global__ void layout_kernel(const E* __restrict__ src, E* __restrict__ dst, I N, I C, I H, I W, bool to_nhwc) {
  const int64_t total = int64_t(N) * C * H * W;
  TL_KERNEL_LOOP_AS(I, i, total) {
    if (to_nhwc) {  // i indexes (n, h, w, c)
      const I c = i % C, p = i / C, w = p % W, q = p / W, h = q % H, n = q / H;
      dst[i] = src[((n * C + c) * H + h) * W + w];
    } else {  // i indexes (n, c, h, w)
      const I w = i % W, p = i / W, h = p % H, q = p / H, c = q % C, n = q / C;
      dst[i] = src[((n * H + h) * W + w) * C + c];
    }
  }
}
template <typename E>
void launch_layout(const void* src, void* dst, int64_t N, int64_t C, int64_t H, int64_t W, bool to_nhwc,
                   cudaStream_t stream) {
  const int64_t n = N * C * H * W;
  with_index_type({n}, [&](auto index) {
    using I = decltype(index);
    layout_kernel<E, I><<<grid_for(n), 256, 0, stream>>>(static_cast<const E*>(src), static_cast<E*>(dst), I(N),
                                                         I(C), I(H), I(W), to_nhwc);
  });
}
template <typename T>
__global__ void axpy_kernel(T* y, const T* x, int64_t n, typename Acc<T>::type alpha) {
  TL_KERNEL_LOOP(i, n) y[i] = from_acc<T>(load(y, i) + alpha * load(x, i));
}
}  // namespace

void fill(void* dst, DType dtype, int64_t n, double value, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL_AND_INT(dtype, "fill",
                          fill_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                              static_cast<scalar_t*>(dst), n, static_cast<typename Acc<scalar_t>::type>(value)));
  TL_LAUNCH_CHECK();
}

void cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL_AND_INT(src_dtype, "cast", {
    using S = scalar_t;
    TL_DISPATCH_ALL_AND_INT(dst_dtype, "cast", cast_kernel<S, scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                           static_cast<const S*>(src), static_cast<scalar_t*>(dst), n));
  });
  TL_LAUNCH_CHECK();
}

void convert_layout(const void* src, void* dst, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W, bool to_nhwc,
                    cudaStream_t stream) {
  if (N * C * H * W == 0) return;
  switch (dtype_size(dtype)) {
    case 2: launch_layout<uint16_t>(src, dst, N, C, H, W, to_nhwc, stream); break;
    case 4: launch_layout<uint32_t>(src, dst, N, C, H, W, to_nhwc, stream); break;
    case 8: launch_layout<uint64_t>(src, dst, N, C, H, W, to_nhwc, stream); break;
    default: throw DTypeError(detail::concat("convert_layout: unsupported dtype ", dtype_name(dtype)));
  }
  TL_LAUNCH_CHECK();
}

void axpy(void* y, const void* x, DType dtype, int64_t n, double alpha, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "axpy", axpy_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                     static_cast<scalar_t*>(y), static_cast<const scalar_t*>(x), n,
                                     static_cast<typename Acc<scalar_t>::type>(alpha)));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels

namespace tl::kernels {
namespace {
template <typename T>
__global__ void add_kernel(const T* a, const T* b, T* y, int64_t n, typename Acc<T>::type alpha) {
  TL_KERNEL_LOOP(i, n) y[i] = from_acc<T>(load(a, i) + alpha * load(b, i));
}
}  // namespace
void add(const void* a, const void* b, void* y, DType dtype, int64_t n, double alpha, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "add", add_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                    static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(b),
                                    static_cast<scalar_t*>(y), n, static_cast<typename Acc<scalar_t>::type>(alpha)));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
