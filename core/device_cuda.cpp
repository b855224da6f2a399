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
  void* cublas_workspace = nullptr;
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

cublasHandle_t cublas() {
  Handles& h = handles();
  if (!h.cublas) {
    CUBLAS_CHECK(cublasCreate(&h.cublas));
    // A fixed cuBLAS workspace keeps cuBLAS from allocating during graph capture.
    const size_t bytes = 32u << 20;
    CUDA_CHECK(cudaMalloc(&h.cublas_workspace, bytes));
    CUBLAS_CHECK(cublasSetWorkspace(h.cublas, h.cublas_workspace, bytes));
  }
  CUBLAS_CHECK(cublasSetStream(h.cublas, stream()));
  CUBLAS_CHECK(cublasSetMathMode(h.cublas, allow_tf32_matmul() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return h.cublas;
}

void* workspace(size_t bytes) {
  Handles& h = handles();
  if (bytes > h.workspace_bytes) {
    if (h.workspace) CUDA_CHECK(cudaFreeAsync(h.workspace, stream()));
    size_t grown = bytes + bytes / 4;
    CUDA_CHECK(cudaMallocAsync(&h.workspace, grown, stream()));
    h.workspace_bytes = grown;
  }
  return h.workspace;
}

}  // namespace cuda
}  // namespace tl
