// 2-D convolution: shape checks, the CPU reference (im2col + gemm), the cuDNN path with its algorithm cache,
// and the autograd wrapper (see conv2d.h).
#include "layers/conv2d.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "core/blas.h"
#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/conv2d.h"
#include "layers/cudnn_util.h"
#endif
#include "layers/conv2d_depthwise.h"
#include "layers/conv2d_dnnl.h"
#include "layers/mac_counter.h"
#include "layers/layer_util.h"

namespace tl {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Geometry of one convolution problem.

struct Geometry {
  int64_t n, c, h, w;   // input x
  int64_t k, r, s;      // weight (K, C/groups, R, S)
  int64_t ho, wo;       // output y
  int64_t groups, cg, kg;  // groups; input and output channels per group
  Conv2dOptions o;
  int64_t out_plane() const { return ho * wo; }
  int64_t col_rows() const { return cg * r * s; }  // rows of the im2col matrix of one group
};

// floor((in + 2 pad - dil (ker - 1) - 1) / stride) + 1, or 0 when the dilated kernel does not fit.
int64_t out_size(int64_t in, int64_t pad, int64_t dil, int64_t ker, int64_t stride) {
  const int64_t span = in + 2 * pad - dil * (ker - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

void check_options(const Conv2dOptions& o) {
  TL_CHECK(o.stride_h >= 1 && o.stride_w >= 1, ValueError, "conv2d: strides must be >= 1, got ", o.stride_h, "x",
           o.stride_w);
  TL_CHECK(o.dilation_h >= 1 && o.dilation_w >= 1, ValueError, "conv2d: dilations must be >= 1, got ",
           o.dilation_h, "x", o.dilation_w);
  TL_CHECK(o.pad_h >= 0 && o.pad_w >= 0, ValueError, "conv2d: paddings must be >= 0, got ", o.pad_h, "x", o.pad_w);
  TL_CHECK(o.groups >= 1, ValueError, "conv2d: groups must be >= 1, got ", o.groups);
}

Geometry geometry(const Shape& x, const Shape& w, const Conv2dOptions& o) {
  check_options(o);
  TL_CHECK(x.size() == 4 && w.size() == 4, ShapeError, "conv2d: x must be (N, C, H, W) and w (K, C/groups, R, S); got x ",
           shape_str(x), " and w ", shape_str(w));
  Geometry g;
  g.n = x[0], g.c = x[1], g.h = x[2], g.w = x[3];
  g.k = w[0], g.r = w[2], g.s = w[3];
  g.groups = o.groups;
  g.o = o;
  TL_CHECK(g.c % g.groups == 0 && g.k % g.groups == 0, ShapeError, "conv2d: groups=", g.groups,
           " must divide the input channels of x ", shape_str(x), " and the output channels of w ", shape_str(w));
  g.cg = g.c / g.groups;
  g.kg = g.k / g.groups;
  TL_CHECK(w[1] == g.cg, ShapeError, "conv2d: x ", shape_str(x), " has ", g.c, " channels, but w ", shape_str(w),
           " with groups=", g.groups, " expects ", w[1] * g.groups);
  TL_CHECK(g.r >= 1 && g.s >= 1 && g.k >= 1, ShapeError, "conv2d: empty weight ", shape_str(w), " for x ", shape_str(x));
  g.ho = out_size(g.h, o.pad_h, o.dilation_h, g.r, o.stride_h);
  g.wo = out_size(g.w, o.pad_w, o.dilation_w, g.s, o.stride_w);
  TL_CHECK(g.ho >= 1 && g.wo >= 1, ShapeError, "conv2d: the (dilated) kernel of w ", shape_str(w),
           " is larger than the padded input x ", shape_str(x), " (pad ", o.pad_h, "x", o.pad_w, ", dilation ",
           o.dilation_h, "x", o.dilation_w, ")");
  return g;
}

Shape out_shape(const Geometry& g) { return {g.n, g.k, g.ho, g.wo}; }

void check_dy(const Tensor& dy, const Geometry& g, const Shape& x_shape, const Shape& w_shape, const char* op) {
  TL_CHECK(dy.shape() == out_shape(g), ShapeError, op, ": dy ", dy.str(), " does not match the output shape ",
           shape_str(out_shape(g)), " of x ", shape_str(x_shape), " and w ", shape_str(w_shape));
}

Tensor as_layout(const Tensor& t, Layout layout) { return t.layout() == layout ? t : t.to_layout(layout); }

// The oneDNN path overwrites its output: with `add`, it computes into a fresh tensor that is then added.
template <typename F>
void fast_cpu_grad(Tensor& out, bool add, F&& compute) {
  if (!add) {
    compute(out);
    return;
  }
  Tensor tmp = Tensor::empty(out.shape(), out.dtype(), out.device(), out.layout());
  compute(tmp);
  out.add_(tmp);
}

// ---------------------------------------------------------------------------------------------------------
// CPU reference: per image and group, im2col turns the receptive fields into a (Cg*R*S, Ho*Wo) matrix.

using cpu::gemm;

// col[(c*R + r)*S + s][oh*Wo + ow] = x[c][oh*sh - ph + r*dh][ow*sw - pw + s*dw] (0 outside), x: (Cg, H, W).
template <typename T>
void im2col(const T* x, T* col, const Geometry& g) {
  const Conv2dOptions& o = g.o;
  T* row = col;
  for (int64_t c = 0; c < g.cg; ++c)
    for (int64_t r = 0; r < g.r; ++r)
      for (int64_t s = 0; s < g.s; ++s, row += g.out_plane())
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          const int64_t ih = oh * o.stride_h - o.pad_h + r * o.dilation_h;
          for (int64_t ow = 0; ow < g.wo; ++ow) {
            const int64_t iw = ow * o.stride_w - o.pad_w + s * o.dilation_w;
            const bool inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
            row[oh * g.wo + ow] = inside ? x[(c * g.h + ih) * g.w + iw] : T(0);
          }
        }
}

// The adjoint of im2col: dx[c][ih][iw] += col[...] for every receptive-field entry that reads (c, ih, iw).
template <typename T>
void col2im_add(const T* col, T* dx, const Geometry& g) {
  const Conv2dOptions& o = g.o;
  const T* row = col;
  for (int64_t c = 0; c < g.cg; ++c)
    for (int64_t r = 0; r < g.r; ++r)
      for (int64_t s = 0; s < g.s; ++s, row += g.out_plane())
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          const int64_t ih = oh * o.stride_h - o.pad_h + r * o.dilation_h;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t ow = 0; ow < g.wo; ++ow) {
            const int64_t iw = ow * o.stride_w - o.pad_w + s * o.dilation_w;
            if (iw >= 0 && iw < g.w) dx[(c * g.h + ih) * g.w + iw] += row[oh * g.wo + ow];
          }
        }
}

