// Element-wise add and flatten.
//   add_forward(a, b) -> a + b              (same shape, dtype, device, layout)
//     backward: da = dy, db = dy            (assigned by aliasing dy, or added into an existing gradient)
//   add(a, b, alpha) -> a + alpha * b       (a weighted loss sum: main + 0.4 * auxiliary)
//     backward: da = dy, db = alpha * dy    (Tensor::add_, so on every device)
//   cast(x, dtype): y = x converted; dx = dy converted back.
//   flatten(x, start_dim=1): (N, C, H, W) -> (N, C*H*W), a view; backward reshapes dy back.
//   CPU code in layers/elementwise.cpp; CUDA kernels in kernels/tensor_kernels.cu.
// Gradient contract: see layers/activation.h (accumulate=false assigns, true adds).
#pragma once
#include "core/autograd.h"

namespace tl {
Tensor add_forward(const Tensor& a, const Tensor& b);
Variable add(const Variable& a, const Variable& b);
Variable add(const Variable& a, const Variable& b, double alpha);
Variable flatten(const Variable& x, int start_dim = 1);
// Converts to `dtype` (mixed precision: float32 master weights used in bfloat16); backward converts the gradient
// back to the input's dtype. Returns x itself when it already has that dtype.
Variable cast(const Variable& x, DType dtype);
}  // namespace tl
