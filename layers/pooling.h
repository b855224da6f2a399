// 2-D pooling: max pool, average pool and adaptive average pool over (N, C, H, W) tensors (NCHW or NHWC).
//
// Semantics are PyTorch's (torch.nn.functional.max_pool2d / avg_pool2d / adaptive_avg_pool2d, dilation 1):
//   output size  out = floor((in + 2*pad - k + (ceil_mode ? stride - 1 : 0)) / stride) + 1, and in ceil mode
//                the last window must start inside the input or the left padding: if (out-1)*stride >= in + pad,
//                out -= 1. Requires k > 0, stride > 0, 0 <= pad <= k/2, out >= 1.
//   max pool     window (oh, ow) = rows [oh*s - pad, oh*s - pad + k) clipped to the input (padding never wins).
//                Backward routes dy to the FIRST maximum of the window (row-major), as PyTorch does.
//   avg pool     sum of the clipped window / divisor; divisor = size of the window clipped to the padded input
//                [-pad, in + pad) when count_include_pad, else of the window clipped to the input.
//   adaptive     output bin i of a dimension in -> out covers [floor(i*in/out), ceil((i+1)*in/out)) (bins may
//                overlap when in % out != 0); the mean over the bin. out = 1 gives the global mean.
//
//   forward   max_pool2d_forward(x, o) -> y                 backward  max_pool2d_backward(x, y, dy, o, dx, acc)
//             avg_pool2d_forward(x, o) -> y                           avg_pool2d_backward(dy, x_shape, o, dx, acc)
//             adaptive_avg_pool2d_forward(x, oh, ow) -> y             adaptive_avg_pool2d_backward(dy, x_shape, dx, acc)
//   dx has x's shape and dtype/device; its layout is x's for max pooling (dy is converted if it differs) and dy's
//   for the average poolings (a fresh dx takes that layout; one accumulated into may have either layout).
//
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS dx (allocated when undefined or
// unusable), accumulate == true ADDS into the existing dx.
//
// Implementations. CPU: plain loops in float32/float64 (max-pool backward recomputes the argmax from x).
// CUDA (float32/float64/bfloat16/float16, NCHW and NHWC):
//   max pool: cuDNN (cudnnPoolingForward/Backward, CUDNN_POOLING_MAX_DETERMINISTIC; backward needs x and y).
//   avg pool: cuDNN forward (CUDNN_POOLING_AVERAGE_COUNT_{INCLUDE,EXCLUDE}_PADDING); backward is our own gather
//             kernel (kernels/pooling.cu) because it needs neither x nor y, so autograd saves nothing for it.
//   ceil_mode: cuDNN has no ceil mode (its output size is always the floor one and its padding symmetric). When
//             ceil_mode changes the output size, max and avg pooling run on our own direct kernels
//             (kernels/pooling.cu), which implement PyTorch's windows above exactly; otherwise cuDNN is used.
//   bfloat16 and tensors of more than 2^31 elements always run the own kernels; should cuDNN answer any status of
//   the NOT_SUPPORTED category (cuDNN 9 sub-codes 3000-3999) for a dtype/layout, the same own kernels run instead.
//   adaptive avg pool: own kernels (the 1x1 NCHW case is a warp-reduced per-channel mean).
// Autograd: max_pool2d saves x (and y where CUDA takes the cuDNN path); avg_pool2d and adaptive_avg_pool2d save
// nothing.
#pragma once
#include "core/autograd.h"

namespace tl {

struct Pool2dOptions {
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 0, stride_w = 0;  // 0: equal to the kernel size (PyTorch's stride=None)
  int pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // average pooling only
};
// Square window helper: stride <= 0 means stride = kernel (as PyTorch).
Pool2dOptions pool2d_options(int kernel, int stride = 0, int pad = 0, bool ceil_mode = false,
                             bool count_include_pad = true);

// PyTorch's output length of one spatial dimension (see above); throws ShapeError when invalid.
int64_t pool_output_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode);
// (N, C, OH, OW) for a 4-D input shape; validates the options.
Shape pool2d_output_shape(const Shape& x_shape, const Pool2dOptions& o);

Tensor max_pool2d_forward(const Tensor& x, const Pool2dOptions& o);
// y is the forward output, used by cuDNN's backward on CUDA. It may be undefined: the CPU never needs it, and on
// CUDA our own kernel then recomputes each window's argmax from x instead.
void max_pool2d_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Pool2dOptions& o, Tensor& dx,
                         bool accumulate);
Tensor avg_pool2d_forward(const Tensor& x, const Pool2dOptions& o);
void avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, const Pool2dOptions& o, Tensor& dx, bool accumulate);
Tensor adaptive_avg_pool2d_forward(const Tensor& x, int64_t out_h, int64_t out_w);
void adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, Tensor& dx, bool accumulate);

Variable max_pool2d(const Variable& x, const Pool2dOptions& o);
Variable avg_pool2d(const Variable& x, const Pool2dOptions& o);
Variable adaptive_avg_pool2d(const Variable& x, int64_t out_h, int64_t out_w);

}  // namespace tl
