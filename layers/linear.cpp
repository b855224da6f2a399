// Linear layer: CPU reference (OpenBLAS), CUDA dispatch (cuBLAS + kernels/linear.cu) and autograd (see linear.h).
#include "layers/linear.h"

#include "core/blas.h"
#include "core/device.h"
#if TL_WITH_CUDA
#include "kernels/linear.h"
#endif
#include "layers/layer_util.h"
#include "layers/mac_counter.h"

namespace tl {
namespace {
// Row-major C (M x N) = op(A) op(B) + beta C on the CPU, float32 or float64 (core/blas.h).
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Tensor& A, int64_t lda,
              const Tensor& B, int64_t ldb, double beta, Tensor& C, int64_t ldc) {
  if (C.dtype() == DType::F32)
    cpu::gemm(trans_a, trans_b, M, N, K, A.data_as<float>(), lda, B.data_as<float>(), ldb, static_cast<float>(beta),
              C.data_as<float>(), ldc);
  else
    cpu::gemm(trans_a, trans_b, M, N, K, A.data_as<double>(), lda, B.data_as<double>(), ldb, beta,
              C.data_as<double>(), ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Tensor& A, int64_t lda, const Tensor& B,
          int64_t ldb, double beta, Tensor& C, int64_t ldc) {
  if (C.is_cuda()) {
#if TL_WITH_CUDA
    kernels::gemm_rowmajor(cuda::cublas(), trans_a, trans_b, M, N, K, A.data(), lda, B.data(), ldb, beta, C.data(),
                           ldc, C.dtype(), cuda::allow_tf32_matmul());
#endif
  } else {
    gemm_cpu(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
  }
}

void check_float(const Tensor& t, const char* op) {
  if (!t.is_cuda()) check_cpu_float(t, op);
  TL_CHECK(t.dtype() != DType::I32, DTypeError, op, ": expected a floating-point tensor, got ", t.str());
}

// dy must be (N, out) with the dtype/device of `like`.
void check_dy(const Tensor& dy, const Tensor& like, const char* op) {
  check_defined(dy, op);
  check_rank(dy, 2, op, "dy");
  check_same_dtype_device(dy, like, op);
  check_float(dy, op);
}
}  // namespace

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_defined(x, "linear x");
  check_defined(w, "linear w");
  check_rank(x, 2, "linear", "x (N, in_features)");
  check_rank(w, 2, "linear", "w (out_features, in_features)");
  TL_CHECK(x.size(1) == w.size(1), ShapeError, "linear: x ", shape_str(x.shape()), " has ", x.size(1),
           " features but w ", shape_str(w.shape()), " expects ", w.size(1));
  check_same_dtype_device(x, w, "linear x/w");
  check_float(x, "linear");
  const int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  Tensor y = Tensor::empty({N, out}, x.dtype(), x.device());
  double beta = 0.0;
  if (bias.defined()) {
    TL_CHECK(bias.ndim() == 1 && bias.size(0) == out, ShapeError, "linear: bias ", shape_str(bias.shape()),
             " does not match w ", shape_str(w.shape()), " (expected [", out, "])");
    check_same_dtype_device(bias, x, "linear bias/x");
    // y = broadcast(bias), then the GEMM adds x w^T into it.
    if (x.is_cuda()) {
#if TL_WITH_CUDA
      kernels::bias_broadcast(bias.data(), y.data(), y.dtype(), N, out, cuda::stream());
#endif
    } else if (x.dtype() == DType::F32) {
      const float* b = bias.data_as<float>();
      float* py = y.data_as<float>();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out; ++o) py[n * out + o] = b[o];
    } else {
      const double* b = bias.data_as<double>();
      double* py = y.data_as<double>();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out; ++o) py[n * out + o] = b[o];
    }
    beta = 1.0;
  }
  if (in == 0) {
    if (!bias.defined()) y.zero_();
    return y;
  }
  // y (N x out) = x (N x in) * w^T (in x out)
  gemm(false, true, N, out, in, x, in, w, in, beta, y, out);
  return y;
}

