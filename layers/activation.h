// ReLU: y = max(x, 0).
//   forward   relu_forward(x) -> y
//   backward  relu_backward(y, dy, dx, accumulate): dx = dy * (y > 0)
//   CPU code in layers/activation.cpp; CUDA kernels in kernels/activation.cu.
//   Autograd: relu(x) saves only y (the mask is y > 0), and nothing when x needs no gradient.
//
// Gradient contract (the same for every backward function in layers/):
//   accumulate == false: the gradient output is ASSIGNED (allocated when undefined, else overwritten);
//   accumulate == true:  the gradient is ADDED into the existing gradient output.
#pragma once
#include "core/autograd.h"

namespace tl {
Tensor relu_forward(const Tensor& x);
void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate);
Variable relu(const Variable& x);
}  // namespace tl
