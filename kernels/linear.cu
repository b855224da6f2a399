// CUDA pieces of the linear layer: a row-major GEMM wrapper over cublasGemmEx, the bias broadcast that
// precedes the forward GEMM (which then runs with beta = 1), and the bias gradient (column sums of dy).
#include <climits>

#include "kernels/common.cuh"
#include "kernels/linear.h"

namespace tl::kernels {
namespace {
cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return CUDA_R_32F;
    case DType::F64: return CUDA_R_64F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: throw_unsupported_dtype("linear", dtype, "float32, float64, bfloat16 or float16", __FILE__, __LINE__);
  }
}

// I: the index type (kernels/index_math.h): the modulo per element is several times cheaper in 32 bits, which the
// launcher picks whenever rows * cols fits.
template <typename T, typename I>
__global__ void bias_broadcast_kernel(const T* b, T* y, int64_t n, I cols) {
  TL_KERNEL_LOOP_AS(I, i, n) { y[i] = b[i % cols]; }
}

// Block (32, 8): threadIdx.x walks columns (coalesced), threadIdx.y strides over rows; the 8 partial sums
// of a column are combined in shared memory in a fixed order (deterministic).
template <typename T>
__global__ void bias_grad_kernel(const T* dy, T* db, int64_t rows, int64_t cols, bool accumulate) {
  using A = typename Acc<T>::type;
  __shared__ A partial[8][33];
  const int64_t col = blockIdx.x * 32 + threadIdx.x;
  A sum = 0;
  if (col < cols) {
    for (int64_t r = threadIdx.y; r < rows; r += 8) sum += load(dy, r * cols + col);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    A total = 0;
    for (int k = 0; k < 8; ++k) total += partial[k][threadIdx.x];
    db[col] = from_acc<T>(accumulate ? load(db, col) + total : total);
  }
}
}  // namespace

void gemm_rowmajor(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
                   int64_t lda, const void* B, int64_t ldb, double beta, void* C, int64_t ldc, DType dtype,
                   bool allow_tf32) {
  if (M == 0 || N == 0) return;
  TL_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
           ShapeError, "linear: GEMM dimensions exceed int32 (M=", M, ", N=", N, ", K=", K, ")");
  // A row-major matrix is its column-major transpose: C^T (N x M) = op(B)^T op(A)^T, so cuBLAS gets B first.
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t type = cuda_type(dtype);
  CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  if (dtype == DType::F64) {
    const double alpha = 1.0, beta_d = beta;
    CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                              &alpha, B, type, static_cast<int>(ldb), A, type, static_cast<int>(lda), &beta_d, C,
                              type, static_cast<int>(ldc), CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
  } else {
    const float alpha = 1.0f, beta_f = static_cast<float>(beta);
    const cublasComputeType_t compute =
        (dtype == DType::F32 && allow_tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                              &alpha, B, type, static_cast<int>(ldb), A, type, static_cast<int>(lda), &beta_f, C,
                              type, static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT));
  }
}

void bias_broadcast(const void* b, void* y, DType dtype, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  TL_DISPATCH_ALL(dtype, "bias_broadcast", with_index_type({n}, [&](auto index) {
    using I = decltype(index);
    bias_broadcast_kernel<scalar_t, I><<<grid_for(n), 256, 0, stream>>>(static_cast<const scalar_t*>(b),
                                                                       static_cast<scalar_t*>(y), n, I(cols));
  }));
  TL_LAUNCH_CHECK();
}

void bias_grad(const void* dy, void* db, DType dtype, int64_t rows, int64_t cols, bool accumulate,
               cudaStream_t stream) {
  if (cols == 0) return;
  const dim3 block(32, 8);
  const unsigned grid = static_cast<unsigned>((cols + 31) / 32);
  TL_DISPATCH_ALL(dtype, "bias_grad", bias_grad_kernel<scalar_t><<<grid, block, 0, stream>>>(
                                          static_cast<const scalar_t*>(dy), static_cast<scalar_t*>(db), rows, cols,
                                          accumulate));
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
