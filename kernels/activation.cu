// ReLU and ReLU6 forward/backward CUDA kernels (the op is in layers/activation.h).
#include "kernels/activation.h"
#include "kernels/common.cuh"

namespace tl::kernels {
namespace {
template <typename T>
__global__ void relu_forward_kernel(const T* x, T* y, int64_t n) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    A v = load(x, i);
    y[i] = from_acc<T>(v > A(0) ? v : A(0));
  }
}
template <typename T>
__global__ void relu_backward_kernel(const T* y, const T* dy, T* dx, int64_t n, bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    A g = load(y, i) > A(0) ? load(dy, i) : A(0);
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + g : g);
  }
}
template <typename T>
__global__ void relu6_forward_kernel(const T* x, T* y, int64_t n) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    A v = load(x, i);
    y[i] = from_acc<T>(v > A(0) ? (v < A(6) ? v : A(6)) : A(0));
  }
}
template <typename T>
__global__ void relu6_backward_kernel(const T* y, const T* dy, T* dx, int64_t n, bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(i, n) {
    const A v = load(y, i);
    A g = v > A(0) && v < A(6) ? load(dy, i) : A(0);
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + g : g);
  }
}
}  // namespace

void relu_forward(const void* x, void* y, DType dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu_forward", relu_forward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                             static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n));
  TL_LAUNCH_CHECK();
}

void relu_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate,
                   cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu_backward", relu_backward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                              static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(dy),
                                              static_cast<scalar_t*>(dx), n, accumulate));
  TL_LAUNCH_CHECK();
}

void relu6_forward(const void* x, void* y, DType dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu6_forward", relu6_forward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                              static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n));
  TL_LAUNCH_CHECK();
}

void relu6_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate,
                    cudaStream_t stream) {
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "relu6_backward", relu6_backward_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                               static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(dy),
                                               static_cast<scalar_t*>(dx), n, accumulate));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