// y[n, grp] (Kg, P) = W[grp] (Kg, CRS) * col (CRS, P), then + bias.
template <typename T>
void forward_cpu(const T* x, const T* w, const T* bias, T* y, const Geometry& g) {
  const int64_t P = g.out_plane(), CRS = g.col_rows();
  std::vector<T> col(static_cast<size_t>(CRS * P));
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x + (n * g.c + grp * g.cg) * g.h * g.w, col.data(), g);
      gemm(false, false, g.kg, P, CRS, w + grp * g.kg * CRS, CRS, col.data(), P, T(0),
           y + (n * g.k + grp * g.kg) * P, P);
    }
  if (bias)
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t k = 0; k < g.k; ++k) {
        T* plane = y + (n * g.k + k) * P;
        for (int64_t p = 0; p < P; ++p) plane[p] += bias[k];
      }
}

// col (CRS, P) = W[grp]^T (CRS, Kg) * dy[n, grp] (Kg, P); dx[n, grp] += col2im(col).
template <typename T>
void backward_data_cpu(const T* dy, const T* w, T* dx, const Geometry& g, bool accumulate) {
  const int64_t P = g.out_plane(), CRS = g.col_rows();
  if (!accumulate) std::fill(dx, dx + g.n * g.c * g.h * g.w, T(0));
  std::vector<T> col(static_cast<size_t>(CRS * P));
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      gemm(true, false, CRS, P, g.kg, w + grp * g.kg * CRS, CRS, dy + (n * g.k + grp * g.kg) * P, P, T(0),
           col.data(), P);
      col2im_add(col.data(), dx + (n * g.c + grp * g.cg) * g.h * g.w, g);
    }
}

// dW[grp] (Kg, CRS) += dy[n, grp] (Kg, P) * col^T (P, CRS), summed over the images.
template <typename T>
void backward_weight_cpu(const T* dy, const T* x, T* dw, const Geometry& g, bool accumulate) {
  const int64_t P = g.out_plane(), CRS = g.col_rows();
  if (!accumulate) std::fill(dw, dw + g.k * CRS, T(0));
  std::vector<T> col(static_cast<size_t>(CRS * P));
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x + (n * g.c + grp * g.cg) * g.h * g.w, col.data(), g);
      gemm(false, true, g.kg, CRS, P, dy + (n * g.k + grp * g.kg) * P, P, col.data(), P, T(1),
           dw + grp * g.kg * CRS, CRS);
    }
}

