// Channel shuffle kernel (see kernels/shuffle.h).
#include "kernels/common.cuh"
#include "kernels/shuffle.h"

namespace tl::kernels {
namespace {
template <typename T>
__global__ void channel_shuffle_kernel(const T* src, T* dst, int64_t total, int64_t c, int64_t plane, int64_t groups,
                                       bool nhwc, bool accumulate) {
  const int64_t per_group = c / groups;
  TL_KERNEL_LOOP(i, total) {
    const int64_t o = nhwc ? i % c : (i / plane) % c;
    const int64_t from = (o % groups) * per_group + o / groups;
    const int64_t j = i + (from - o) * (nhwc ? 1 : plane);
    dst[i] = accumulate ? from_acc<T>(load(dst, i) + load(src, j)) : src[j];
  }
}
}  // namespace

void channel_shuffle(const void* src, void* dst, DType dtype, int64_t n, int64_t c, int64_t plane, int64_t groups,
                     bool nhwc, bool accumulate, cudaStream_t stream) {
  const int64_t total = n * c * plane;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "channel_shuffle",
                  channel_shuffle_kernel<scalar_t><<<grid_for(total), 256, 0, stream>>>(
                      static_cast<const scalar_t*>(src), static_cast<scalar_t*>(dst), total, c, plane, groups, nhwc,
                      accumulate));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
