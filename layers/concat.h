// Concatenation and narrowing along one dimension (DenseNet's channel concatenation: dim 1 of (N, C, H, W), NCHW or NHWC;
// also dim 1 of (N, F) features, or any dim of any rank).
//   forward   concat_forward(xs, dim) -> y: all inputs have the same rank, dtype, device and layout, and equal
//             sizes except along `dim` (negative dims count from the end).
//   backward  concat_backward(dy, dim, start, length, dx, accumulate): dx = dy's slice [start, start + length)
//             along dim (the part that came from one input).
//   Autograd: concat(xs, dim) saves nothing (only the split points) and slices the gradient back to exactly the
//   inputs that need one.
//   CPU: row-block memcpy (add loops when accumulating). CUDA: kernels/concat.cu strided copy, one launch per
//   input, no host synchronisation. Every layout is handled as one strided copy per input: in memory the
//   concatenated dimension splits each "row" (the dims before it in memory order) into per-input blocks.
//
// Narrowing, concatenation's inverse (ShuffleNet V2's x.chunk(2, dim=1) is split_channels(x, {C/2, C/2})):
//   forward   narrow_forward(x, dim, start, length) -> y: the slice [start, start + length) of x along dim, a copy
//             in x's layout (the slice concat_backward takes).
//   backward  narrow_backward(dy, x_shape, dim, start, dx, accumulate): dx (x_shape) = dy inside the slice, 0
//             elsewhere; accumulate == true adds dy into the slice of dx and leaves the rest of dx as it is.
//             dx takes dy's layout; an accumulated-into 4-D dx of the other layout gets dy converted.
//   Autograd: narrow(x, dim, start, length), narrow_channels(x, start, length) (dim 1), and
//   split_channels(x, sizes) (one narrow per part; sizes >= 0 add up to C) save nothing. When several parts of
//   one x need gradients, the first part's backward assigns dx (zeros around its slice), the others add into it.
//   CPU and CUDA use the same strided block copy as concat.
//
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS dx (allocated when undefined),
// accumulate == true ADDS into the existing dx.
#pragma once
#include <vector>

#include "core/autograd.h"

namespace tl {
Tensor concat_forward(const std::vector<Tensor>& xs, int dim = 1);
void concat_backward(const Tensor& dy, int dim, int64_t start, int64_t length, Tensor& dx, bool accumulate);
Variable concat(const std::vector<Variable>& xs, int dim = 1);

Tensor narrow_forward(const Tensor& x, int dim, int64_t start, int64_t length);
void narrow_backward(const Tensor& dy, const Shape& x_shape, int dim, int64_t start, Tensor& dx, bool accumulate);
Variable narrow(const Variable& x, int dim, int64_t start, int64_t length);
Variable narrow_channels(const Variable& x, int64_t start, int64_t length);
std::vector<Variable> split_channels(const Variable& x, const std::vector<int64_t>& sizes);
}  // namespace tl
