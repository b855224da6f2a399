// Batch-norm CUDA kernels: per-channel statistics, normalisation, and the backward reductions / dx
// (see kernels/batchnorm.h; the op is in layers/batchnorm.h).
#include "kernels/batchnorm.h"
#include "kernels/common.cuh"

namespace tl::kernels {
namespace {
constexpr int kBlock = 256;

// Offset of the j-th of the m = N*H*W values of channel c (j = n * hw + s).
__device__ __forceinline__ int64_t channel_offset(const BnDims& d, int64_t c, int64_t j) {
  if (d.nhwc) return j * d.c + c;
  const int64_t n = j / d.hw, s = j - n * d.hw;
  return (n * d.c + c) * d.hw + s;
}
// Channel of the i-th element in memory order.
__device__ __forceinline__ int64_t channel_of(const BnDims& d, int64_t i) {
  return d.nhwc ? i % d.c : (i / d.hw) % d.c;
}

__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / ::sqrt(v); }

// Sum of `v` over the block (blockDim.x == kBlock); every thread gets the result.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A shm[kBlock];
  shm[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shm[threadIdx.x] += shm[threadIdx.x + s];
    __syncthreads();
  }
  A r = shm[0];
  __syncthreads();  // shm is reused by the next call
  return r;
}

template <typename T>
__global__ void bn_stats_kernel(const T* x, BnDims d, typename Acc<T>::type* save_mean,
                                typename Acc<T>::type* save_invstd, typename Acc<T>::type* running_mean,
                                typename Acc<T>::type* running_var, double factor, double eps) {
  using A = typename Acc<T>::type;
  const int64_t m = d.n * d.hw;
  for (int64_t c = blockIdx.x; c < d.c; c += gridDim.x) {
    A s = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) s += load(x, channel_offset(d, c, j));
    const A mean = block_sum(s) / A(m);
    A q = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const A v = load(x, channel_offset(d, c, j)) - mean;
      q += v * v;
    }
    const A var = block_sum(q) / A(m);
    if (threadIdx.x == 0) {
      save_mean[c] = mean;
      save_invstd[c] = inv_sqrt(var + A(eps));
      if (running_mean) {
        const A f = A(factor);
        running_mean[c] = (A(1) - f) * running_mean[c] + f * mean;
        running_var[c] = (A(1) - f) * running_var[c] + f * var * A(m) / A(m - 1);
      }
    }
  }
}

template <typename T>
__global__ void bn_normalize_kernel(const T* x, T* y, BnDims d, const typename Acc<T>::type* mean,
                                    const typename Acc<T>::type* stat, bool stat_is_var, double eps,
                                    const typename Acc<T>::type* gamma, const typename Acc<T>::type* beta) {
  using A = typename Acc<T>::type;
  const int64_t total = d.n * d.c * d.hw;
  TL_KERNEL_LOOP(i, total) {
    const int64_t c = channel_of(d, i);
    const A inv = stat_is_var ? inv_sqrt(stat[c] + A(eps)) : stat[c];
    y[i] = from_acc<T>((load(x, i) - mean[c]) * inv * gamma[c] + beta[c]);
  }
}

template <typename P>
__global__ void bn_invstd_kernel(const P* var, P* invstd, int64_t c, double eps) {
  TL_KERNEL_LOOP(i, c) invstd[i] = inv_sqrt(var[i] + P(eps));
}

template <typename T>
__global__ void bn_backward_reduce_kernel(const T* x, const T* dy, BnDims d, const typename Acc<T>::type* mean,
                                          const typename Acc<T>::type* invstd, typename Acc<T>::type* dgamma,
                                          bool dgamma_accumulate, typename Acc<T>::type* dbeta,
                                          bool dbeta_accumulate, typename Acc<T>::type* sums) {
  using A = typename Acc<T>::type;
  const int64_t m = d.n * d.hw;
  for (int64_t c = blockIdx.x; c < d.c; c += gridDim.x) {
    const A mu = x ? mean[c] : A(0);
    A s_dy = 0, s_dyx = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const int64_t o = channel_offset(d, c, j);
      const A g = load(dy, o);
      s_dy += g;
      if (x) s_dyx += g * (load(x, o) - mu);
    }
    s_dy = block_sum(s_dy);
    s_dyx = block_sum(s_dyx);
    if (threadIdx.x == 0) {
      const A s_dyxhat = x ? s_dyx * invstd[c] : A(0);
      if (dgamma) dgamma[c] = dgamma_accumulate ? dgamma[c] + s_dyxhat : s_dyxhat;
      if (dbeta) dbeta[c] = dbeta_accumulate ? dbeta[c] + s_dy : s_dy;
      if (sums) {
        sums[c] = s_dy;
        sums[d.c + c] = s_dyxhat;
      }
    }
  }
}

