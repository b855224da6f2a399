// ReLU: y = max(x, 0).
//   forward   relu_forward(x) -> y
//   backward  relu_backward(y, dy, dx, accumulate): dx = dy * (y > 0)
//   CPU code in layers/activation.cpp; CUDA kernels in kernels/activation.cu.
//   Autograd: relu(x) saves only y (the mask is y > 0), and nothing when x needs no gradient.
//
// ReLU6 (MobileNet V2): y = min(max(x, 0), 6), PyTorch's relu6 = hardtanh(x, 0, 6).
//   forward   relu6_forward(x) -> y
//   backward  relu6_backward(y, dy, dx, accumulate): dx = dy * (0 < y < 6), PyTorch's hardtanh backward (gradient
//             0 at and beyond both kinks). 0 < y < 6 exactly where 0 < x < 6, so y alone is saved, as for ReLU.
//   Any shape and layout (elementwise: dx takes y's layout; dy must have it too). CPU float32/float64; CUDA
//   float32/float64/bfloat16/float16 (kernels/activation.cu).
//   Autograd: relu6(x) saves only y, and nothing when x needs no gradient.
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
Tensor relu6_forward(const Tensor& x);
void relu6_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate);
Variable relu6(const Variable& x);
}  // namespace tl
