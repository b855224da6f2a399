// Max / average / adaptive average pooling: CPU reference, CUDA dispatch (cuDNN or kernels/pooling.cu) and
// autograd (see pooling.h for the exact semantics).
#include "layers/pooling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/device.h"
#include "core/parallel.h"
#include "kernels/pool_geom.h"
#include "layers/cudnn_rules.h"
#if TL_WITH_CUDA
#include "kernels/pooling.h"
#include "layers/cudnn_util.h"
#endif
#include "layers/layer_util.h"

namespace tl {

// ---------------------------------------------------------------- sizes and options

Pool2dOptions pool2d_options(int kernel, int stride, int pad, bool ceil_mode, bool count_include_pad) {
  Pool2dOptions o;
  o.kernel_h = o.kernel_w = kernel;
  o.stride_h = o.stride_w = stride > 0 ? stride : kernel;
  o.pad_h = o.pad_w = pad;
  o.ceil_mode = ceil_mode;
  o.count_include_pad = count_include_pad;
  return o;
}

namespace {
// The output-size formula without validation (<= 0 when the input is too small).
int64_t raw_output_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode) {
  const int64_t span = in + 2 * pad - kernel + (ceil_mode ? stride - 1 : 0);
  // Floor division (span may be negative for a too-small input).
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  // In ceil mode the last window must start inside the input or the left padding.
  if (ceil_mode && out > 0 && (out - 1) * stride >= in + pad) --out;
  return out;
}
}  // namespace

int64_t pool_output_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode) {
  TL_CHECK(kernel > 0 && stride > 0, ShapeError, "pooling: kernel ", kernel, " and stride ", stride,
           " must be positive");
  TL_CHECK(pad >= 0 && pad <= kernel / 2, ShapeError, "pooling: padding ", pad,
           " must be between 0 and half the kernel size ", kernel);
  const int64_t out = raw_output_size(in, kernel, stride, pad, ceil_mode);
  TL_CHECK(out >= 1, ShapeError, "pooling: input size ", in, " is too small for kernel ", kernel, ", stride ", stride,
           ", padding ", pad, " (output size ", out, ")");
  return out;
}

namespace {
int stride_h(const Pool2dOptions& o) { return o.stride_h > 0 ? o.stride_h : o.kernel_h; }
int stride_w(const Pool2dOptions& o) { return o.stride_w > 0 ? o.stride_w : o.kernel_w; }
}  // namespace

Shape pool2d_output_shape(const Shape& x, const Pool2dOptions& o) {
  TL_CHECK(x.size() == 4, ShapeError, "pooling: the input must be 4-D (N, C, H, W), got ", shape_str(x));
  return {x[0], x[1], pool_output_size(x[2], o.kernel_h, stride_h(o), o.pad_h, o.ceil_mode),
          pool_output_size(x[3], o.kernel_w, stride_w(o), o.pad_w, o.ceil_mode)};
}

