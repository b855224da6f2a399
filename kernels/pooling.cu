// tlengine's own pooling kernels: direct max/avg pooling (forward + gather backward) and adaptive average
// pooling (see kernels/pooling.h; the ops are in layers/pooling.h). float32 accumulation for bf16/f16.
// Kernels that decode memory positions are templated on the index type I (int32_t when every index and product
// fits, see kernels/index_math.h), so that the per-element division and modulo run in 32 bits where they can.
#include "kernels/common.cuh"
#include "kernels/pooling.h"

namespace tl::kernels {
namespace {

// PoolGeom in the kernel's index type.
template <typename I>
struct Geom {
  I N, C, H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw;
};
template <typename I>
Geom<I> geom_as(const PoolGeom& g) {
  return {I(g.N), I(g.C), I(g.H), I(g.W), I(g.OH), I(g.OW), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw};
}
// The largest index or product the direct pooling kernels form: the element counts of x and y, and the window
// arithmetic (oh * sh + kh, h * W + w).
int64_t pool_bound(const PoolGeom& g) {
  const int64_t x = g.N * g.C * g.H * g.W, y = g.N * g.C * g.OH * g.OW;
  const int64_t win = (g.OH + 1) * g.sh + g.kh + (g.OW + 1) * g.sw + g.kw + (g.H + 1) * (g.W + 1);
  return std::max(std::max(x, y), win);
}

// Memory offset of logical element (n, c, h, w) of a dense (N, C, H, W) tensor.
template <typename I>
__device__ __forceinline__ I off4(bool nhwc, I n, I c, I h, I w, I C, I H, I W) {
  return nhwc ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
}
// Inverse: the logical coordinates of memory position i (threads walk memory order, so accesses coalesce).
template <typename I>
__device__ __forceinline__ void decode4(I i, bool nhwc, I C, I H, I W, I& n, I& c, I& h, I& w) {
  if (nhwc) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

// First (row-major) position h*W + w of the maximum of window (oh, ow); NaN counts as the maximum.
template <typename T, typename I>
__device__ __forceinline__ I window_argmax(const T* x, const Geom<I>& g, bool nhwc, I n, I c, I oh, I ow) {
  using A = typename Acc<T>::type;
  I hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  const I he = min(hs + I(g.kh), g.H), we = min(ws + I(g.kw), g.W);
  hs = max(hs, I(0));
  ws = max(ws, I(0));
  A best = A(-INFINITY);
  I arg = hs * g.W + ws;
  for (I h = hs; h < he; ++h)
    for (I w = ws; w < we; ++w) {
      const A v = load(x, off4(nhwc, n, c, h, w, g.C, g.H, g.W));
      if (v > best || v != v) {
        best = v;
        arg = h * g.W + w;
      }
    }
  return arg;
}

// PyTorch's average-pool divisor of window (oh, ow).
template <typename I>
__device__ __forceinline__ I avg_divisor(const Geom<I>& g, I oh, I ow, bool count_include_pad) {
  I hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  I he = min(hs + I(g.kh), g.H + I(g.ph)), we = min(ws + I(g.kw), g.W + I(g.pw));
  if (count_include_pad) return (he - hs) * (we - ws);
  hs = max(hs, I(0));
  ws = max(ws, I(0));
  he = min(he, g.H);
  we = min(we, g.W);
  return (he - hs) * (we - ws);
}

// The output windows that contain input row h: [*lo, *hi).
template <typename I>
__device__ __forceinline__ void covering(I h, int k, int s, int p, I out, I* lo, I* hi) {
  const I hp = h + p;
  *lo = hp < k ? I(0) : (hp - k) / s + 1;
  *hi = min(hp / s + 1, out);
}

template <typename T, typename I>
__global__ void max_forward_kernel(const T* x, T* y, Geom<I> g, bool nhwc) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(g.N) * g.C * g.OH * g.OW;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, oh, ow;
    decode4(i, nhwc, g.C, g.OH, g.OW, n, c, oh, ow);
    const I a = window_argmax(x, g, nhwc, n, c, oh, ow);
    const A v = load(x, off4(nhwc, n, c, a / g.W, a % g.W, g.C, g.H, g.W));
    y[i] = from_acc<T>(v);
  }
}

template <typename T, typename I>
__global__ void max_backward_kernel(const T* x, const T* dy, T* dx, Geom<I> g, bool nhwc, bool accumulate) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(g.N) * g.C * g.H * g.W;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, h, w;
    decode4(i, nhwc, g.C, g.H, g.W, n, c, h, w);
    I oh0, oh1, ow0, ow1;
    covering(h, g.kh, g.sh, g.ph, g.OH, &oh0, &oh1);
    covering(w, g.kw, g.sw, g.pw, g.OW, &ow0, &ow1);
    A acc = A(0);
    for (I oh = oh0; oh < oh1; ++oh)
      for (I ow = ow0; ow < ow1; ++ow)
        if (window_argmax(x, g, nhwc, n, c, oh, ow) == h * g.W + w)
          acc += load(dy, off4(nhwc, n, c, oh, ow, g.C, g.OH, g.OW));
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + acc : acc);
  }
}

