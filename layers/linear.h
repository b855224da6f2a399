// Linear (fully connected) layer: y = x w^T + b, PyTorch's nn.Linear convention.
//   x: (N, in), w: (out, in), bias: (out) or an undefined Tensor; all the same dtype and device.
//   forward   linear_forward(x, w, bias) -> y (N, out)
//   backward  linear_backward_data(dy, w, dx, accumulate):   dx = dy w        (N, in)
//             linear_backward_weight(dy, x, dw, accumulate): dw = dy^T x      (out, in)
//             linear_backward_bias(dy, db, accumulate):      db = sum_n dy[n] (out)
//   CPU: OpenBLAS sgemm/dgemm (float32, float64). CUDA: cublasGemmEx (float32 with CUBLAS_COMPUTE_32F, or
//   CUBLAS_COMPUTE_32F_FAST_TF32 when cuda::allow_tf32_matmul(); bfloat16/float16 with float32 compute;
//   float64), bias broadcast and bias gradient (deterministic column sum) in kernels/linear.cu.
//   Autograd: linear(x, w, bias) saves x only if w needs a gradient and w only if x needs one; the bias
//   gradient needs nothing saved.
//
// Gradient contract (the same for every backward function in layers/):
//   accumulate == false: the gradient output is ASSIGNED (allocated when undefined, else overwritten);
//   accumulate == true:  the gradient is ADDED into the existing gradient output (cuBLAS beta = 1).
#pragma once
#include "core/autograd.h"

namespace tl {
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);
void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate);
void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, bool accumulate);
void linear_backward_bias(const Tensor& dy, Tensor& db, bool accumulate);
// `bias` may be an undefined Variable (no bias).
Variable linear(const Variable& x, const Variable& w, const Variable& bias = Variable());
}  // namespace tl