template <typename T>
void backward_bias_cpu(const T* dy, T* db, int64_t n_img, int64_t k_ch, int64_t plane, bool nhwc, bool accumulate) {
  // Each channel sums its values in the same order (image, then position) in either layout.
  parallel_for(k_ch, 4, [&](int64_t k0, int64_t k1) {
    std::vector<T> sum(static_cast<size_t>(k1 - k0), T(0));
    if (nhwc) {
      for (int64_t row = 0; row < n_img * plane; ++row)
        for (int64_t k = k0; k < k1; ++k) sum[k - k0] += dy[row * k_ch + k];
    } else {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t n = 0; n < n_img; ++n) {
          const T* p = dy + (n * k_ch + k) * plane;
          for (int64_t i = 0; i < plane; ++i) sum[k - k0] += p[i];
        }
    }
    for (int64_t k = k0; k < k1; ++k) db[k] = accumulate ? db[k] + sum[k - k0] : sum[k - k0];
  });
}

// ---------------------------------------------------------------------------------------------------------
#if TL_WITH_CUDA
// CUDA: cuDNN legacy convolution API. Each problem keeps the heuristic's whole ranked list of usable algorithms;
// a call tries the one that ran last time first, falls through to the next on a NOT_SUPPORTED status, a failed
// execution or a workspace that cannot be allocated, and remembers the one that ran (PyTorch's try_all).

using cudnn_rules::ConvMath;
using cudnn_rules::Outcome;
using cudnn_util::Scalar;
using cudnn_util::TensorDesc;

constexpr size_t kMaxWorkspace = size_t(1) << 30;  // never pick an algorithm that needs more scratch

cudnnMathType_t to_cudnn(ConvMath m) {
  switch (m) {
    case ConvMath::TensorOp: return CUDNN_TENSOR_OP_MATH;
    case ConvMath::TensorOpAllowConversion: return CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
    case ConvMath::Fma: return CUDNN_FMA_MATH;
    case ConvMath::Default: break;
  }
  return CUDNN_DEFAULT_MATH;
}
ConvMath from_cudnn(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_TENSOR_OP_MATH: return ConvMath::TensorOp;
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return ConvMath::TensorOpAllowConversion;
    case CUDNN_FMA_MATH: return ConvMath::Fma;
    default: return ConvMath::Default;
  }
}

// Float32 uses TF32 tensor cores only when allowed (CUDNN_FMA_MATH forbids them); half types use tensor cores.
cudnnMathType_t math_for(DType t) {
  if (is_floating_half(t)) return CUDNN_TENSOR_OP_MATH;
  if (t == DType::F32) return cuda::allow_tf32_conv() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  return CUDNN_DEFAULT_MATH;
}

// The descriptors of one problem (x, w, y in one layout), created and destroyed with the object.
class CudnnConv {
 public:
  CudnnConv(const Geometry& g, DType dtype, Layout layout)
      : dtype_(dtype),
        math_(math_for(dtype)),
        x_(dtype, layout, g.n, g.c, g.h, g.w, "conv2d x"),
        y_(dtype, layout, g.n, g.k, g.ho, g.wo, "conv2d y") {
    TL_CHECK(g.k * g.cg * g.r * g.s <= cudnn_rules::kMaxElements, ShapeError, "conv2d: the weight (", g.k, ", ",
             g.cg, ", ", g.r, ", ", g.s, ") has more than 2^31 elements, beyond cuDNN's limit");
    // Filter argument order: (desc, dtype, format, k, c, h, w).
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w_.get(), cudnn_util::data_type(dtype, "conv2d"),
                                           cudnn_util::format(layout), (int)g.k, (int)g.cg, (int)g.r, (int)g.s));
    const cudnnDataType_t compute = dtype == DType::F64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    const Conv2dOptions& o = g.o;
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_.get(), o.pad_h, o.pad_w, o.stride_h, o.stride_w, o.dilation_h,
                                                o.dilation_w, CUDNN_CROSS_CORRELATION, compute));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv_.get(), o.groups));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv_.get(), math_));
    int n = 0, c = 0, h = 0, w = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv_.get(), x(), this->w(), &n, &c, &h, &w));
    TL_CHECK(n == g.n && c == g.k && h == g.ho && w == g.wo, Error, "conv2d: cuDNN output dims ", n, "x", c, "x", h,
             "x", w, " differ from ", shape_str(out_shape(g)));
  }

  cudnnTensorDescriptor_t x() const { return x_.get(); }
  cudnnTensorDescriptor_t y() const { return y_.get(); }
  cudnnFilterDescriptor_t w() const { return w_.get(); }
  cudnnConvolutionDescriptor_t conv() const { return conv_.get(); }
  DType dtype() const { return dtype_; }
  cudnnMathType_t wanted_math() const { return math_; }

 private:
  DType dtype_;
  cudnnMathType_t math_;
  TensorDesc x_, y_;
  cudnn_util::FilterDesc w_;
  cudnn_util::ConvDesc conv_;
};