template <typename T, typename I>
__global__ void avg_forward_kernel(const T* x, T* y, Geom<I> g, bool count_include_pad, bool nhwc) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(g.N) * g.C * g.OH * g.OW;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, oh, ow;
    decode4(i, nhwc, g.C, g.OH, g.OW, n, c, oh, ow);
    I hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    const I he = min(hs + I(g.kh), g.H), we = min(ws + I(g.kw), g.W);
    hs = max(hs, I(0));
    ws = max(ws, I(0));
    A sum = A(0);
    for (I h = hs; h < he; ++h)
      for (I w = ws; w < we; ++w) sum += load(x, off4(nhwc, n, c, h, w, g.C, g.H, g.W));
    y[i] = from_acc<T>(sum / A(avg_divisor(g, oh, ow, count_include_pad)));
  }
}

template <typename T, typename I>
__global__ void avg_backward_kernel(const T* dy, T* dx, Geom<I> g, bool count_include_pad, bool nhwc,
                                    bool accumulate) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(g.N) * g.C * g.H * g.W;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, h, w;
    decode4(i, nhwc, g.C, g.H, g.W, n, c, h, w);
    I oh0, oh1, ow0, ow1;
    covering(h, g.kh, g.sh, g.ph, g.OH, &oh0, &oh1);
    covering(w, g.kw, g.sw, g.pw, g.OW, &ow0, &ow1);
    A acc = A(0);
    for (I oh = oh0; oh < oh1; ++oh)
      for (I ow = ow0; ow < ow1; ++ow)
        acc += load(dy, off4(nhwc, n, c, oh, ow, g.C, g.OH, g.OW)) / A(avg_divisor(g, oh, ow, count_include_pad));
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + acc : acc);
  }
}

// Adaptive bins: [floor(i*in/out), ceil((i+1)*in/out)).
template <typename I>
__device__ __forceinline__ I bin_start(I i, I in, I out) {
  return (i * in) / out;
}
template <typename I>
__device__ __forceinline__ I bin_end(I i, I in, I out) {
  return ((i + 1) * in + out - 1) / out;
}
// The largest index or product of the adaptive kernels: element counts and the bin arithmetic ((i + 1) * in + out).
int64_t adaptive_bound(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t elems = std::max(N * C * H * W, N * C * OH * OW);
  const int64_t bins = std::max((OH + 1) * (H + 1) + OH + H, (OW + 1) * (W + 1) + OW + W);
  return std::max(elems, bins);
}

template <typename T, typename I>
__global__ void adaptive_forward_kernel(const T* x, T* y, I N, I C, I H, I W, I OH, I OW, bool nhwc) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(N) * C * OH * OW;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, oh, ow;
    decode4(i, nhwc, C, OH, OW, n, c, oh, ow);
    const I hs = bin_start(oh, H, OH), he = bin_end(oh, H, OH);
    const I ws = bin_start(ow, W, OW), we = bin_end(ow, W, OW);
    A sum = A(0);
    for (I h = hs; h < he; ++h)
      for (I w = ws; w < we; ++w) sum += load(x, off4(nhwc, n, c, h, w, C, H, W));
    y[i] = from_acc<T>(sum / A((he - hs) * (we - ws)));
  }
}

// Output 1x1 of an NCHW tensor: one warp per (n, c) plane reads it contiguously and reduces with shuffles.
template <typename T>
__global__ void global_avg_nchw_kernel(const T* x, T* y, int64_t planes, int64_t hw) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t p = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32; p < planes; p += warps) {
    A sum = A(0);
    for (int64_t j = lane; j < hw; j += 32) sum += load(x, p * hw + j);
    for (int o = 16; o > 0; o /= 2) sum += __shfl_down_sync(0xffffffffu, sum, o);
    if (lane == 0) y[p] = from_acc<T>(sum / A(hw));
  }
}

