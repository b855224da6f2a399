// Channel shuffle kernel (see kernels/shuffle.h).
#include "kernels/common.cuh"
#include "kernels/shuffle.h"

namespace tl::kernels {
namespace {
// I: the index type (kernels/index_math.h), 32-bit when the element count fits.
template <typename T, typename I>
__global__ void channel_shuffle_kernel(const T* src, T* dst, int64_t total, I c, I plane, I groups, bool nhwc,
                                       bool accumulate) {
  const I per_group = c / groups;
  TL_KERNEL_LOOP_AS(I, i, total) {
    const I o = nhwc ? i % c : (i / plane) % c;
    const I from = (o % groups) * per_group + o / groups;
    const I j = i + (from - o) * (nhwc ? I(1) : plane);
    dst[i] = accumulate ? from_acc<T>(load(dst, i) + load(src, j)) : src[j];
  }
}
}  // namespace

void channel_shuffle(const void* src, void* dst, DType dtype, int64_t n, int64_t c, int64_t plane, int64_t groups,
                     bool nhwc, bool accumulate, cudaStream_t stream) {
  const int64_t total = n * c * plane;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "channel_shuffle", with_index_type({total}, [&](auto index) {
                    using I = decltype(index);
                    channel_shuffle_kernel<scalar_t, I><<<grid_for(total), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(src), static_cast<scalar_t*>(dst), total, I(c), I(plane),
                        I(groups), nhwc, accumulate);
                  }));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
