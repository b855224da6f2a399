// CUDA runtime state: device detection, the current stream, cuDNN/cuBLAS handles and the workspace.
// Compiled only when TL_WITH_CUDA (core/device.cpp has the parts shared with the CPU-only build).
#include "core/device.h"

#include <mutex>

#include "core/error.h"

namespace tl {
namespace detail {
void throw_cuda(int code, const char* call, const char* file, int line) {
  auto err = static_cast<cudaError_t>(code);
  std::string msg = concat(call, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) throw OutOfMemoryError(msg, 0);
  throw CudaError(msg);
}
void throw_cudnn(int code, const char* call, const char* file, int line) {
  throw CudnnError(concat(call, " failed: ", cudnnGetErrorString(static_cast<cudnnStatus_t>(code)), " at ", file, ":", line));
}
void throw_cublas(int code, const char* call, const char* file, int line) {
  throw CublasError(concat(call, " failed: ", cublasGetStatusString(static_cast<cublasStatus_t>(code)), " at ", file, ":", line));
}
}  // namespace detail

namespace cuda {
namespace {
thread_local cudaStream_t tls_stream = nullptr;

cudaStream_t default_stream() {
  static cudaStream_t s = [] {
    cudaStream_t created;
    CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return s;
}

struct Handles {
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  cudaStream_t cublas_stream = nullptr;  // the stream cuBLAS is bound to (valid once cublas_bound)
  bool cublas_bound = false;
  void* cublas_workspace = nullptr;
  size_t cublas_workspace_bytes = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
Handles& handles() {
  static Handles h;
  return h;
}
}  // namespace

bool available() {
  static const bool present = [] {
    int n = 0;
    cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return present;
}

std::string unavailable_reason() {
  if (available()) return "";
  return "no CUDA device is visible (this build supports CUDA, but cudaGetDeviceCount found no usable GPU: "
         "check the driver and CUDA_VISIBLE_DEVICES)";
}

void memory_info(size_t* free_bytes, size_t* total_bytes) { CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes)); }

cudaStream_t stream() { return tls_stream ? tls_stream : default_stream(); }

StreamGuard::StreamGuard(cudaStream_t s) : previous_(tls_stream) { tls_stream = s; }
StreamGuard::~StreamGuard() { tls_stream = previous_; }

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream())); }

cudnnHandle_t cudnn() {
  Handles& h = handles();
  if (!h.cudnn) CUDNN_CHECK(cudnnCreate(&h.cudnn));
  CUDNN_CHECK(cudnnSetStream(h.cudnn, stream()));
  return h.cudnn;
}

// cublasSetStream resets cuBLAS's workspace to its default pool (cuBLAS documentation, cublasSetStream), so the
// fixed workspace is set again after every stream change: cuBLAS then never allocates, even during graph capture.
cublasHandle_t cublas() {
  Handles& h = handles();
  if (!h.cublas) CUBLAS_CHECK(cublasCreate(&h.cublas));
  if (!h.cublas_workspace) {
    const size_t bytes = 32u << 20;
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    h.cublas_workspace = p;
    h.cublas_workspace_bytes = bytes;
    h.cublas_bound = false;
  }
  const cudaStream_t s = stream();
  if (!h.cublas_bound || h.cublas_stream != s) {
    h.cublas_bound = false;
    CUBLAS_CHECK(cublasSetStream(h.cublas, s));
    CUBLAS_CHECK(cublasSetWorkspace(h.cublas, h.cublas_workspace, h.cublas_workspace_bytes));
    h.cublas_stream = s;
    h.cublas_bound = true;
  }
  CUBLAS_CHECK(cublasSetMathMode(h.cublas, allow_tf32_matmul() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return h.cublas;
}

namespace {
// cudaMallocAsync of `bytes` on stream(); null when the device is out of memory (the CUDA error state is cleared);
// any other failure throws.
void* try_malloc_async(size_t bytes) {
  void* p = nullptr;
  const cudaError_t st = cudaMallocAsync(&p, bytes, stream());
  if (st == cudaSuccess) return p;
  (void)cudaGetLastError();
  if (st == cudaErrorMemoryAllocation) return nullptr;
  CUDA_CHECK(st);
  return nullptr;
}
}  // namespace

// The old buffer is forgotten before it is freed, so that a failed allocation leaves no pointer to freed memory
// behind (pointer null, size 0). It grows by a quarter more than asked, or exactly what is asked when that does
// not fit; when neither fits, OutOfMemoryError (callers such as the convolution try a candidate with less).
void* workspace(size_t bytes) {
  Handles& h = handles();
  if (bytes <= h.workspace_bytes) return h.workspace;
  void* old = h.workspace;
  h.workspace = nullptr;
  h.workspace_bytes = 0;
  if (old) CUDA_CHECK(cudaFreeAsync(old, stream()));
  size_t got = bytes + bytes / 4;
  void* p = try_malloc_async(got);
  if (!p) p = try_malloc_async(got = bytes);
  if (!p) {
    throw OutOfMemoryError(detail::concat("CUDA out of memory: the scratch workspace of ", bytes, " bytes (",
                                          bytes >> 20, " MiB) could not be allocated; use a smaller batch size"),
                           bytes);
  }
  h.workspace = p;
  h.workspace_bytes = got;
  return p;
}

}  // namespace cuda
}  // namespace tl
