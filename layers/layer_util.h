// Small helpers shared by the op implementations in layers/: argument checks and gradient-output handling.
#pragma once
#include "core/autograd.h"
#include "core/tensor.h"

namespace tl {

// CPU reference paths compute in float32 or float64 only.
inline void check_cpu_float(const Tensor& t, const char* op) {
  TL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, DTypeError, op, ": the CPU path supports float32 and "
           "float64, got ", t.str(), " (bfloat16/float16 run on CUDA)");
}
inline void check_rank(const Tensor& t, int rank, const char* op, const char* what) {
  TL_CHECK(t.ndim() == rank, ShapeError, op, ": ", what, " must be ", rank, "-D, got ", t.str());
}

// Prepares a gradient output for the contract used by every backward function in layers/:
//   accumulate == false: `grad` is overwritten (allocated like `like` if undefined);
//   accumulate == true:  `grad` must hold a tensor shaped like `like`, and the op adds into it.
inline void prepare_grad(Tensor& grad, const Tensor& like, bool accumulate, const char* op) {
  if (accumulate) {
    TL_CHECK(grad.defined(), ValueError, op, ": accumulate=true needs an existing gradient tensor");
    check_same_shape(grad, like, op);
    check_same_dtype_device(grad, like, op);
  } else if (!grad.defined() || grad.shape() != like.shape() || grad.dtype() != like.dtype() ||
             grad.device() != like.device() || grad.layout() != like.layout() || !grad.is_unique()) {
    grad = Tensor::empty(like.shape(), like.dtype(), like.device(), like.layout());
  }
}

}  // namespace tl