enum class Direction { Forward, BackwardData, BackwardFilter };
const char* direction_name(Direction dir) {
  return dir == Direction::Forward ? "forward" : dir == Direction::BackwardData ? "backward-data" : "backward-filter";
}

// A candidate and a problem's ranked candidates: the runtime's types (core/device.h), whose per-device cache
// (find_conv_algos / store_conv_algos) replaces a function-static map here, so that the process has one piece of
// CUDA state, torn down by cuda::release_runtime().
using AlgoChoice = cuda::ConvAlgo;
using AlgoEntry = cuda::ConvAlgoEntry;

// The cache key of one full problem (direction, shapes, options, dtype, layout, math mode); the runtime adds the
// device.
std::vector<int64_t> algo_key(Direction dir, const Geometry& g, DType dtype, Layout layout, cudnnMathType_t math) {
  const Conv2dOptions& o = g.o;
  return {static_cast<int64_t>(dir), g.n, g.c, g.h, g.w, g.k, g.r, g.s, o.stride_h, o.stride_w, o.pad_h, o.pad_w,
          o.dilation_h, o.dilation_w, o.groups, static_cast<int64_t>(dtype), static_cast<int64_t>(layout),
          static_cast<int64_t>(math)};
}

// The heuristic results (best first) that succeeded, whose math type the data may take (cudnn_rules::conv_math_for:
// FMA only for float32 with TF32 off, never ALLOW_CONVERSION for float32/float64 data) and whose exact workspace
// (queried with the math type set) fits kMaxWorkspace. `workspace_of(algo, &bytes)` returns a cudnnStatus_t.
template <typename Perf, typename WorkspaceFn>
std::vector<AlgoChoice> usable_algos(const Perf* perf, int returned, const CudnnConv& d, WorkspaceFn workspace_of) {
  const bool fma_only = d.wanted_math() == CUDNN_FMA_MATH;
  std::vector<AlgoChoice> out;
  for (int i = 0; i < returned; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    const std::optional<ConvMath> math =
        cudnn_rules::conv_math_for(is_floating_half(d.dtype()), fma_only, from_cudnn(perf[i].mathType));
    if (!math) continue;
    if (cudnnSetConvolutionMathType(d.conv(), to_cudnn(*math)) != CUDNN_STATUS_SUCCESS) continue;
    size_t bytes = 0;
    if (workspace_of(perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > kMaxWorkspace) continue;
    out.push_back(AlgoChoice{static_cast<int>(perf[i].algo), to_cudnn(*math), bytes});
  }
  return out;
}

// The ranked candidates of cuDNN's heuristic (v7) for one direction.
std::vector<AlgoChoice> heuristic_algos(Direction dir, const CudnnConv& d) {
  cudnnHandle_t h = cuda::cudnn();
  int returned = 0;
  if (dir == Direction::Forward) {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x(), d.w(), d.conv(), d.y(),
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf));
    return usable_algos(perf, returned, d, [&](cudnnConvolutionFwdAlgo_t a, size_t* bytes) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, d.x(), d.w(), d.conv(), d.y(), a, bytes);
    });
  }
  if (dir == Direction::BackwardData) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    // (handle, wDesc, dyDesc, convDesc, dxDesc, ...)
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w(), d.y(), d.conv(), d.x(),
                                                            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf));
    return usable_algos(perf, returned, d, [&](cudnnConvolutionBwdDataAlgo_t a, size_t* bytes) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w(), d.y(), d.conv(), d.x(), a, bytes);
    });
  }
  cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  // (handle, xDesc, dyDesc, convDesc, dwDesc, ...)
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x(), d.y(), d.conv(), d.w(),
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, perf));
  return usable_algos(perf, returned, d, [&](cudnnConvolutionBwdFilterAlgo_t a, size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x(), d.y(), d.conv(), d.w(), a, bytes);
  });
}

// The cached entry of a problem, or a fresh one from the heuristic (no candidate has run yet).
AlgoEntry algo_entry(const std::vector<int64_t>& key, Direction dir, const CudnnConv& d) {
  if (std::optional<AlgoEntry> cached = cuda::find_conv_algos(key)) return std::move(*cached);
  AlgoEntry e;
  e.candidates = heuristic_algos(dir, d);
  e.ran = e.candidates.size();
  TL_CHECK(!e.candidates.empty(), CudnnError, "conv2d: cuDNN offers no usable ", direction_name(dir),
           " algorithm for this problem (workspace limit ", kMaxWorkspace, " bytes)");
  return e;
}

