// The direct CPU loop of depthwise convolution (MobileNet V2, ShuffleNet V2, MNASNet): conv2d with
// groups == C (one input channel per group), w (K, 1, R, S) for any channel multiplier m = K / C (output channel
// k reads input channel k / m), any kernel, stride, padding and dilation. Internal to layers/conv2d.cpp, which
// does the shape checks and the gradient contract and dispatches here:
//   float64 (the reference path) always: im2col + GEMM per group would run C tiny GEMMs per image;
//   float32 when this build has no oneDNN, or when preferred_over_dnnl() says so (measured, bench/NOTES.md).
//
// Layouts: x, y, dx, dy NCHW or NHWC (dx and y take the layout of dy and x, which the caller makes agree);
// w and dw (K, 1, R, S) have the same memory order in both layouts (oihw == ohwi when C/groups == 1).
// Threads (core/parallel.h): forward and data gradient split their outputs into disjoint ranges (NCHW: planes,
// NHWC: rows); every output sums its terms in a fixed order. The weight gradient sums fixed blocks (NCHW: one
// image of one channel, NHWC: a fixed number of rows of all channels; both independent of the thread count) in
// float32/float64 and adds the blocks in a fixed order in double. Results are identical for any thread count.
#pragma once
#include "core/tensor.h"
#include "layers/conv2d.h"

namespace tl::depthwise_conv {

// Whether (x, w, o) is a depthwise problem this loop takes: groups == C > 1, w (K, 1, R, S) with K % C == 0.
bool applies(const Shape& x_shape, const Shape& w_shape, const Conv2dOptions& o);
// For float32 with oneDNN: whether this loop is faster than oneDNN for the problem in `layout` (forward and both
// gradients together; the rule and the numbers behind it are in bench/NOTES.md).
bool preferred_over_dnnl(const Shape& x_shape, const Shape& w_shape, const Conv2dOptions& o, Layout layout);

// y = conv(x, w) + bias (bias may be undefined); y allocated by the caller in x's layout.
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Conv2dOptions& o);
// dx (+)= conv_transpose(dy, w); dx in dy's layout (+= when accumulate).
void backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dOptions& o, bool accumulate);
// dw (+)= sum over the batch of dy (*) x; dy in x's layout (+= when accumulate).
void backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o, bool accumulate);

}  // namespace tl::depthwise_conv