void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate) {
  check_defined(w, "linear_backward_data w");
  check_rank(w, 2, "linear_backward_data", "w");
  check_dy(dy, w, "linear_backward_data");
  TL_CHECK(dy.size(1) == w.size(0), ShapeError, "linear_backward_data: dy ", shape_str(dy.shape()),
           " does not match w ", shape_str(w.shape()));
  const int64_t N = dy.size(0), in = w.size(1), out = w.size(0);
  prepare_grad(dx, GradSpec{{N, in}, w.dtype(), w.device()}, accumulate, "linear_backward_data");
  if (out == 0) {
    if (!accumulate) dx.zero_();
    return;
  }
  // dx (N x in) = dy (N x out) * w (out x in)
  gemm(false, false, N, in, out, dy, out, w, in, accumulate ? 1.0 : 0.0, dx, in);
}

void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, bool accumulate) {
  check_defined(x, "linear_backward_weight x");
  check_rank(x, 2, "linear_backward_weight", "x");
  check_dy(dy, x, "linear_backward_weight");
  TL_CHECK(dy.size(0) == x.size(0), ShapeError, "linear_backward_weight: dy ", shape_str(dy.shape()),
           " and x ", shape_str(x.shape()), " have different batch sizes");
  const int64_t N = x.size(0), in = x.size(1), out = dy.size(1);
  prepare_grad(dw, GradSpec{{out, in}, x.dtype(), x.device()}, accumulate, "linear_backward_weight");
  if (N == 0) {
    if (!accumulate) dw.zero_();
    return;
  }
  // dw (out x in) = dy^T (out x N) * x (N x in)
  gemm(true, false, out, in, N, dy, out, x, in, accumulate ? 1.0 : 0.0, dw, in);
}

void linear_backward_bias(const Tensor& dy, Tensor& db, bool accumulate) {
  check_defined(dy, "linear_backward_bias dy");
  check_rank(dy, 2, "linear_backward_bias", "dy");
  check_float(dy, "linear_backward_bias");
  const int64_t N = dy.size(0), out = dy.size(1);
  prepare_grad(db, GradSpec{{out}, dy.dtype(), dy.device()}, accumulate, "linear_backward_bias");
  if (dy.is_cuda()) {
#if TL_WITH_CUDA
    kernels::bias_grad(dy.data(), db.data(), dy.dtype(), N, out, accumulate, cuda::stream());
    return;
#endif
  }
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* g = dy.data_as<T>();
    T* pb = db.data_as<T>();
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t n = 0; n < N; ++n) s += g[n * out + o];
      pb[o] = accumulate ? static_cast<T>(pb[o] + s) : static_cast<T>(s);
    }
  };
  if (dy.dtype() == DType::F32) run(float{});
  else run(double{});
}

Variable linear(const Variable& x, const Variable& w, const Variable& bias) {
  const Tensor b = bias.defined() ? bias.value() : Tensor();
  Tensor y = linear_forward(x.value(), w.value(), b);
  record_macs(w.value(), static_cast<double>(w.value().numel()), needs_grad(x), needs_grad(w), x.shape(), y.shape());
  if (!should_record({&x, &w, &bias})) return Variable(y);
  // Save only what the needed gradients use: dx needs w, dw needs x, db needs nothing.
  const Tensor x_saved = needs_grad(w) ? x.value() : Tensor();
  const Tensor w_saved = needs_grad(x) ? w.value() : Tensor();
  return record_op("linear", y, {&x, &w, &bias}, bytes_of({x_saved, w_saved}),
                   [x_saved, w_saved](const Tensor& dy, std::vector<GradSlot>& s) {
                     if (s[0].needed) linear_backward_data(dy, w_saved, s[0].grad, s[0].accumulate);
                     if (s[1].needed) linear_backward_weight(dy, x_saved, s[1].grad, s[1].accumulate);
                     if (s[2].needed) linear_backward_bias(dy, s[2].grad, s[2].accumulate);
                   });
}
}  // namespace tl
