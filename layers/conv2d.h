// 2-D convolution (cross-correlation, as PyTorch's nn.Conv2d) with stride, zero padding, dilation and groups.
//   x: (N, C, H, W)   w: (K, C/groups, R, S)   bias: (K) or undefined   y: (N, K, Ho, Wo)
//   Ho = floor((H + 2*pad_h - dilation_h*(R-1) - 1) / stride_h) + 1, the same for Wo.
//   forward   conv2d_forward(x, w, bias)                        -> y = conv(x, w) + bias
//   backward  conv2d_backward_data(dy, w, x_shape, dx, ...)     dx = conv_transpose(dy, w)
//             conv2d_backward_weight(dy, x, dw, ...)            dw = sum over n of dy (*) x
//             conv2d_backward_bias(dy, db, ...)                 db[k] = sum over n, h, w of dy[:, k]
//   CPU: float32 through oneDNN when built with it (conv2d_dnnl.h), else and for float64 (the reference)
//   im2col per group + GEMM (core/blas.h); depthwise problems (groups == C, w (K, 1, R, S)) run a direct loop in
//   either layout (conv2d_depthwise.h) in float64, and in float32 where it beats oneDNN (bench/NOTES.md).
//   CUDA (float32, bfloat16, float16 with float accumulation; float64): cuDNN with an algorithm cache; bias
//   kernels in kernels/conv2d.cu.
//   Layouts: y takes x's layout, dx takes dy's layout. On CUDA, x, w and y are given to cuDNN in one layout
//   (x's for forward and weight gradient, dy's for data gradient); other tensors are converted to it.
//   Autograd: conv2d(x, w, bias) saves x only if w needs a gradient and w only if x needs a gradient, and
//   computes each gradient only for the inputs that need one.
//
// Gradient contract (the same for every backward function in layers/):
//   accumulate == false: the gradient output is ASSIGNED (allocated when undefined, else overwritten);
//   accumulate == true:  the gradient is ADDED into the existing gradient output.
#pragma once
#include "core/autograd.h"

namespace tl {

struct Conv2dOptions {
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1, groups = 1;
};

// The output shape (N, K, Ho, Wo); throws ShapeError naming both shapes when x and w do not fit.
Shape conv2d_output_shape(const Shape& x_shape, const Shape& w_shape, const Conv2dOptions& o);

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& o);
void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, Tensor& dx,
                          const Conv2dOptions& o, bool accumulate);
// The weight shape is dw's when dw is defined, else inferred from dy and x (ValueError when the kernel size
// is ambiguous, e.g. stride 2: use the overload that takes w_shape).
void conv2d_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o, bool accumulate);
void conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape, Tensor& dw,
                            const Conv2dOptions& o, bool accumulate);
void conv2d_backward_bias(const Tensor& dy, Tensor& db, bool accumulate);

// The activation layout float32 models run in on the CPU: NHWC when this build has oneDNN (its fastest CPU
// kernels take NHWC without reorders; see conv2d_dnnl.h), else NCHW (the reference path's own layout).
Layout conv2d_cpu_float32_layout();

// Records op "conv2d". `bias` may be an undefined Variable().
Variable conv2d(const Variable& x, const Variable& w, const Variable& bias, const Conv2dOptions& o = {});

}  // namespace tl
