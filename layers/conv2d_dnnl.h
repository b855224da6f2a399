// The fast CPU path of conv2d (float32): oneDNN's convolution primitives, the library PyTorch's CPU
// convolutions use. Internal to layers/conv2d.cpp, which does the shape checks and the gradient contract.
//
// Tensors are given to oneDNN in their own plain layout (x, y, dy, dx: NCHW = nchw or NHWC = nhwc; w, dw:
// oihw or ohwi); oneDNN picks its kernel and reorders only the weights to its blocked format. NHWC activations
// need no reorder and get oneDNN's fastest CPU kernels (brgconv on AVX-512, jit on AVX2), so the CPU runs
// float32 models in NHWC (train/trainer.cpp, Precision). Threads: the process's OpenMP pool (core/parallel.h).
// The reference (im2col + GEMM in conv2d.cpp) stays the float64 path and the one this path is tested against.
#pragma once
#include "core/tensor.h"
#include "layers/conv2d.h"

namespace tl::dnnl_conv {

// Whether this build has the oneDNN path and `t` is a float32 CPU tensor it takes.
bool takes(const Tensor& t);

// y = conv(x, w) + bias (bias may be undefined); y is allocated by the caller (x's layout).
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Conv2dOptions& o);
// dx = conv_transpose(dy, w) (overwrites dx).
void backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dOptions& o);
// dw = sum over the batch of dy (*) x (overwrites dw).
void backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o);

}  // namespace tl::dnnl_conv
