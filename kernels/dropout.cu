// Dropout CUDA kernel: applies the counter-based mask of kernels/random_hash.h (see kernels/dropout.h).
#include "kernels/common.cuh"
#include "kernels/dropout.h"
#include "kernels/random_hash.h"

namespace tl::kernels {
namespace {
template <typename T, typename I>
__global__ void dropout_kernel(const T* src, T* dst, int64_t n, bool nhwc, I C, I H, I W, uint64_t seed,
                               uint64_t offset, uint64_t threshold, typename Acc<T>::type scale, bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP_AS(I, i, n) {
    I logical = i;
    if (nhwc) {  // memory order (n, h, w, c) -> logical (n, c, h, w)
      const I c = i % C, p = i / C, w = p % W, q = p / W, h = q % H, b = q / H;
      logical = ((b * C + c) * H + h) * W + w;
    }
    const A v = rng::keep_element(seed, offset, static_cast<uint64_t>(logical), threshold) ? load(src, i) * scale
                                                                                           : A(0);
    dst[i] = from_acc<T>(accumulate ? load(dst, i) + v : v);
  }
}
}  // namespace

void dropout_apply(const void* src, void* dst, DType dtype, int64_t n, bool nhwc, int64_t C, int64_t H, int64_t W,
                   uint64_t seed, uint64_t offset, uint64_t threshold, double scale, bool accumulate,
                   cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "dropout", with_index_type({n}, [&](auto index) {
                    using I = decltype(index);
                    dropout_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(src), static_cast<scalar_t*>(dst), n, nhwc, I(C), I(H), I(W),
                        seed, offset, threshold, static_cast<typename Acc<scalar_t>::type>(scale), accumulate);
                  }));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