// Runs one convolution call over the candidates of its problem: run(choice, workspace) makes the cuDNN call and
// returns its status. `beta_one`: the call adds into its output, which a failed execution may have half written,
// so only NOT_SUPPORTED and a workspace allocation failure fall through then.
template <typename Run>
void run_conv(Direction dir, const CudnnConv& d, const Geometry& g, Layout layout, bool beta_one, const char* call,
              Run&& run) {
  const std::vector<int64_t> key = algo_key(dir, g, d.dtype(), layout, d.wanted_math());
  const AlgoEntry e = algo_entry(key, dir, d);
  auto attempt = [&](size_t i) {
    const AlgoChoice& a = e.candidates[i];
    CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv(), a.math));
    void* ws = nullptr;
    if (a.workspace) {
      try {
        ws = cuda::workspace(a.workspace);
      } catch (const OutOfMemoryError&) {
        return Outcome::OutOfMemory;
      }
    }
    const cudnnStatus_t st = run(a, ws);
    if (beta_one && cudnn_rules::execution_failed(static_cast<int>(st)))
      detail::throw_cudnn(static_cast<int>(st), call, __FILE__, __LINE__);
    return cudnn_util::attempt_outcome(st, call, __FILE__, __LINE__);
  };
  const size_t ran = cudnn_rules::run_first_that_works(e.candidates.size(), e.ran, attempt,
                                                       detail::concat("conv2d ", direction_name(dir)));
  if (ran == e.ran) return;
  AlgoEntry updated = e;
  updated.ran = ran;
  cuda::store_conv_algos(key, std::move(updated));
}

// Calls fn(sub, first_image) over slices of the batch that cuDNN takes in one call (each tensor within 2^31
// elements, as PyTorch splits them); `sub` is the geometry of the slice.
template <typename F>
void for_batch_slices(const Geometry& g, const char* op, F&& fn) {
  const int64_t per_image = std::max(g.c * g.h * g.w, g.k * g.ho * g.wo);
  const int64_t step = cudnn_rules::images_per_call(g.n, per_image);
  TL_CHECK(step >= 1, ShapeError, op, ": one image of x [", g.n, ", ", g.c, ", ", g.h, ", ", g.w, "] or y ",
           shape_str(out_shape(g)), " has more than 2^31 elements, beyond cuDNN's limit: use smaller images");
  for (int64_t n0 = 0; n0 < g.n; n0 += step) {
    Geometry sub = g;
    sub.n = std::min(step, g.n - n0);
    fn(sub, n0);
  }
}
// The address of image n0 of a 4-D tensor (the batch is the outermost dimension in both layouts).
void* image_ptr(const Tensor& t, int64_t n0) {
  return static_cast<char*>(t.data()) + n0 * (t.numel() / t.size(0)) * static_cast<int64_t>(dtype_size(t.dtype()));
}

// y = conv(x, w); x, w and y share one layout.
void forward_cuda(const Tensor& x, const Tensor& w, Tensor& y, const Geometry& g) {
  for_batch_slices(g, "conv2d", [&](const Geometry& sub, int64_t n0) {
    CudnnConv d(sub, x.dtype(), x.layout());
    const Scalar one(1.0), zero(0.0);
    run_conv(Direction::Forward, d, sub, x.layout(), false, "cudnnConvolutionForward",
             [&](const AlgoChoice& a, void* ws) {
               return cudnnConvolutionForward(cuda::cudnn(), one.for_dtype(x.dtype()), d.x(), image_ptr(x, n0), d.w(),
                                              w.data(), d.conv(), static_cast<cudnnConvolutionFwdAlgo_t>(a.algo), ws,
                                              a.workspace, zero.for_dtype(x.dtype()), d.y(), image_ptr(y, n0));
             });
  });
}

// dx (+)= conv_transpose(dy, w); dy, w and dx share one layout.
void backward_data_cuda(const Tensor& dy, const Tensor& w, Tensor& dx, const Geometry& g, bool add) {
  for_batch_slices(g, "conv2d_backward_data", [&](const Geometry& sub, int64_t n0) {
    CudnnConv d(sub, dy.dtype(), dy.layout());
    const Scalar one(1.0), beta(add ? 1.0 : 0.0);
    run_conv(Direction::BackwardData, d, sub, dy.layout(), add, "cudnnConvolutionBackwardData",
             [&](const AlgoChoice& a, void* ws) {
               return cudnnConvolutionBackwardData(cuda::cudnn(), one.for_dtype(dy.dtype()), d.w(), w.data(), d.y(),
                                                   image_ptr(dy, n0), d.conv(),
                                                   static_cast<cudnnConvolutionBwdDataAlgo_t>(a.algo), ws, a.workspace,
                                                   beta.for_dtype(dy.dtype()), d.x(), image_ptr(dx, n0));
             });
  });
}