namespace {

kernels::PoolGeom geom_of(const Shape& x, const Shape& y, const Pool2dOptions& o) {
  return {x[0], x[1], x[2], x[3], y[2], y[3], o.kernel_h, o.kernel_w, stride_h(o), stride_w(o), o.pad_h, o.pad_w};
}

// cuDNN computes the floor-mode output size only. ceil_mode is honoured by it only where it changes nothing.
bool cudnn_can_run(const Shape& x, const Shape& y, const Pool2dOptions& o) {
  if (!o.ceil_mode) return true;
  // (The floor-mode size may even be invalid: ceil mode accepts an input smaller than the kernel.)
  return y[2] == raw_output_size(x[2], o.kernel_h, stride_h(o), o.pad_h, false) &&
         y[3] == raw_output_size(x[3], o.kernel_w, stride_w(o), o.pad_w, false);
}

// Whether cuDNN's legacy pooling is asked at all: only for CUDA tensors, not for bfloat16 (legacy pooling need not
// support it; the own kernels compute in float), not beyond its 2^31-element limit, and in ceil mode only where
// the floor-mode size it computes is the same.
bool cudnn_pooling_takes(const Tensor& x, const Shape& y, const Pool2dOptions& o) {
  if (!x.is_cuda() || x.dtype() == DType::BF16 || x.numel() > cudnn_rules::kMaxElements) return false;
  return cudnn_can_run(x.shape(), y, o);
}

#if TL_WITH_CUDA
// ---------------------------------------------------------------- cuDNN plumbing

using cudnn_util::Scalar;
using cudnn_util::TensorDesc;

void set_pool_desc(const cudnn_util::PoolDesc& d, cudnnPoolingMode_t mode, const Pool2dOptions& o) {
  // (mode, NaN option, window h, window w, vertical pad, horizontal pad, vertical stride, horizontal stride)
  CUDNN_CHECK(cudnnSetPooling2dDescriptor(d.get(), mode, CUDNN_PROPAGATE_NAN, o.kernel_h, o.kernel_w, o.pad_h,
                                          o.pad_w, stride_h(o), stride_w(o)));
}

// y = pool(x) through cuDNN: true when it ran, false when cuDNN does not support the configuration (any status of
// the NOT_SUPPORTED category, e.g. some dtype/layout pair) and the caller takes the own kernels, which compute the
// same thing; any other failure throws.
bool cudnn_pool_forward(cudnnPoolingMode_t mode, const Pool2dOptions& o, const Tensor& x, Tensor& y) {
  const cudnn_util::PoolDesc pd;
  set_pool_desc(pd, mode, o);
  const TensorDesc xd(x, "pool2d"), yd(y, "pool2d");
  const Scalar one(1.0), zero(0.0);
  // y = 1 * pool(x) + 0 * y
  return TL_CUDNN_RAN(cudnnPoolingForward(cuda::cudnn(), pd.get(), one.for_dtype(x.dtype()), xd.get(), x.data(),
                                          zero.for_dtype(x.dtype()), yd.get(), y.data()));
}

// dx (+)= max_pool_backward(y, dy, x) through cuDNN (the forward output y is needed); false when not supported.
bool cudnn_max_backward(const Pool2dOptions& o, const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx,
                        bool add) {
  const cudnn_util::PoolDesc pd;
  set_pool_desc(pd, CUDNN_POOLING_MAX_DETERMINISTIC, o);
  const char* op = "max_pool2d_backward";
  const TensorDesc yd(y, op), dyd(dy, op), xd(x, op), dxd(dx, op);
  const Scalar one(1.0), beta(add ? 1.0 : 0.0);
  // dx = 1 * pool_backward(y, dy, x) + beta * dx  (argument order: y, dy, x, then dx)
  return TL_CUDNN_RAN(cudnnPoolingBackward(cuda::cudnn(), pd.get(), one.for_dtype(x.dtype()), yd.get(), y.data(),
                                           dyd.get(), dy.data(), xd.get(), x.data(), beta.for_dtype(x.dtype()),
                                           dxd.get(), dx.data()));
}

#endif  // TL_WITH_CUDA
// ---------------------------------------------------------------- CPU reference

struct Strides {
  int64_t n, c, h, w;
};
Strides strides_of(Layout l, int64_t C, int64_t H, int64_t W) {
  return l == Layout::NHWC ? Strides{H * W * C, 1, W * C, C} : Strides{C * H * W, H * W, W, 1};
}

// Clipped window of output (oh, ow) for max pooling / the sum of average pooling.
struct Window {
  int64_t hs, he, ws, we;
};
Window clipped_window(const kernels::PoolGeom& g, int64_t oh, int64_t ow) {
  const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  return {std::max<int64_t>(hs, 0), std::min<int64_t>(hs + g.kh, g.H), std::max<int64_t>(ws, 0),
          std::min<int64_t>(ws + g.kw, g.W)};
}
int64_t avg_divisor(const kernels::PoolGeom& g, int64_t oh, int64_t ow, bool count_include_pad) {
  const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  const int64_t he = std::min<int64_t>(hs + g.kh, g.H + g.ph), we = std::min<int64_t>(ws + g.kw, g.W + g.pw);
  if (count_include_pad) return (he - hs) * (we - ws);
  const Window w = clipped_window(g, oh, ow);
  return (w.he - w.hs) * (w.we - w.ws);
}

// Offset (relative to the plane) of the first maximum of a window; NaN counts as the maximum.
template <typename T>
int64_t window_argmax(const T* plane, const Strides& s, const Window& win) {
  T best = -std::numeric_limits<T>::infinity();
  int64_t arg = win.hs * s.h + win.ws * s.w;
  for (int64_t h = win.hs; h < win.he; ++h)
    for (int64_t w = win.ws; w < win.we; ++w) {
      const T v = plane[h * s.h + w * s.w];
      if (v > best || std::isnan(v)) {
        best = v;
        arg = h * s.h + w * s.w;
      }
    }
  return arg;
}

// Calls fn(x_plane_offset, y_offset, oh, ow) over all outputs, images in parallel (an output reads and, in the
// backward passes, writes only its own image), in memory order within an image (channels innermost for NHWC).
template <typename Fn>
void for_each_output(const kernels::PoolGeom& g, const Strides& xs, const Strides& ys, Fn fn) {
  const bool channels_inner = ys.c == 1;
  parallel_for(g.N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      if (channels_inner) {
        for (int64_t oh = 0; oh < g.OH; ++oh)
          for (int64_t ow = 0; ow < g.OW; ++ow)
            for (int64_t c = 0; c < g.C; ++c)
              fn(n * xs.n + c * xs.c, n * ys.n + c * ys.c + oh * ys.h + ow * ys.w, oh, ow);
      } else {
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t oh = 0; oh < g.OH; ++oh)
            for (int64_t ow = 0; ow < g.OW; ++ow)
              fn(n * xs.n + c * xs.c, n * ys.n + c * ys.c + oh * ys.h + ow * ys.w, oh, ow);
      }
    }
  });
}

