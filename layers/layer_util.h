// Small helpers shared by the op implementations in layers/: argument checks and the one gradient-output helper
// (prepare_grad / write_grad) behind the assign/accumulate contract.
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

// What a gradient output must be: shape, dtype, device, and the layout a fresh one is allocated in (4-D only).
struct GradSpec {
  Shape shape;
  DType dtype;
  Device device;
  Layout layout = Layout::NCHW;
};
inline GradSpec grad_spec_like(const Tensor& t) { return {t.shape(), t.dtype(), t.device(), t.layout()}; }

// Prepares a gradient output under the contract used by every backward function in layers/:
//   accumulate == false: `grad` is overwritten: reused when it matches `spec` (layout included) and holds its
//                        storage alone, else allocated as `spec`;
//   accumulate == true:  `grad` must exist with spec's shape, dtype and device (any layout), and the op adds
//                        into it (write_grad below handles a layout that differs from the one computed in).
inline void prepare_grad(Tensor& grad, const GradSpec& spec, bool accumulate, const char* op) {
  const Layout layout = spec.shape.size() == 4 ? spec.layout : Layout::NCHW;
  if (accumulate) {
    TL_CHECK(grad.defined(), ValueError, op, ": accumulate=true needs an existing gradient tensor");
    TL_CHECK(grad.shape() == spec.shape, ShapeError, op, ": the gradient to accumulate into is ", grad.str(),
             ", expected shape ", shape_str(spec.shape));
    TL_CHECK(grad.dtype() == spec.dtype, DTypeError, op, ": the gradient to accumulate into is ", grad.str(),
             ", expected ", dtype_name(spec.dtype));
    TL_CHECK(grad.device() == spec.device, ValueError, op, ": the gradient to accumulate into is ", grad.str(),
             ", expected it on ", device_name(spec.device));
  } else if (!grad.defined() || grad.shape() != spec.shape || grad.dtype() != spec.dtype ||
             grad.device() != spec.device || grad.layout() != layout || !grad.is_unique()) {
    grad = Tensor::empty(spec.shape, spec.dtype, spec.device, layout);
  }
}
inline void prepare_grad(Tensor& grad, const Tensor& like, bool accumulate, const char* op) {
  prepare_grad(grad, grad_spec_like(like), accumulate, op);
}

// Prepares `grad` (prepare_grad) and runs compute(out, add) on a tensor in `compute_layout`: on `grad` itself when
// its layout is that one (add == accumulate: compute adds into out, e.g. with beta = 1), else on a fresh tensor
// that is then copied or added into `grad`.
template <typename F>
void write_grad(Tensor& grad, const GradSpec& spec, Layout compute_layout, bool accumulate, const char* op,
                F&& compute) {
  prepare_grad(grad, spec, accumulate, op);
  if (spec.shape.size() != 4 || grad.layout() == compute_layout) {
    compute(grad, accumulate);
    return;
  }
  Tensor tmp = Tensor::empty(spec.shape, spec.dtype, spec.device, compute_layout);
  compute(tmp, false);
  if (accumulate) grad.add_(tmp.to_layout(grad.layout()));
  else grad.copy_(tmp);
}

}  // namespace tl
