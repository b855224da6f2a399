// CUDA kernels of the losses: row-wise log-softmax, NLL and fused softmax cross-entropy, forward and backward.
// The mean's denominator is reduced on the device by a single-block kernel, so no host synchronisation.
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/loss.h"

namespace tl::kernels {
namespace {
__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }
template <typename A> __device__ __forceinline__ A dev_nan();
template <> __device__ __forceinline__ float dev_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double dev_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }
template <typename A> __device__ __forceinline__ A dev_neg_inf();
template <> __device__ __forceinline__ float dev_neg_inf<float>() { return -INFINITY; }
template <> __device__ __forceinline__ double dev_neg_inf<double>() { return -static_cast<double>(INFINITY); }

struct SumOp {
  template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
};
struct MaxOp {
  template <typename A> __device__ A operator()(A a, A b) const { return a > b ? a : b; }
};

// Reduces `v` over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// Every thread of the block must call it. `smem` holds 32 values.
template <typename A, typename Op>
__device__ A block_reduce(A v, Op op, A identity, A* smem) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = static_cast<int>(blockDim.x >> 5);
    v = lane < nwarps ? smem[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

int row_threads(int64_t C) { return C <= 128 ? 64 : (C <= 1024 ? 128 : 256); }

// lse of row `row`, computed by the whole block (max-subtracted).
template <typename T, typename A>
__device__ A row_logsumexp(const T* xr, int64_t C, A* smem) {
  A m = dev_neg_inf<A>();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) m = MaxOp()(m, load(xr, c));
  m = block_reduce(m, MaxOp(), dev_neg_inf<A>(), smem);
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += dev_exp(load(xr, c) - m);
  s = block_reduce(s, SumOp(), A(0), smem);
  return m + dev_log(s);
}

template <typename T>
__global__ void log_softmax_forward_kernel(const T* x, T* y, int64_t C) {
  using A = typename Acc<T>::type;
  __shared__ A smem[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * C;
  const A lse = row_logsumexp<T, A>(x + base, C, smem);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[base + c] = from_acc<T>(load(x, base + c) - lse);
}

template <typename T>
__global__ void log_softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t C, bool accumulate) {
  using A = typename Acc<T>::type;
  __shared__ A smem[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * C;
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += load(dy, base + c);
  s = block_reduce(s, SumOp(), A(0), smem);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t i = base + c;
    const A g = load(dy, i) - dev_exp(load(y, i)) * s;
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + g : g);
  }
}

// stats[1] = sum_c w_c (C when there are no weights), by the calling block.
template <typename A>
__device__ A weight_sum(const A* w, int64_t C, A* smem) {
  if (!w) return static_cast<A>(C);
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += w[c];
  return block_reduce(s, SumOp(), A(0), smem);
}

template <typename T>
__global__ void nll_forward_kernel(const T* logp, const int32_t* target, const typename Acc<T>::type* w,
                                   typename Acc<T>::type* loss, typename Acc<T>::type* stats, int64_t N, int64_t C,
                                   int ignore_index) {
  using A = typename Acc<T>::type;
  __shared__ A smem[32];
  A num = 0, den = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const int t = target[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= C) {
      num += dev_nan<A>();
      den += dev_nan<A>();
      continue;
    }
    const A wt = w ? w[t] : A(1);
    num -= wt * load(logp, i * C + t);
    den += wt;
  }
  num = block_reduce(num, SumOp(), A(0), smem);
  den = block_reduce(den, SumOp(), A(0), smem);
  const A wsum = weight_sum(w, C, smem);
  if (threadIdx.x == 0) {
    loss[0] = num / den;  // 0/0 = NaN when every target is ignored, as in PyTorch
    stats[0] = den;
    stats[1] = wsum;
  }
}

