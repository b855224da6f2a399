// Concatenation along one dimension (DenseNet's channel concatenation: dim 1 of (N, C, H, W), NCHW or NHWC;
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
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS dx (allocated when undefined),
// accumulate == true ADDS into the existing dx.
#pragma once
#include <vector>

#include "core/autograd.h"

namespace tl {
Tensor concat_forward(const std::vector<Tensor>& xs, int dim = 1);
void concat_backward(const Tensor& dy, int dim, int64_t start, int64_t length, Tensor& dx, bool accumulate);
Variable concat(const std::vector<Variable>& xs, int dim = 1);
}  // namespace tl
