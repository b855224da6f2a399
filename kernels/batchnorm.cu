// Batch-norm CUDA kernels: per-channel statistics, normalisation, and the backward reductions / dx
// (see kernels/batchnorm.h; the op is in layers/batchnorm.h).
//
// The per-channel reductions are two-level. Level 1: blocks of (channel tile x chunk of rows) read coalesced
// (NHWC: a warp reads 32 neighbouring channels of one row; NCHW: a block reads one channel's rows in memory
// order) and write one partial state per (chunk, channel) into scratch. Level 2: one thread per channel merges
// its chunks' partials in chunk order (in double), so results do not depend on scheduling. Statistics use
// Welford/Chan merging (no catastrophic cancellation for a mean large against the spread). Element-wise kernels
// use 32-bit index math where every index fits (kernels/index_math.h).
#include <algorithm>

#include "kernels/batchnorm.h"
#include "kernels/common.cuh"

namespace tl::kernels {
namespace {
constexpr int kTile = 32;         // channels per block (NHWC level 1): one warp reads 32 neighbouring channels
constexpr int kRows = 8;          // rows read at once per block (NHWC level 1)
constexpr int kThreads = 256;     // threads per block (NCHW level 1, element-wise kernels)
constexpr int64_t kNhwcChunkRows = 512;   // rows per chunk (NHWC): 64 per thread
constexpr int64_t kNchwChunkRows = 4096;  // rows per chunk (NCHW): 16 per thread
constexpr int64_t kMaxChunks = 256;

// The row chunks of a reduction over the m = n * hw rows of each channel.
struct Chunks {
  int64_t count, rows;  // number of chunks, rows per chunk (the last may hold fewer)
};
Chunks chunks_of(const BnDims& d) {
  const int64_t m = d.n * d.hw;
  int64_t count = (m + (d.nhwc ? kNhwcChunkRows : kNchwChunkRows) - 1) / (d.nhwc ? kNhwcChunkRows : kNchwChunkRows);
  count = std::min(std::max<int64_t>(count, 1), kMaxChunks);
  return {count, std::max<int64_t>((m + count - 1) / count, 1)};
}

// Welford state of a set of values: count, mean, sum of squared deviations from the mean.
template <typename A>
struct MeanM2 {
  A n, mean, m2;
  __device__ void add(A v) {
    n += A(1);
    const A d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  // Chan et al.'s merge of two disjoint sets.
  template <typename B>
  __device__ void merge(const MeanM2<B>& o) {
    if (o.n == B(0)) return;
    const A on = A(o.n), t = n + on, d = A(o.mean) - mean;
    mean += d * (on / t);
    m2 += A(o.m2) + d * d * (n * on / t);
    n = t;
  }
};
// Backward sums of a set: sum dy and sum dy * (x - mu).
template <typename A>
struct DySums {
  A dy, dyx;
  template <typename B>
  __device__ void merge(const DySums<B>& o) {
    dy += A(o.dy);
    dyx += A(o.dyx);
  }
};

// Per-channel readers for level 1: for_channel(c) gives the function that adds the element at offset o.
template <typename T>
struct StatsReader {
  using A = typename Acc<T>::type;
  using State = MeanM2<A>;
  const T* x;
  struct Channel {
    const T* x;
    template <typename I>
    __device__ void operator()(State& s, I o) const { s.add(load(x, o)); }
  };
  __device__ Channel for_channel(int64_t) const { return {x}; }
};
template <typename T>
struct GradReader {
  using A = typename Acc<T>::type;
  using State = DySums<A>;
  const T* x;  // null: dy sums only
  const T* dy;
  const A* mean;
  struct Channel {
    const T* x;
    const T* dy;
    A mu;
    template <typename I>
    __device__ void operator()(State& s, I o) const {
      const A g = load(dy, o);
      s.dy += g;
      if (x) s.dyx += g * (load(x, o) - mu);
    }
  };
  __device__ Channel for_channel(int64_t c) const { return {x, dy, x ? mean[c] : A(0)}; }
};

// Level 1, NHWC: block (kTile channels, kRows row lanes) over chunk blockIdx.y; rows of C values at r * C.
template <typename R, typename I>
__global__ void partial_nhwc_kernel(R reader, I rows, I C, I chunk_rows, typename R::State* partial) {
  using State = typename R::State;
  __shared__ State part[kRows][kTile];
  const I c = I(blockIdx.x) * kTile + I(threadIdx.x);
  const I r0 = I(blockIdx.y) * chunk_rows, r1 = min(rows, r0 + chunk_rows);
  State s{};
  if (c < C) {
    const auto read = reader.for_channel(c);
    for (I r = r0 + I(threadIdx.y); r < r1; r += kRows) read(s, r * C + c);
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    State t = part[0][threadIdx.x];
    for (int j = 1; j < kRows; ++j) t.merge(part[j][threadIdx.x]);
    partial[int64_t(blockIdx.y) * C + c] = t;
  }
}

// Level 1, NCHW: block of kThreads over channel blockIdx.x and chunk blockIdx.y; row j = (n, s) of channel c lies
// at (n * C + c) * hw + s.
template <typename R, typename I>
__global__ void partial_nchw_kernel(R reader, I rows, I C, I hw, I chunk_rows, typename R::State* partial) {
  using State = typename R::State;
  __shared__ State part[kThreads];
  const I c = I(blockIdx.x);
  const I r0 = I(blockIdx.y) * chunk_rows, r1 = min(rows, r0 + chunk_rows);
  const auto read = reader.for_channel(c);
  State s{};
  for (I j = r0 + I(threadIdx.x); j < r1; j += kThreads) {
    const I n = j / hw;
    read(s, (n * C + c) * hw + (j - n * hw));
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) part[threadIdx.x].merge(part[threadIdx.x + half]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[int64_t(blockIdx.y) * C + c] = part[0];
}

// Level 1 for either layout, into `partial` (chunks.count * C states).
template <typename R>
void launch_partials(const R& reader, const BnDims& d, const Chunks& ch, typename R::State* partial,
                     cudaStream_t stream) {
  const int64_t rows = d.n * d.hw;
  // Bounds: every element offset, and the loop counters, which step up to a block's width past the rows.
  with_index_type({d.n * d.c * d.hw, rows + kThreads, ch.count * ch.rows + kThreads}, [&](auto index) {
    using I = decltype(index);
    if (d.nhwc) {
      const dim3 grid(static_cast<unsigned>((d.c + kTile - 1) / kTile), static_cast<unsigned>(ch.count));
      partial_nhwc_kernel<R, I><<<grid, dim3(kTile, kRows), 0, stream>>>(reader, I(rows), I(d.c), I(ch.rows),
                                                                         partial);
    } else {
      const dim3 grid(static_cast<unsigned>(d.c), static_cast<unsigned>(ch.count));
      partial_nchw_kernel<R, I><<<grid, kThreads, 0, stream>>>(reader, I(rows), I(d.c), I(d.hw), I(ch.rows),
                                                               partial);
    }
  });
  TL_LAUNCH_CHECK();
}

__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / ::sqrt(v); }

// Level 2 of the statistics: one thread per channel merges its chunks in order.
template <typename A>
__global__ void stats_finish_kernel(const MeanM2<A>* partial, int64_t chunks, int64_t C, int64_t m, A* save_mean,
                                    A* save_invstd, A* running_mean, A* running_var, double factor, double eps) {
  TL_KERNEL_LOOP(c, C) {
    MeanM2<double> t{0, 0, 0};
    for (int64_t j = 0; j < chunks; ++j) t.merge(partial[j * C + c]);
    const double var = t.m2 / double(m);
    save_mean[c] = A(t.mean);
    save_invstd[c] = A(1.0 / ::sqrt(var + eps));
    if (running_mean) {
      running_mean[c] = A((1.0 - factor) * double(running_mean[c]) + factor * t.mean);
      running_var[c] = A((1.0 - factor) * double(running_var[c]) + factor * var * double(m) / double(m - 1));
    }
  }
}

// Level 2 of the backward sums.
template <typename A>
__global__ void grad_finish_kernel(const DySums<A>* partial, int64_t chunks, int64_t C, bool with_x,
                                   const A* invstd, A* dgamma, bool dgamma_accumulate, A* dbeta,
                                   bool dbeta_accumulate, A* sums) {
  TL_KERNEL_LOOP(c, C) {
    DySums<double> t{0, 0};
    for (int64_t j = 0; j < chunks; ++j) t.merge(partial[j * C + c]);
    const A s_dy = A(t.dy);
    const A s_dyxhat = with_x ? A(t.dyx * double(invstd[c])) : A(0);
    if (dgamma) dgamma[c] = dgamma_accumulate ? dgamma[c] + s_dyxhat : s_dyxhat;
    if (dbeta) dbeta[c] = dbeta_accumulate ? dbeta[c] + s_dy : s_dy;
    if (sums) {
      sums[c] = s_dy;
      sums[C + c] = s_dyxhat;
    }
  }
}

// Channel of the i-th element in memory order.
template <typename I>
__device__ __forceinline__ I channel_of(I i, bool nhwc, I C, I hw) {
  return nhwc ? i % C : (i / hw) % C;
}

template <typename T, typename I>
__global__ void bn_normalize_kernel(const T* x, T* y, int64_t total, bool nhwc, I C, I hw,
                                    const typename Acc<T>::type* mean, const typename Acc<T>::type* stat,
                                    bool stat_is_var, double eps, const typename Acc<T>::type* gamma,
                                    const typename Acc<T>::type* beta) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP_AS(I, i, total) {
    const I c = channel_of(i, nhwc, C, hw);
    const A inv = stat_is_var ? inv_sqrt(stat[c] + A(eps)) : stat[c];
    y[i] = from_acc<T>((load(x, i) - mean[c]) * inv * gamma[c] + beta[c]);
  }
}

template <typename P>
__global__ void bn_invstd_kernel(const P* var, P* invstd, int64_t c, double eps) {
  TL_KERNEL_LOOP(i, c) invstd[i] = inv_sqrt(var[i] + P(eps));
}

template <typename T, typename I>
__global__ void bn_backward_dx_kernel(const T* x, const T* dy, T* dx, int64_t total, bool nhwc, I C, I hw,
                                      typename Acc<T>::type inv_m, const typename Acc<T>::type* mean,
                                      const typename Acc<T>::type* invstd, const typename Acc<T>::type* gamma,
                                      const typename Acc<T>::type* sums, bool training, bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP_AS(I, i, total) {
    const I c = channel_of(i, nhwc, C, hw);
    const A inv = invstd[c], g = load(dy, i);
    A r;
    if (training) {
      const A xhat = (load(x, i) - mean[c]) * inv;
      r = gamma[c] * inv * (g - sums[c] * inv_m - xhat * sums[C + c] * inv_m);
    } else {
      r = g * gamma[c] * inv;
    }
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + r : r);
  }
}
}  // namespace

