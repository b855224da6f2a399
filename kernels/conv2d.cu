// Convolution bias kernels: add the bias to the cuDNN output, and reduce dy to the bias gradient
// (two passes: partial sums over row chunks into scratch, then one sum per channel; no atomics).
#include "kernels/common.cuh"
#include "kernels/conv2d.h"

namespace tl::kernels {
namespace {
constexpr int kTile = 32;        // channels per block (NHWC partial sums)
constexpr int kRows = 8;         // rows per block step (NHWC partial sums)
constexpr int kThreads = 256;    // threads per block (NCHW partial sums)
constexpr int64_t kRowsPerChunk = 2048;
constexpr int64_t kMaxChunks = 256;

template <typename T, typename I>
__global__ void bias_add_kernel(T* y, const T* b, int64_t total, I k, I hw, bool nhwc) {
  TL_KERNEL_LOOP_AS(I, i, total) {
    const I c = nhwc ? i % k : (i / hw) % k;
    y[i] = from_acc<T>(load(y, i) + load(b, c));
  }
}

// partial[chunk * k + c] = sum of dy[row, c] over the rows of `chunk`; NHWC: dy[row * k + c].
template <typename T>
__global__ void bias_partial_nhwc_kernel(const T* dy, typename Acc<T>::type* partial, int64_t rows, int64_t k,
                                         int64_t chunk_rows) {
  using A = typename Acc<T>::type;
  __shared__ A sums[kRows][kTile + 1];
  const int64_t c = blockIdx.x * (int64_t)kTile + threadIdx.x;
  const int64_t r0 = blockIdx.y * chunk_rows;
  const int64_t r1 = min(rows, r0 + chunk_rows);
  A s = A(0);
  if (c < k)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRows) s += load(dy, r * k + c);
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < k) {
    A t = A(0);
    for (int j = 0; j < kRows; ++j) t += sums[j][threadIdx.x];
    partial[blockIdx.y * k + c] = t;
  }
}

// The same for NCHW: row j = (n, p) lives at dy[n * k * hw + c * hw + p]; one block per (channel, chunk).
template <typename T, typename I>
__global__ void bias_partial_nchw_kernel(const T* dy, typename Acc<T>::type* partial, I rows, I k, I hw,
                                         I chunk_rows) {
  using A = typename Acc<T>::type;
  __shared__ A sums[kThreads];
  const I c = blockIdx.x;
  const I r0 = blockIdx.y * chunk_rows;
  const I r1 = min(rows, r0 + chunk_rows);
  A s = A(0);
  for (I j = r0 + threadIdx.x; j < r1; j += kThreads) {
    const I n = j / hw;
    s += load(dy, (n * k + c) * hw + (j - n * hw));
  }
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.y * k + c] = sums[0];
}

template <typename T>
__global__ void bias_finish_kernel(const typename Acc<T>::type* partial, T* db, int64_t k, int64_t chunks,
                                   bool accumulate) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP(c, k) {
    A s = A(0);
    for (int64_t j = 0; j < chunks; ++j) s += partial[j * k + c];
    db[c] = from_acc<T>(accumulate ? load(db, c) + s : s);
  }
}

int64_t chunks_for(int64_t rows) {
  int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  return chunks < 1 ? 1 : chunks;
}
}  // namespace

void conv_bias_add(void* y, const void* b, DType dtype, int64_t n, int64_t k, int64_t hw, bool nhwc,
                   cudaStream_t stream) {
  const int64_t total = n * k * hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "conv_bias_add", with_index_type({total}, [&](auto index) {
                    using I = decltype(index);
                    bias_add_kernel<scalar_t, I><<<grid_for(total), 256, 0, stream>>>(
                        static_cast<scalar_t*>(y), static_cast<const scalar_t*>(b), total, I(k), I(hw), nhwc);
                  }));
  TL_LAUNCH_CHECK();
}

size_t conv_bias_grad_scratch_bytes(DType dtype, int64_t n, int64_t k, int64_t hw) {
  const size_t acc = dtype == DType::F64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(chunks_for(n * hw) * k) * acc;
}

void conv_bias_grad(const void* dy, void* db, DType dtype, int64_t n, int64_t k, int64_t hw, bool nhwc,
                    bool accumulate, void* scratch, cudaStream_t stream) {
  if (k == 0) return;
  const int64_t rows = n * hw;
  const int64_t chunks = chunks_for(rows);
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  TL_DISPATCH_ALL(dtype, "conv_bias_grad", {
    using A = typename Acc<scalar_t>::type;
    A* partial = static_cast<A*>(scratch);
    const scalar_t* g = static_cast<const scalar_t*>(dy);
    if (nhwc) {
      dim3 grid(static_cast<unsigned>((k + kTile - 1) / kTile), static_cast<unsigned>(chunks));
      bias_partial_nhwc_kernel<scalar_t><<<grid, dim3(kTile, kRows), 0, stream>>>(g, partial, rows, k, chunk_rows);
    } else {
      dim3 grid(static_cast<unsigned>(k), static_cast<unsigned>(chunks));
      // j + kThreads stays below rows + kThreads: that is the bound of the 32-bit choice.
      with_index_type({n * k * hw, rows + kThreads}, [&](auto index) {
        using I = decltype(index);
        bias_partial_nchw_kernel<scalar_t, I><<<grid, kThreads, 0, stream>>>(g, partial, I(rows), I(k), I(hw),
                                                                             I(chunk_rows));
      });
    }
    TL_LAUNCH_CHECK();
    bias_finish_kernel<scalar_t><<<grid_for(k), 256, 0, stream>>>(partial, static_cast<scalar_t*>(db), k, chunks,
                                                                  accumulate);
  });
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