template <typename T>
void max_forward_cpu(const T* x, T* y, const kernels::PoolGeom& g, Layout l) {
  const Strides xs = strides_of(l, g.C, g.H, g.W), ys = strides_of(l, g.C, g.OH, g.OW);
  for_each_output(g, xs, ys, [&](int64_t xp, int64_t yi, int64_t oh, int64_t ow) {
    y[yi] = x[xp + window_argmax(x + xp, xs, clipped_window(g, oh, ow))];
  });
}
template <typename T>
void max_backward_cpu(const T* x, const T* dy, T* dx, const kernels::PoolGeom& g, Layout l, bool accumulate) {
  if (!accumulate) std::fill(dx, dx + g.N * g.C * g.H * g.W, T(0));
  const Strides xs = strides_of(l, g.C, g.H, g.W), ys = strides_of(l, g.C, g.OH, g.OW);
  for_each_output(g, xs, ys, [&](int64_t xp, int64_t yi, int64_t oh, int64_t ow) {
    dx[xp + window_argmax(x + xp, xs, clipped_window(g, oh, ow))] += dy[yi];
  });
}
template <typename T>
void avg_forward_cpu(const T* x, T* y, const kernels::PoolGeom& g, bool include_pad, Layout l) {
  const Strides xs = strides_of(l, g.C, g.H, g.W), ys = strides_of(l, g.C, g.OH, g.OW);
  for_each_output(g, xs, ys, [&](int64_t xp, int64_t yi, int64_t oh, int64_t ow) {
    const Window win = clipped_window(g, oh, ow);
    T sum = 0;
    for (int64_t h = win.hs; h < win.he; ++h)
      for (int64_t w = win.ws; w < win.we; ++w) sum += x[xp + h * xs.h + w * xs.w];
    y[yi] = sum / static_cast<T>(avg_divisor(g, oh, ow, include_pad));
  });
}
template <typename T>
void avg_backward_cpu(const T* dy, T* dx, const kernels::PoolGeom& g, bool include_pad, Layout l, bool accumulate) {
  if (!accumulate) std::fill(dx, dx + g.N * g.C * g.H * g.W, T(0));
  const Strides xs = strides_of(l, g.C, g.H, g.W), ys = strides_of(l, g.C, g.OH, g.OW);
  for_each_output(g, xs, ys, [&](int64_t xp, int64_t yi, int64_t oh, int64_t ow) {
    const Window win = clipped_window(g, oh, ow);
    const T share = dy[yi] / static_cast<T>(avg_divisor(g, oh, ow, include_pad));
    for (int64_t h = win.hs; h < win.he; ++h)
      for (int64_t w = win.ws; w < win.we; ++w) dx[xp + h * xs.h + w * xs.w] += share;
  });
}

