// Row-major GEMM on the CPU, the one place tlengine calls a BLAS:  C (m x n) = op(A) op(B) + beta * C, with
// op(X) = X or X^T.  float32 runs on oneDNN's GEMM (the process's OpenMP pool, see core/parallel.h) when the
// build has oneDNN, else OpenBLAS; float64 (the reference precision) always on OpenBLAS.
#pragma once
#include <cstdint>

namespace tl::cpu {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

}  // namespace tl::cpu