// I: the index type (kernels/index_math.h): decoding idx into (row, class) divides by C per element, several
// times cheaper in 32 bits, which the launcher picks whenever N * C fits.
template <typename T, typename I>
__global__ void nll_backward_kernel(const typename Acc<T>::type* dloss, const int32_t* target,
                                    const typename Acc<T>::type* w, const typename Acc<T>::type* stats, T* dlogp,
                                    int64_t n, I C, int ignore_index, bool accumulate) {
  using A = typename Acc<T>::type;
  const A scale = dloss[0] / stats[0];
  TL_KERNEL_LOOP_AS(I, idx, n) {
    const I i = idx / C, c = idx - i * C;
    const int t = target[i];
    A g = 0;
    if (t != ignore_index) {
      if (t < 0 || t >= C) g = dev_nan<A>();
      else if (c == t) g = -(w ? w[t] : A(1)) * scale;
    }
    dlogp[idx] = from_acc<T>(accumulate ? load(dlogp, idx) + g : g);
  }
}

// Per row: lse, and the row's numerator and denominator of the mean:
//   row_loss = -(1-e) w_t (x_t - lse) - e/C sum_c w_c (x_c - lse),  row_w = w_t  (both 0 when ignored).
template <typename T>
__global__ void cross_entropy_rows_kernel(const T* x, const int32_t* target, const typename Acc<T>::type* w,
                                          typename Acc<T>::type* lse_out, typename Acc<T>::type* row_loss,
                                          typename Acc<T>::type* row_w, int64_t C, int ignore_index,
                                          double smoothing) {
  using A = typename Acc<T>::type;
  __shared__ A smem[32];
  const int64_t row = blockIdx.x, base = row * C;
  const A lse = row_logsumexp<T, A>(x + base, C, smem);
  const int t = target[row];
  const A e = static_cast<A>(smoothing);
  A smooth = 0;
  if (e != A(0) && t != ignore_index) {  // uniform over the block: every thread takes the same branch
    A s = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (w ? w[c] : A(1)) * (load(x, base + c) - lse);
    smooth = block_reduce(s, SumOp(), A(0), smem);
  }
  if (threadIdx.x == 0) {
    lse_out[row] = lse;
    if (t == ignore_index) {
      row_loss[row] = 0;
      row_w[row] = 0;
    } else if (t < 0 || t >= C) {
      row_loss[row] = dev_nan<A>();
      row_w[row] = dev_nan<A>();
    } else {
      const A wt = w ? w[t] : A(1);
      row_loss[row] = -(A(1) - e) * wt * (load(x, base + t) - lse) - e / static_cast<A>(C) * smooth;
      row_w[row] = wt;
    }
  }
}

// Single block: loss = sum(row_loss) / sum(row_w); stats = [sum(row_w), sum_c w_c].
template <typename A>
__global__ void mean_finalize_kernel(const A* row_loss, const A* row_w, const A* w, A* loss, A* stats, int64_t N,
                                     int64_t C) {
  __shared__ A smem[32];
  A num = 0, den = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    num += row_loss[i];
    den += row_w[i];
  }
  num = block_reduce(num, SumOp(), A(0), smem);
  den = block_reduce(den, SumOp(), A(0), smem);
  const A wsum = weight_sum(w, C, smem);
  if (threadIdx.x == 0) {
    loss[0] = num / den;
    stats[0] = den;
    stats[1] = wsum;
  }
}

// I: the index type, as for nll_backward_kernel.
template <typename T, typename I>
__global__ void cross_entropy_backward_kernel(const typename Acc<T>::type* dloss, const T* x, const int32_t* target,
                                              const typename Acc<T>::type* w, const typename Acc<T>::type* lse,
                                              const typename Acc<T>::type* stats, T* dx, int64_t n, I C,
                                              int ignore_index, double smoothing, bool accumulate) {
  using A = typename Acc<T>::type;
  const A scale = dloss[0] / stats[0], wsum = stats[1];
  const A e = static_cast<A>(smoothing), e_c = e / static_cast<A>(C);
  TL_KERNEL_LOOP_AS(I, idx, n) {
    const I i = idx / C, c = idx - i * C;
    const int t = target[i];
    A g = 0;
    if (t != ignore_index) {
      if (t < 0 || t >= C) {
        g = dev_nan<A>();
      } else {
        const A wt = w ? w[t] : A(1), wc = w ? w[c] : A(1);
        const A p = dev_exp(load(x, idx) - lse[i]);
        A q = e_c * wc;  // the target distribution, weighted
        if (c == t) q += (A(1) - e) * wt;
        g = scale * (p * ((A(1) - e) * wt + e_c * wsum) - q);
      }
    }
    dx[idx] = from_acc<T>(accumulate ? load(dx, idx) + g : g);
  }
}
}  // namespace

