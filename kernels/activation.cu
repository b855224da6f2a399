// Clamped ReLU forward/backward CUDA kernels: ReLU (hi = 0, no upper bound) and ReLU6 (hi = 6); the ops are in
// layers/activation.h.
#include "kernels/activation.h"
#include "kernels/common.cuh"

namespace tl::kernels {
namespace {
template <typename T>
__global__ void clamped_relu_forward_kernel(const T* x, T* y, int64_t n, float hi) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    const A v = load(x, i);
    y[i] = from_acc<T>(v > A(0) ? (hi > 0.f && v > A(hi) ? A(hi) : v) : A(0));
  }
}
template <typename T>
__global__ void clamped_relu_backward_kernel(const T* y, const T* dy, T* dx, int64_t n, float hi, bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    const A v = load(y, i);
    const A g = v > A(0) && (hi == 0.f || v < A(hi)) ? load(dy, i) : A(0);
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + g : g);
  }
}
}  // namespace

void clamped_relu_forward(const void* x, void* y, DType dtype, int64_t n, float hi, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu_forward", clamped_relu_forward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                             static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n, hi));
  TL_LAUNCH_CHECK();
}

void clamped_relu_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, float hi,
                           bool accumulate, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu_backward", clamped_relu_backward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                              static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(dy),
                                              static_cast<scalar_t*>(dx), n, hi, accumulate));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