template <typename T>
__global__ void bn_backward_dx_kernel(const T* x, const T* dy, T* dx, BnDims d, const typename Acc<T>::type* mean,
                                      const typename Acc<T>::type* invstd, const typename Acc<T>::type* gamma,
                                      const typename Acc<T>::type* sums, bool training, bool accumulate) {
  using A = typename Acc<T>::type;
  const int64_t total = d.n * d.c * d.hw;
  const A inv_m = A(1) / A(d.n * d.hw);
  TL_KERNEL_LOOP(i, total) {
    const int64_t c = channel_of(d, i);
    const A inv = invstd[c], g = load(dy, i);
    A r;
    if (training) {
      const A xhat = (load(x, i) - mean[c]) * inv;
      r = gamma[c] * inv * (g - sums[c] * inv_m - xhat * sums[d.c + c] * inv_m);
    } else {
      r = g * gamma[c] * inv;
    }
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + r : r);
  }
}

unsigned channel_grid(int64_t c) { return static_cast<unsigned>(c < 65535 ? (c < 1 ? 1 : c) : 65535); }
}  // namespace

void bn_batch_stats(const void* x, DType dtype, BnDims d, void* save_mean, void* save_invstd, void* running_mean,
                    void* running_var, double factor, double eps, cudaStream_t stream) {
  if (d.c == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_batch_stats", {
    using A = typename Acc<scalar_t>::type;
    bn_stats_kernel<scalar_t><<<channel_grid(d.c), kBlock, 0, stream>>>(
        static_cast<const scalar_t*>(x), d, static_cast<A*>(save_mean), static_cast<A*>(save_invstd),
        static_cast<A*>(running_mean), static_cast<A*>(running_var), factor, eps);
  });
  TL_LAUNCH_CHECK();
}

void bn_normalize(const void* x, void* y, DType dtype, BnDims d, const void* mean, const void* stat, bool stat_is_var,
                  double eps, const void* gamma, const void* beta, cudaStream_t stream) {
  const int64_t total = d.n * d.c * d.hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_normalize", {
    using A = typename Acc<scalar_t>::type;
    bn_normalize_kernel<scalar_t><<<grid_for(total), 256, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), d, static_cast<const A*>(mean),
        static_cast<const A*>(stat), stat_is_var, eps, static_cast<const A*>(gamma), static_cast<const A*>(beta));
  });
  TL_LAUNCH_CHECK();
}

void bn_invstd(const void* var, void* invstd, DType param_dtype, int64_t c, double eps, cudaStream_t stream) {
  if (c == 0) return;
  if (param_dtype == DType::F64) {
    bn_invstd_kernel<double><<<grid_for(c), 256, 0, stream>>>(static_cast<const double*>(var),
                                                               static_cast<double*>(invstd), c, eps);
  } else if (param_dtype == DType::F32) {
    bn_invstd_kernel<float><<<grid_for(c), 256, 0, stream>>>(static_cast<const float*>(var),
                                                              static_cast<float*>(invstd), c, eps);
  } else {
    throw DTypeError("bn_invstd: parameter dtype must be float32 or float64");
  }
  TL_LAUNCH_CHECK();
}

void bn_backward_reduce(const void* x, const void* dy, DType dtype, BnDims d, const void* mean, const void* invstd,
                        void* dgamma, bool dgamma_accumulate, void* dbeta, bool dbeta_accumulate, void* sums,
                        cudaStream_t stream) {
  if (d.c == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_backward_reduce", {
    using A = typename Acc<scalar_t>::type;
    bn_backward_reduce_kernel<scalar_t><<<channel_grid(d.c), kBlock, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(dy), d, static_cast<const A*>(mean),
        static_cast<const A*>(invstd), static_cast<A*>(dgamma), dgamma_accumulate, static_cast<A*>(dbeta),
        dbeta_accumulate, static_cast<A*>(sums));
  });
  TL_LAUNCH_CHECK();
}

void bn_backward_dx(const void* x, const void* dy, void* dx, DType dtype, BnDims d, const void* mean,
                    const void* invstd, const void* gamma, const void* sums, bool training, bool accumulate,
                    cudaStream_t stream) {
  const int64_t total = d.n * d.c * d.hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_backward_dx", {
    using A = typename Acc<scalar_t>::type;
    bn_backward_dx_kernel<scalar_t><<<grid_for(total), 256, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx), d,
        static_cast<const A*>(mean), static_cast<const A*>(invstd), static_cast<const A*>(gamma),
        static_cast<const A*>(sums), training, accumulate);
  });
  TL_LAUNCH_CHECK();
}

}  // namespace tl::kernels