void log_softmax_forward(const void* x, void* y, DType dtype, int64_t N, int64_t C, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  TL_DISPATCH_ALL(dtype, "log_softmax_forward",
                  log_softmax_forward_kernel<scalar_t><<<static_cast<unsigned>(N), row_threads(C), 0, stream>>>(
                      static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), C));
  TL_LAUNCH_CHECK();
}

void log_softmax_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t N, int64_t C,
                          bool accumulate, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  TL_DISPATCH_ALL(dtype, "log_softmax_backward",
                  log_softmax_backward_kernel<scalar_t><<<static_cast<unsigned>(N), row_threads(C), 0, stream>>>(
                      static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx),
                      C, accumulate));
  TL_LAUNCH_CHECK();
}

void nll_forward(const void* logp, const int32_t* target, const void* weights, void* loss, void* stats, DType dtype,
                 int64_t N, int64_t C, int ignore_index, cudaStream_t stream) {
  TL_DISPATCH_ALL(dtype, "nll_forward", {
    using A = typename Acc<scalar_t>::type;
    nll_forward_kernel<scalar_t><<<1, 512, 0, stream>>>(static_cast<const scalar_t*>(logp), target,
                                                        static_cast<const A*>(weights), static_cast<A*>(loss),
                                                        static_cast<A*>(stats), N, C, ignore_index);
  });
  TL_LAUNCH_CHECK();
}

void nll_backward(const void* dloss, const int32_t* target, const void* weights, const void* stats, void* dlogp,
                  DType dtype, int64_t N, int64_t C, int ignore_index, bool accumulate, cudaStream_t stream) {
  const int64_t n = N * C;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "nll_backward", with_index_type({n}, [&](auto index) {
    using I = decltype(index);
    using A = typename Acc<scalar_t>::type;
    nll_backward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
        static_cast<const A*>(dloss), target, static_cast<const A*>(weights), static_cast<const A*>(stats),
        static_cast<scalar_t*>(dlogp), n, static_cast<I>(C), ignore_index, accumulate);
  }));
  TL_LAUNCH_CHECK();
}

void cross_entropy_forward(const void* logits, const int32_t* target, const void* weights, void* lse, void* scratch,
                           void* loss, void* stats, DType dtype, int64_t N, int64_t C, int ignore_index,
                           double smoothing, cudaStream_t stream) {
  TL_DISPATCH_ALL(dtype, "cross_entropy_forward", {
    using A = typename Acc<scalar_t>::type;
    A* row_loss = static_cast<A*>(scratch);
    A* row_w = row_loss + N;
    if (N > 0) {
      cross_entropy_rows_kernel<scalar_t><<<static_cast<unsigned>(N), row_threads(C), 0, stream>>>(
          static_cast<const scalar_t*>(logits), target, static_cast<const A*>(weights), static_cast<A*>(lse),
          row_loss, row_w, C, ignore_index, smoothing);
      TL_LAUNCH_CHECK();
    }
    mean_finalize_kernel<A><<<1, 512, 0, stream>>>(row_loss, row_w, static_cast<const A*>(weights),
                                                   static_cast<A*>(loss), static_cast<A*>(stats), N, C);
  });
  TL_LAUNCH_CHECK();
}

void cross_entropy_backward(const void* dloss, const void* logits, const int32_t* target, const void* weights,
                            const void* lse, const void* stats, void* dlogits, DType dtype, int64_t N, int64_t C,
                            int ignore_index, double smoothing, bool accumulate, cudaStream_t stream) {
  const int64_t n = N * C;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "cross_entropy_backward", with_index_type({n}, [&](auto index) {
    using I = decltype(index);
    using A = typename Acc<scalar_t>::type;
    cross_entropy_backward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
        static_cast<const A*>(dloss), static_cast<const scalar_t*>(logits), target, static_cast<const A*>(weights),
        static_cast<const A*>(lse), static_cast<const A*>(stats), static_cast<scalar_t*>(dlogits), n,
        static_cast<I>(C), ignore_index, smoothing, accumulate);
  }));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
