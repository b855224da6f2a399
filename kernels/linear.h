// Host launchers of the linear layer's CUDA pieces: row-major GEMM through cuBLAS, bias broadcast and the
// bias gradient (layers/linear.h has the op). All run on `stream` / the cuBLAS handle and never synchronise.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
// Row-major C (M x N) = op(A) op(B) + beta * C, op(A) is M x K, op(B) is K x N; lda/ldb/ldc are the row
// strides of A, B, C as stored. beta is 0 or 1. float32 uses TF32 tensor cores only when allow_tf32.
void gemm_rowmajor(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
                   int64_t lda, const void* B, int64_t ldb, double beta, void* C, int64_t ldc, DType dtype,
                   bool allow_tf32);
// y[n, o] = b[o] for a row-major (rows, cols) y.
void bias_broadcast(const void* b, void* y, DType dtype, int64_t rows, int64_t cols, cudaStream_t stream);
// db[o] = sum_n dy[n, o] (or db += ... when accumulate), float32 accumulation, deterministic.
void bias_grad(const void* dy, void* db, DType dtype, int64_t rows, int64_t cols, bool accumulate,
               cudaStream_t stream);
}  // namespace tl::kernels
