// Dropout (inverted): y = x * mask / (1 - p) in training, y = x in evaluation or when p == 0.
//   mask(i) = keep_element(seed, offset, i, drop_threshold(p)) from kernels/random_hash.h, i = the element's
//   logical (row-major NCHW) index: a pure function of (seed, offset, index), identical on the CPU and on CUDA
//   and independent of the layout. Use a fresh (seed, offset) per call, e.g. advance offset by x.numel().
//   p == 1 drops everything (y = 0, as PyTorch).
//   forward   dropout_forward(x, p, seed, offset) -> y                (training mode; p in [0, 1])
//   backward  dropout_backward(dy, p, seed, offset, dx, accumulate): dx = dy * mask / (1 - p)
//             (the mask is regenerated from (seed, offset), nothing is saved).
//   Autograd: dropout(x, p, training, seed, offset) returns x itself when !training or p == 0 (no tape entry).
//
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS dx (allocated when undefined),
// accumulate == true ADDS into the existing dx.
#pragma once
#include <cstdint>

#include "core/autograd.h"

namespace tl {
Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset);
void dropout_backward(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx, bool accumulate);
Variable dropout(const Variable& x, double p, bool training, uint64_t seed, uint64_t offset);
}  // namespace tl
