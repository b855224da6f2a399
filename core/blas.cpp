// CPU GEMM (see blas.h).
#include "core/blas.h"

#include <cblas.h>

#include <climits>

#include "core/error.h"
#include "core/parallel.h"
#if TL_WITH_DNNL
#include <dnnl.h>
#endif

namespace tl::cpu {
namespace {
void check_dims(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  for (int64_t v : {m, n, k, lda, ldb, ldc})
    TL_CHECK(v >= 0 && v <= INT_MAX, ValueError, "gemm: a dimension of ", m, "x", n, "x", k,
             " (leading dimensions ", lda, ", ", ldb, ", ", ldc, ") exceeds the BLAS's 32-bit limit");
}
}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  check_dims(m, n, k, lda, ldb, ldc);
  num_threads();  // the pool's thread count is applied before the first GEMM
#if TL_WITH_DNNL
  const dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  TL_CHECK(st == dnnl_success, Error, "gemm: oneDNN's dnnl_sgemm failed with status ", static_cast<int>(st),
           " for ", m, "x", n, "x", k);
#else
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              1.0f, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
#endif
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  check_dims(m, n, k, lda, ldb, ldc);
  num_threads();
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              1.0, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

}  // namespace tl::cpu