// Adaptive bins [floor(i*in/out), ceil((i+1)*in/out)).
int64_t bin_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
int64_t bin_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

template <typename T>
void adaptive_cpu(const T* x_or_dy, T* y_or_dx, const kernels::PoolGeom& g, Layout l, bool backward,
                  bool accumulate) {
  if (backward && !accumulate) std::fill(y_or_dx, y_or_dx + g.N * g.C * g.H * g.W, T(0));
  const Strides xs = strides_of(l, g.C, g.H, g.W), ys = strides_of(l, g.C, g.OH, g.OW);
  for_each_output(g, xs, ys, [&](int64_t xp, int64_t yi, int64_t oh, int64_t ow) {
    const int64_t hs = bin_start(oh, g.H, g.OH), he = bin_end(oh, g.H, g.OH);
    const int64_t ws = bin_start(ow, g.W, g.OW), we = bin_end(ow, g.W, g.OW);
    const T area = static_cast<T>((he - hs) * (we - ws));
    if (!backward) {
      T sum = 0;
      for (int64_t h = hs; h < he; ++h)
        for (int64_t w = ws; w < we; ++w) sum += x_or_dy[xp + h * xs.h + w * xs.w];
      y_or_dx[yi] = sum / area;
    } else {
      const T share = x_or_dy[yi] / area;
      for (int64_t h = hs; h < he; ++h)
        for (int64_t w = ws; w < we; ++w) y_or_dx[xp + h * xs.h + w * xs.w] += share;
    }
  });
}

void check_pool_input(const Tensor& x, const char* op) {
  check_defined(x, op);
  check_rank(x, 4, op, "the input");
  if (!x.is_cuda()) check_cpu_float(x, op);
}

// dy must be (N, C, OH, OW) for an input of x_shape.
void check_grad_out(const Tensor& dy, const Shape& expected, const char* op) {
  check_defined(dy, op);
  TL_CHECK(dy.shape() == expected, ShapeError, op, ": the output gradient is ", dy.str(), ", expected shape ",
           shape_str(expected));
  if (!dy.is_cuda()) check_cpu_float(dy, op);
}

}  // namespace

// ---------------------------------------------------------------- max pooling

Tensor max_pool2d_forward(const Tensor& x, const Pool2dOptions& o) {
  check_pool_input(x, "max_pool2d");
  const Shape ys = pool2d_output_shape(x.shape(), o);
  Tensor y = Tensor::empty(ys, x.dtype(), x.device(), x.layout());
  const kernels::PoolGeom g = geom_of(x.shape(), ys, o);
  if (y.numel() == 0) return y;
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    if (!cudnn_pooling_takes(x, ys, o) || !cudnn_pool_forward(CUDNN_POOLING_MAX_DETERMINISTIC, o, x, y)) {
      kernels::max_pool2d_forward(x.data(), y.data(), x.dtype(), g, x.layout() == Layout::NHWC, cuda::stream());
    }
#endif
  } else if (x.dtype() == DType::F32) {
    max_forward_cpu(x.data_as<float>(), y.data_as<float>(), g, x.layout());
  } else {
    max_forward_cpu(x.data_as<double>(), y.data_as<double>(), g, x.layout());
  }
  return y;
}