// dw (+)= sum_n dy (*) x; x, dy and dw share one layout. Batch slices after the first add into dw.
void backward_filter_cuda(const Tensor& dy, const Tensor& x, Tensor& dw, const Geometry& g, bool add) {
  for_batch_slices(g, "conv2d_backward_weight", [&](const Geometry& sub, int64_t n0) {
    CudnnConv d(sub, x.dtype(), x.layout());
    const bool beta_one = add || n0 > 0;
    const Scalar one(1.0), beta(beta_one ? 1.0 : 0.0);
    run_conv(Direction::BackwardFilter, d, sub, x.layout(), beta_one, "cudnnConvolutionBackwardFilter",
             [&](const AlgoChoice& a, void* ws) {
               return cudnnConvolutionBackwardFilter(cuda::cudnn(), one.for_dtype(x.dtype()), d.x(), image_ptr(x, n0),
                                                     d.y(), image_ptr(dy, n0), d.conv(),
                                                     static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws,
                                                     a.workspace, beta.for_dtype(x.dtype()), d.w(), dw.data());
             });
  });
}

#endif  // TL_WITH_CUDA
// The kernel size R (or S) whose output size is `out`, or -1 when none or several fit.
int64_t infer_kernel(int64_t in, int64_t out, int64_t pad, int64_t dil, int64_t stride) {
  int64_t found = -1;
  for (int64_t ker = 1; dil * (ker - 1) + 1 <= in + 2 * pad; ++ker) {
    if (out_size(in, pad, dil, ker, stride) != out) continue;
    if (found != -1) return -1;
    found = ker;
  }
  return found;
}

// Whether a CPU problem runs the direct depthwise loop (conv2d_depthwise.h): float64 and float32 without oneDNN
// always, float32 with oneDNN where the loop measured faster. `layout` is the activations' layout.
bool use_depthwise(const Tensor& t, const Shape& x_shape, const Shape& w_shape, const Conv2dOptions& o,
                   Layout layout) {
  if (t.is_cuda() || !depthwise_conv::applies(x_shape, w_shape, o)) return false;
  return !dnnl_conv::takes(t) || depthwise_conv::preferred_over_dnnl(x_shape, w_shape, o, layout);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Public functions.

Layout conv2d_cpu_float32_layout() { return TL_WITH_DNNL ? Layout::NHWC : Layout::NCHW; }

Shape conv2d_output_shape(const Shape& x_shape, const Shape& w_shape, const Conv2dOptions& o) {
  return out_shape(geometry(x_shape, w_shape, o));
}

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& o) {
  check_defined(x, "conv2d x");
  check_defined(w, "conv2d w");
  const Geometry g = geometry(x.shape(), w.shape(), o);
  check_same_dtype_device(x, w, "conv2d (x, w)");
  if (bias.defined()) {
    check_same_dtype_device(x, bias, "conv2d (x, bias)");
    TL_CHECK(bias.ndim() == 1 && bias.size(0) == g.k, ShapeError, "conv2d: bias ", bias.str(), " must be [", g.k,
             "] for w ", shape_str(w.shape()));
  }
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    Tensor y = Tensor::empty(out_shape(g), x.dtype(), Device::CUDA, x.layout());
    if (g.n == 0) return y;
    forward_cuda(x, as_layout(w, x.layout()), y, g);
    if (bias.defined())
      kernels::conv_bias_add(y.data(), bias.data(), y.dtype(), g.n, g.k, g.out_plane(), y.layout() == Layout::NHWC,
                             cuda::stream());
    return y;
#endif
  }
  check_cpu_float(x, "conv2d");
  if (use_depthwise(x, x.shape(), w.shape(), o, x.layout())) {
    Tensor y = Tensor::empty(out_shape(g), x.dtype(), Device::CPU, x.layout());
    depthwise_conv::forward(x, w, bias, y, o);
    return y;
  }
  if (dnnl_conv::takes(x)) {
    Tensor y = Tensor::empty(out_shape(g), x.dtype(), Device::CPU, x.layout());
    if (g.n > 0) dnnl_conv::forward(x, w, bias, y, o);
    return y;
  }
  const Tensor xc = as_layout(x, Layout::NCHW), wc = as_layout(w, Layout::NCHW);
  Tensor y = Tensor::empty(out_shape(g), x.dtype());
  if (x.dtype() == DType::F32)
    forward_cpu(xc.data_as<float>(), wc.data_as<float>(), bias.defined() ? bias.data_as<float>() : nullptr,
                y.data_as<float>(), g);
  else
    forward_cpu(xc.data_as<double>(), wc.data_as<double>(), bias.defined() ? bias.data_as<double>() : nullptr,
                y.data_as<double>(), g);
  return as_layout(y, x.layout());
}