size_t bn_reduce_scratch_bytes(DType dtype, BnDims d) {
  const size_t state = 3 * (dtype == DType::F64 ? sizeof(double) : sizeof(float));
  return static_cast<size_t>(chunks_of(d).count * d.c) * state;
}

void bn_batch_stats(const void* x, DType dtype, BnDims d, void* save_mean, void* save_invstd, void* running_mean,
                    void* running_var, double factor, double eps, void* scratch, cudaStream_t stream) {
  if (d.c == 0) return;
  const Chunks ch = chunks_of(d);
  TL_DISPATCH_ALL(dtype, "bn_batch_stats", {
    using A = typename Acc<scalar_t>::type;
    auto* partial = static_cast<MeanM2<A>*>(scratch);
    launch_partials(StatsReader<scalar_t>{static_cast<const scalar_t*>(x)}, d, ch, partial, stream);
    stats_finish_kernel<A><<<grid_for(d.c), kThreads, 0, stream>>>(
        partial, ch.count, d.c, d.n * d.hw, static_cast<A*>(save_mean), static_cast<A*>(save_invstd),
        static_cast<A*>(running_mean), static_cast<A*>(running_var), factor, eps);
  });
  TL_LAUNCH_CHECK();
}

void bn_normalize(const void* x, void* y, DType dtype, BnDims d, const void* mean, const void* stat, bool stat_is_var,
                  double eps, const void* gamma, const void* beta, cudaStream_t stream) {
  const int64_t total = d.n * d.c * d.hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_normalize", with_index_type({total}, [&](auto index) {
                    using I = decltype(index);
                    using A = typename Acc<scalar_t>::type;
                    bn_normalize_kernel<scalar_t, I><<<grid_for(total), kThreads, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), total, d.nhwc, I(d.c), I(d.hw),
                        static_cast<const A*>(mean), static_cast<const A*>(stat), stat_is_var, eps,
                        static_cast<const A*>(gamma), static_cast<const A*>(beta));
                  }));
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
                        void* scratch, cudaStream_t stream) {
  if (d.c == 0) return;
  const Chunks ch = chunks_of(d);
  TL_DISPATCH_ALL(dtype, "bn_backward_reduce", {
    using A = typename Acc<scalar_t>::type;
    auto* partial = static_cast<DySums<A>*>(scratch);
    const GradReader<scalar_t> reader{static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(dy),
                                      static_cast<const A*>(mean)};
    launch_partials(reader, d, ch, partial, stream);
    grad_finish_kernel<A><<<grid_for(d.c), kThreads, 0, stream>>>(
        partial, ch.count, d.c, x != nullptr, static_cast<const A*>(invstd), static_cast<A*>(dgamma),
        dgamma_accumulate, static_cast<A*>(dbeta), dbeta_accumulate, static_cast<A*>(sums));
  });
  TL_LAUNCH_CHECK();
}

void bn_backward_dx(const void* x, const void* dy, void* dx, DType dtype, BnDims d, const void* mean,
                    const void* invstd, const void* gamma, const void* sums, bool training, bool accumulate,
                    cudaStream_t stream) {
  const int64_t total = d.n * d.c * d.hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "bn_backward_dx", with_index_type({total}, [&](auto index) {
                    using I = decltype(index);
                    using A = typename Acc<scalar_t>::type;
                    bn_backward_dx_kernel<scalar_t, I><<<grid_for(total), kThreads, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx),
                        total, d.nhwc, I(d.c), I(d.hw), A(1) / A(d.n * d.hw), static_cast<const A*>(mean),
                        static_cast<const A*>(invstd), static_cast<const A*>(gamma), static_cast<const A*>(sums),
                        training, accumulate);
                  }));
  TL_LAUNCH_CHECK();
}

}  // namespace tl::kernels