void max_pool2d_backward(const Tensor& x, const Tensor& y, const Tensor& dy_in, const Pool2dOptions& o, Tensor& dx,
                         bool accumulate) {
  const char* op = "max_pool2d_backward";
  check_pool_input(x, op);
  const Shape ys = pool2d_output_shape(x.shape(), o);
  check_grad_out(dy_in, ys, op);
  check_same_dtype_device(x, dy_in, op);
  const Tensor dy = dy_in.layout() == x.layout() ? dy_in : dy_in.to_layout(x.layout());
  const kernels::PoolGeom g = geom_of(x.shape(), ys, o);
  write_grad(dx, grad_spec_like(x), x.layout(), accumulate, op, [&](Tensor& out, bool add) {
    if (x.numel() == 0) return;
    if (x.is_cuda()) {
#if TL_WITH_CUDA
      bool done = false;
      if (cudnn_pooling_takes(x, ys, o) && y.defined()) {  // cuDNN needs the forward output y
        check_same_shape(y, dy, op);
        check_same_dtype_device(x, y, op);
        done = cudnn_max_backward(o, x, y.layout() == x.layout() ? y : y.to_layout(x.layout()), dy, out, add);
      }
      if (!done)
        kernels::max_pool2d_backward(x.data(), dy.data(), out.data(), x.dtype(), g, x.layout() == Layout::NHWC, add,
                                     cuda::stream());
#endif
    } else if (x.dtype() == DType::F32) {
      max_backward_cpu(x.data_as<float>(), dy.data_as<float>(), out.data_as<float>(), g, x.layout(), add);
    } else {
      max_backward_cpu(x.data_as<double>(), dy.data_as<double>(), out.data_as<double>(), g, x.layout(), add);
    }
  });
}

Variable max_pool2d(const Variable& x, const Pool2dOptions& o) {
  Tensor y = max_pool2d_forward(x.value(), o);
  if (!should_record({&x})) return Variable(y);
  const Tensor xs = x.value();
  // y is needed only by cuDNN's backward; the CPU and the own kernels recompute the argmax from x.
  const Tensor ys = cudnn_pooling_takes(xs, y.shape(), o) ? y : Tensor();
  return record_op("max_pool2d", y, {&x}, bytes_of({xs, ys}), [xs, ys, o](const Tensor& dy, std::vector<GradSlot>& s) {
    if (s[0].needed) max_pool2d_backward(xs, ys, dy, o, s[0].grad, s[0].accumulate);
  });
}

// ---------------------------------------------------------------- average pooling

Tensor avg_pool2d_forward(const Tensor& x, const Pool2dOptions& o) {
  check_pool_input(x, "avg_pool2d");
  const Shape ys = pool2d_output_shape(x.shape(), o);
  Tensor y = Tensor::empty(ys, x.dtype(), x.device(), x.layout());
  const kernels::PoolGeom g = geom_of(x.shape(), ys, o);
  if (y.numel() == 0) return y;
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    const cudnnPoolingMode_t mode = o.count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                                        : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    if (!cudnn_pooling_takes(x, ys, o) || !cudnn_pool_forward(mode, o, x, y)) {
      kernels::avg_pool2d_forward(x.data(), y.data(), x.dtype(), g, o.count_include_pad, x.layout() == Layout::NHWC,
                                  cuda::stream());
    }
#endif
  } else if (x.dtype() == DType::F32) {
    avg_forward_cpu(x.data_as<float>(), y.data_as<float>(), g, o.count_include_pad, x.layout());
  } else {
    avg_forward_cpu(x.data_as<double>(), y.data_as<double>(), g, o.count_include_pad, x.layout());
  }
  return y;
}

void avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, const Pool2dOptions& o, Tensor& dx,
                         bool accumulate) {
  const char* op = "avg_pool2d_backward";
  const Shape ys = pool2d_output_shape(x_shape, o);
  check_grad_out(dy, ys, op);
  const kernels::PoolGeom g = geom_of(x_shape, ys, o);
  const GradSpec spec{x_shape, dy.dtype(), dy.device(), dy.layout()};
  write_grad(dx, spec, dy.layout(), accumulate, op, [&](Tensor& out, bool add) {
    if (out.numel() == 0) return;
    if (dy.is_cuda()) {
#if TL_WITH_CUDA
      kernels::avg_pool2d_backward(dy.data(), out.data(), dy.dtype(), g, o.count_include_pad,
                                   dy.layout() == Layout::NHWC, add, cuda::stream());
#endif
    } else if (dy.dtype() == DType::F32) {
      avg_backward_cpu(dy.data_as<float>(), out.data_as<float>(), g, o.count_include_pad, dy.layout(), add);
    } else {
      avg_backward_cpu(dy.data_as<double>(), out.data_as<double>(), g, o.count_include_pad, dy.layout(), add);
    }
  });
}