void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, Tensor& dx,
                          const Conv2dOptions& o, bool accumulate) {
  check_defined(dy, "conv2d_backward_data dy");
  check_defined(w, "conv2d_backward_data w");
  const Geometry g = geometry(x_shape, w.shape(), o);
  check_dy(dy, g, x_shape, w.shape(), "conv2d_backward_data");
  check_same_dtype_device(dy, w, "conv2d_backward_data (dy, w)");
  if (!dy.is_cuda()) check_cpu_float(dy, "conv2d_backward_data");
  const bool depthwise = use_depthwise(dy, x_shape, w.shape(), o, dy.layout());
  const bool fast_cpu = dnnl_conv::takes(dy);
  const Layout compute_layout = dy.is_cuda() || fast_cpu || depthwise ? dy.layout() : Layout::NCHW;
  write_grad(dx, GradSpec{x_shape, dy.dtype(), dy.device(), dy.layout()}, compute_layout, accumulate,
             "conv2d_backward_data",
             [&](Tensor& out, bool add) {
               if (out.is_cuda()) {
#if TL_WITH_CUDA
                 if (g.n > 0) backward_data_cuda(dy, as_layout(w, compute_layout), out, g, add);
                 return;
#endif
               }
               if (depthwise) return depthwise_conv::backward_data(dy, w, out, o, add);
               if (fast_cpu) {
                 if (g.n > 0) fast_cpu_grad(out, add, [&](Tensor& t) { dnnl_conv::backward_data(dy, w, t, o); });
                 return;
               }
               const Tensor dyc = as_layout(dy, Layout::NCHW), wc = as_layout(w, Layout::NCHW);
               if (dy.dtype() == DType::F32)
                 backward_data_cpu(dyc.data_as<float>(), wc.data_as<float>(), out.data_as<float>(), g, add);
               else
                 backward_data_cpu(dyc.data_as<double>(), wc.data_as<double>(), out.data_as<double>(), g, add);
             });
}

void conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape, Tensor& dw,
                            const Conv2dOptions& o, bool accumulate) {
  check_defined(dy, "conv2d_backward_weight dy");
  check_defined(x, "conv2d_backward_weight x");
  const Geometry g = geometry(x.shape(), w_shape, o);
  check_dy(dy, g, x.shape(), w_shape, "conv2d_backward_weight");
  check_same_dtype_device(dy, x, "conv2d_backward_weight (dy, x)");
  if (!x.is_cuda()) check_cpu_float(x, "conv2d_backward_weight");
  const bool depthwise = use_depthwise(x, x.shape(), w_shape, o, x.layout());
  const bool fast_cpu = dnnl_conv::takes(x);
  const Layout compute_layout = x.is_cuda() || fast_cpu || depthwise ? x.layout() : Layout::NCHW;
  write_grad(dw, GradSpec{w_shape, x.dtype(), x.device(), x.layout()}, compute_layout, accumulate,
             "conv2d_backward_weight",
             [&](Tensor& out, bool add) {
               if (out.is_cuda()) {
#if TL_WITH_CUDA
                 if (g.n > 0) backward_filter_cuda(as_layout(dy, compute_layout), x, out, g, add);
                 else if (!add) out.zero_();
                 return;
#endif
               }
               if (depthwise) return depthwise_conv::backward_weight(as_layout(dy, x.layout()), x, out, o, add);
               if (fast_cpu) {
                 if (g.n == 0) return add ? void() : void(out.zero_());
                 return fast_cpu_grad(out, add, [&](Tensor& t) { dnnl_conv::backward_weight(dy, x, t, o); });
               }
               const Tensor dyc = as_layout(dy, Layout::NCHW), xc = as_layout(x, Layout::NCHW);
               if (x.dtype() == DType::F32)
                 backward_weight_cpu(dyc.data_as<float>(), xc.data_as<float>(), out.data_as<float>(), g, add);
               else
                 backward_weight_cpu(dyc.data_as<double>(), xc.data_as<double>(), out.data_as<double>(), g, add);
             });
}