template <typename T, typename I>
__global__ void adaptive_backward_kernel(const T* dy, T* dx, I N, I C, I H, I W, I OH, I OW, bool nhwc,
                                         bool accumulate) {
  using A = typename Acc<T>::type;
  const int64_t total = int64_t(N) * C * H * W;
  TL_KERNEL_LOOP_AS(I, i, total) {
    I n, c, h, w;
    decode4(i, nhwc, C, H, W, n, c, h, w);
    // Bins containing h: i in (h*OH/H - 1, (h+1)*OH/H), re-checked below.
    const I oh0 = (h * OH) / H, oh1 = min(((h + 1) * OH + H - 1) / H, OH);
    const I ow0 = (w * OW) / W, ow1 = min(((w + 1) * OW + W - 1) / W, OW);
    A acc = A(0);
    for (I oh = oh0; oh < oh1; ++oh) {
      const I hs = bin_start(oh, H, OH), he = bin_end(oh, H, OH);
      if (h < hs || h >= he) continue;
      for (I ow = ow0; ow < ow1; ++ow) {
        const I ws = bin_start(ow, W, OW), we = bin_end(ow, W, OW);
        if (w < ws || w >= we) continue;
        acc += load(dy, off4(nhwc, n, c, oh, ow, C, OH, OW)) / A((he - hs) * (we - ws));
      }
    }
    dx[i] = from_acc<T>(accumulate ? load(dx, i) + acc : acc);
  }
}

}  // namespace

void max_pool2d_forward(const void* x, void* y, DType dtype, const PoolGeom& g, bool nhwc, cudaStream_t stream) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "max_pool2d_forward", with_index_type({pool_bound(g)}, [&](auto index) {
                    using I = decltype(index);
                    max_forward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), geom_as<I>(g), nhwc);
                  }));
  TL_LAUNCH_CHECK();
}

void max_pool2d_backward(const void* x, const void* dy, void* dx, DType dtype, const PoolGeom& g, bool nhwc,
                         bool accumulate, cudaStream_t stream) {
  const int64_t n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "max_pool2d_backward", with_index_type({pool_bound(g)}, [&](auto index) {
                    using I = decltype(index);
                    max_backward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx),
                        geom_as<I>(g), nhwc, accumulate);
                  }));
  TL_LAUNCH_CHECK();
}

void avg_pool2d_forward(const void* x, void* y, DType dtype, const PoolGeom& g, bool count_include_pad, bool nhwc,
                        cudaStream_t stream) {
  const int64_t n = g.N * g.C * g.OH * g.OW;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "avg_pool2d_forward", with_index_type({pool_bound(g)}, [&](auto index) {
                    using I = decltype(index);
                    avg_forward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), geom_as<I>(g), count_include_pad,
                        nhwc);
                  }));
  TL_LAUNCH_CHECK();
}

void avg_pool2d_backward(const void* dy, void* dx, DType dtype, const PoolGeom& g, bool count_include_pad, bool nhwc,
                         bool accumulate, cudaStream_t stream) {
  const int64_t n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "avg_pool2d_backward", with_index_type({pool_bound(g)}, [&](auto index) {
                    using I = decltype(index);
                    avg_backward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx), geom_as<I>(g),
                        count_include_pad, nhwc, accumulate);
                  }));
  TL_LAUNCH_CHECK();
}

void adaptive_avg_pool2d_forward(const void* x, void* y, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W,
                                 int64_t OH, int64_t OW, bool nhwc, cudaStream_t stream) {
  const int64_t n = N * C * OH * OW;
  if (n == 0) return;
  if (OH == 1 && OW == 1 && !nhwc && H * W >= 32) {
    // Global average (ResNet/DenseNet heads) of NCHW planes: warp reductions. NHWC (and small planes) use the
    // generic kernel, where consecutive threads already read consecutive channels.
    const int64_t planes = N * C;
    const unsigned blocks = grid_for(planes * 32);
    TL_DISPATCH_ALL(dtype, "adaptive_avg_pool2d_forward",
                    global_avg_nchw_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
                        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), planes, H * W));
  } else {
    TL_DISPATCH_ALL(dtype, "adaptive_avg_pool2d_forward",
                    with_index_type({adaptive_bound(N, C, H, W, OH, OW)}, [&](auto index) {
                      using I = decltype(index);
                      adaptive_forward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                          static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), I(N), I(C), I(H), I(W), I(OH),
                          I(OW), nhwc);
                    }));
  }
  TL_LAUNCH_CHECK();
}

void adaptive_avg_pool2d_backward(const void* dy, void* dx, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t OH, int64_t OW, bool nhwc, bool accumulate, cudaStream_t stream) {
  const int64_t n = N * C * H * W;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "adaptive_avg_pool2d_backward",
                  with_index_type({adaptive_bound(N, C, H, W, OH, OW)}, [&](auto index) {
                    using I = decltype(index);
                    adaptive_backward_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(
                        static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(dx), I(N), I(C), I(H), I(W), I(OH),
                        I(OW), nhwc, accumulate);
                  }));
  TL_LAUNCH_CHECK();
}

}  // namespace tl::kernels