Variable avg_pool2d(const Variable& x, const Pool2dOptions& o) {
  Tensor y = avg_pool2d_forward(x.value(), o);
  if (!should_record({&x})) return Variable(y);
  const Shape xs = x.shape();
  return record_op("avg_pool2d", y, {&x}, 0, [xs, o](const Tensor& dy, std::vector<GradSlot>& s) {
    if (s[0].needed) avg_pool2d_backward(dy, xs, o, s[0].grad, s[0].accumulate);
  });
}

// ---------------------------------------------------------------- adaptive average pooling

namespace {
Shape adaptive_output_shape(const Shape& x, int64_t out_h, int64_t out_w, const char* op) {
  TL_CHECK(x.size() == 4, ShapeError, op, ": the input must be 4-D (N, C, H, W), got ", shape_str(x));
  TL_CHECK(out_h >= 1 && out_w >= 1, ShapeError, op, ": output size (", out_h, ", ", out_w, ") must be positive");
  TL_CHECK(x[2] >= 1 && x[3] >= 1, ShapeError, op, ": empty spatial dimensions in ", shape_str(x));
  return {x[0], x[1], out_h, out_w};
}
}  // namespace

Tensor adaptive_avg_pool2d_forward(const Tensor& x, int64_t out_h, int64_t out_w) {
  check_pool_input(x, "adaptive_avg_pool2d");
  const Shape ys = adaptive_output_shape(x.shape(), out_h, out_w, "adaptive_avg_pool2d");
  Tensor y = Tensor::empty(ys, x.dtype(), x.device(), x.layout());
  if (y.numel() == 0) return y;
  const kernels::PoolGeom g{ys[0], ys[1], x.size(2), x.size(3), out_h, out_w, 1, 1, 1, 1, 0, 0};
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    kernels::adaptive_avg_pool2d_forward(x.data(), y.data(), x.dtype(), g.N, g.C, g.H, g.W, g.OH, g.OW,
                                         x.layout() == Layout::NHWC, cuda::stream());
#endif
  } else if (x.dtype() == DType::F32) {
    adaptive_cpu(x.data_as<float>(), y.data_as<float>(), g, x.layout(), false, false);
  } else {
    adaptive_cpu(x.data_as<double>(), y.data_as<double>(), g, x.layout(), false, false);
  }
  return y;
}

void adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, Tensor& dx, bool accumulate) {
  const char* op = "adaptive_avg_pool2d_backward";
  check_defined(dy, op);
  check_rank(dy, 4, op, "the output gradient");
  const Shape ys = adaptive_output_shape(x_shape, dy.size(2), dy.size(3), op);
  check_grad_out(dy, ys, op);
  const kernels::PoolGeom g{ys[0], ys[1], x_shape[2], x_shape[3], ys[2], ys[3], 1, 1, 1, 1, 0, 0};
  const GradSpec spec{x_shape, dy.dtype(), dy.device(), dy.layout()};
  write_grad(dx, spec, dy.layout(), accumulate, op, [&](Tensor& out, bool add) {
    if (out.numel() == 0) return;
    if (dy.is_cuda()) {
#if TL_WITH_CUDA
      kernels::adaptive_avg_pool2d_backward(dy.data(), out.data(), dy.dtype(), g.N, g.C, g.H, g.W, g.OH, g.OW,
                                            dy.layout() == Layout::NHWC, add, cuda::stream());
#endif
    } else if (dy.dtype() == DType::F32) {
      adaptive_cpu(dy.data_as<float>(), out.data_as<float>(), g, dy.layout(), true, add);
    } else {
      adaptive_cpu(dy.data_as<double>(), out.data_as<double>(), g, dy.layout(), true, add);
    }
  });
}

Variable adaptive_avg_pool2d(const Variable& x, int64_t out_h, int64_t out_w) {
  Tensor y = adaptive_avg_pool2d_forward(x.value(), out_h, out_w);
  if (!should_record({&x})) return Variable(y);
  const Shape xs = x.shape();
  return record_op("adaptive_avg_pool2d", y, {&x}, 0, [xs](const Tensor& dy, std::vector<GradSlot>& s) {
    if (s[0].needed) adaptive_avg_pool2d_backward(dy, xs, s[0].grad, s[0].accumulate);
  });
}

}  // namespace tl