void conv2d_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o, bool accumulate) {
  if (dw.defined()) return conv2d_backward_weight(dy, x, dw.shape(), dw, o, accumulate);
  check_defined(dy, "conv2d_backward_weight dy");
  check_defined(x, "conv2d_backward_weight x");
  check_options(o);
  TL_CHECK(dy.ndim() == 4 && x.ndim() == 4, ShapeError, "conv2d_backward_weight: x ", x.str(), " and dy ", dy.str(),
           " must be 4-D");
  TL_CHECK(x.size(1) % o.groups == 0, ShapeError, "conv2d_backward_weight: groups=", o.groups,
           " does not divide the channels of x ", x.str());
  const int64_t r = infer_kernel(x.size(2), dy.size(2), o.pad_h, o.dilation_h, o.stride_h);
  const int64_t s = infer_kernel(x.size(3), dy.size(3), o.pad_w, o.dilation_w, o.stride_w);
  TL_CHECK(r > 0 && s > 0, ValueError, "conv2d_backward_weight: cannot infer a unique kernel size from x ", x.str(),
           " and dy ", dy.str(), "; pass w_shape or a defined dw");
  conv2d_backward_weight(dy, x, Shape{dy.size(1), x.size(1) / o.groups, r, s}, dw, o, accumulate);
}

void conv2d_backward_bias(const Tensor& dy, Tensor& db, bool accumulate) {
  check_defined(dy, "conv2d_backward_bias dy");
  check_rank(dy, 4, "conv2d_backward_bias", "dy");
  if (!dy.is_cuda()) check_cpu_float(dy, "conv2d_backward_bias");
  const int64_t n = dy.size(0), k = dy.size(1), plane = dy.size(2) * dy.size(3);
  write_grad(db, GradSpec{Shape{k}, dy.dtype(), dy.device()}, Layout::NCHW, accumulate, "conv2d_backward_bias",
             [&](Tensor& out, bool add) {
               if (out.is_cuda()) {
#if TL_WITH_CUDA
                 void* scratch = cuda::workspace(kernels::conv_bias_grad_scratch_bytes(dy.dtype(), n, k, plane));
                 kernels::conv_bias_grad(dy.data(), out.data(), dy.dtype(), n, k, plane,
                                         dy.layout() == Layout::NHWC, add, scratch, cuda::stream());
                 return;
#endif
               }
               const bool nhwc = dy.layout() == Layout::NHWC;
               if (dy.dtype() == DType::F32)
                 backward_bias_cpu(dy.data_as<float>(), out.data_as<float>(), n, k, plane, nhwc, add);
               else
                 backward_bias_cpu(dy.data_as<double>(), out.data_as<double>(), n, k, plane, nhwc, add);
             });
}

Variable conv2d(const Variable& x, const Variable& w, const Variable& bias, const Conv2dOptions& o) {
  const Tensor b = bias.defined() ? bias.value() : Tensor();
  Tensor y = conv2d_forward(x.value(), w.value(), b, o);
  record_macs(w.value(), static_cast<double>(w.value().numel()) * y.size(2) * y.size(3), needs_grad(x),
              needs_grad(w), x.shape(), y.shape());
  if (!should_record({&x, &w, &bias})) return Variable(y);
  // Save x only for the weight gradient and w only for the data gradient.
  const Tensor x_saved = needs_grad(w) ? x.value() : Tensor();
  const Tensor w_saved = needs_grad(x) ? w.value() : Tensor();
  const Shape x_shape = x.shape(), w_shape = w.shape();
  const Tensor& wv = w.value();
  const DType w_dtype = wv.dtype();
  const Device w_device = wv.device();
  const Layout w_layout = wv.layout();
  return record_op("conv2d", y, {&x, &w, &bias}, bytes_of({x_saved, w_saved}),
                   [=](const Tensor& dy, std::vector<GradSlot>& s) {
                     if (s[0].needed) {
                       TL_CHECK(w_saved.defined(), Error, "conv2d backward: w was not saved for the data gradient");
                       conv2d_backward_data(dy, w_saved, x_shape, s[0].grad, o, s[0].accumulate);
                     }
                     if (s[1].needed) {
                       TL_CHECK(x_saved.defined(), Error, "conv2d backward: x was not saved for the weight gradient");
                       // A fresh weight gradient takes the weight's own layout.
                       if (!s[1].accumulate) s[1].grad = Tensor::empty(w_shape, w_dtype, w_device, w_layout);
                       conv2d_backward_weight(dy, x_saved, w_shape, s[1].grad, o, s[1].accumulate);
                     }
                     if (s[2].needed) conv2d_backward_bias(dy, s[2].grad, s[2].accumulate);
                   });
}

}  // namespace tl
