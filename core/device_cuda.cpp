// CUDA runtime state: device detection, the current stream, and the runtime object holding the cuDNN/cuBLAS
// handles and workspaces of each (thread, stream) and the convolution algorithm cache.
// Compiled only when TL_WITH_CUDA (core/device.cpp has the parts shared with the CPU-only build).
#include "core/device.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/runtime_registry.h"

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
// The stream whose handles and workspace this thread uses; null: tls_stream's (see StreamGuard in device.h).
thread_local cudaStream_t tls_resource_stream = nullptr;

constexpr size_t kCublasWorkspaceBytes = 32u << 20;

// cudaMallocAsync of `bytes` on `s`; null when the device is out of memory (the CUDA error state is cleared);
// any other failure throws.
void* try_malloc_async(size_t bytes, cudaStream_t s) {
  void* p = nullptr;
  const cudaError_t st = cudaMallocAsync(&p, bytes, s);
  if (st == cudaSuccess) return p;
  (void)cudaGetLastError();
  if (st == cudaErrorMemoryAllocation) return nullptr;
  CUDA_CHECK(st);
  return nullptr;
}

// The handles and workspaces of one (thread, stream), created on first use. The handles are bound to the stream
// the thread queues on: the owning stream, or, while a graph is captured, the capture stream that borrows them
// (StreamGuard); a change of stream rebinds them at the next call. cublasSetStream resets cuBLAS's workspace to
// its default pool (cuBLAS documentation, cublasSetStream), so the fixed workspace is set again right after every
// cublasSetStream: cuBLAS then never allocates, even during graph capture. The destructor frees everything, errors
// ignored (it runs at thread exit).
class StreamResources {
 public:
  explicit StreamResources(cudaStream_t owner) : stream_(owner) {}
  ~StreamResources() {
    if (cudnn_) cudnnDestroy(cudnn_);
    if (cublas_) cublasDestroy(cublas_);
    bool failed = false;
    if (cublas_workspace_) failed |= cudaFreeAsync(cublas_workspace_, stream_) != cudaSuccess;
    if (workspace_) failed |= cudaFreeAsync(workspace_, stream_) != cudaSuccess;
    if (failed) (void)cudaGetLastError();  // e.g. at exit after the driver shut down: nothing left to free
  }
  StreamResources(const StreamResources&) = delete;
  StreamResources& operator=(const StreamResources&) = delete;

  cudnnHandle_t cudnn(cudaStream_t queue) {
    if (!cudnn_) {
      cudnnHandle_t h = nullptr;
      CUDNN_CHECK(cudnnCreate(&h));
      cudnn_ = h;
      cudnn_bound_ = nullptr;
    }
    if (cudnn_bound_ != queue) {
      cudnn_bound_ = nullptr;
      CUDNN_CHECK(cudnnSetStream(cudnn_, queue));
      cudnn_bound_ = queue;
    }
    return cudnn_;
  }

  cublasHandle_t cublas(cudaStream_t queue) {
    if (!cublas_) {
      if (!cublas_workspace_) {
        cublas_workspace_ = try_malloc_async(kCublasWorkspaceBytes, stream_);
        if (!cublas_workspace_)
          throw OutOfMemoryError(detail::concat("CUDA out of memory: cuBLAS's workspace of ",
                                                kCublasWorkspaceBytes >> 20, " MiB could not be allocated; use a "
                                                "smaller batch size"),
                                 kCublasWorkspaceBytes);
      }
      cublasHandle_t h = nullptr;
      CUBLAS_CHECK(cublasCreate(&h));
      cublas_ = h;
      cublas_bound_ = nullptr;
    }
    if (cublas_bound_ != queue) {
      cublas_bound_ = nullptr;  // a failure below leaves it unbound: the next call binds again
      CUBLAS_CHECK(cublasSetStream(cublas_, queue));
      CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
      cublas_bound_ = queue;
    }
    CUBLAS_CHECK(cublasSetMathMode(cublas_, allow_tf32_matmul() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return cublas_;
  }

  // The old buffer is forgotten before it is freed, so that a failed allocation leaves no pointer to freed memory
  // behind (pointer null, size 0). It grows by a quarter more than asked, or exactly what is asked when that does
  // not fit; when neither fits, OutOfMemoryError (callers such as the convolution try a candidate with less).
  size_t workspace_bytes() const { return workspace_bytes_; }
  void* workspace(size_t bytes) {
    if (bytes <= workspace_bytes_) return workspace_;
    void* old = workspace_;
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    if (old) CUDA_CHECK(cudaFreeAsync(old, stream_));
    size_t got = bytes + bytes / 4;
    void* p = try_malloc_async(got, stream_);
    if (!p) p = try_malloc_async(got = bytes, stream_);
    if (!p) {
      throw OutOfMemoryError(detail::concat("CUDA out of memory: the scratch workspace of ", bytes, " bytes (",
                                            bytes >> 20, " MiB) could not be allocated; use a smaller batch size"),
                             bytes);
    }
    workspace_ = p;
    workspace_bytes_ = got;
    return p;
  }

 private:
  cudaStream_t stream_;  // the owner: workspaces are allocated and freed on it
  cudnnHandle_t cudnn_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaStream_t cudnn_bound_ = nullptr, cublas_bound_ = nullptr;  // what each handle is bound to (null: not yet)
  void* cublas_workspace_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

// The one runtime object of the process: the default stream of each device, the per-(thread, stream) resources
// and the convolution algorithm cache. Never destroyed (storages and thread-exit hooks may still use it during
// static destruction); release_runtime() empties it.
class Runtime {
 public:
  static constexpr int kMaxDevices = 64;

  // Created once per device under the lock, read without it afterwards (stream() is called by every op).
  cudaStream_t default_stream(int device) {
    TL_CHECK(device >= 0 && device < kMaxDevices, CudaError, "CUDA device ", device, " beyond the ", kMaxDevices,
             " tlengine supports");
    cudaStream_t s = default_streams_[device].load(std::memory_order_acquire);
    if (s) return s;
    std::lock_guard<std::mutex> lock(create_mutex_);
    s = default_streams_[device].load(std::memory_order_relaxed);
    if (!s) {
      CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      default_streams_[device].store(s, std::memory_order_release);
    }
    return s;
  }

  cuda_detail::ThreadStreamRegistry<StreamResources> streams;
  cuda_detail::DeviceCache<std::vector<int64_t>, ConvAlgoEntry> conv_algos;

 private:
  std::mutex create_mutex_;
  std::atomic<cudaStream_t> default_streams_[kMaxDevices] = {};
};

Runtime& runtime() {
  static Runtime* r = new Runtime();
  return *r;
}

int current_device() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

// Releases a thread's resources when it exits (a loader or communication thread that ran GPU ops), so that
// threads that come and go leave no handles or workspaces behind.
struct ReleaseAtThreadExit {
  ~ReleaseAtThreadExit() { runtime().streams.take_thread(std::this_thread::get_id()); }
};

cudaStream_t resource_stream() { return tls_resource_stream ? tls_resource_stream : stream(); }

// This thread's resources for resource_stream().
StreamResources& resources() {
  thread_local ReleaseAtThreadExit release_at_exit;
  (void)release_at_exit;
  const cudaStream_t s = resource_stream();
  return runtime().streams.get(s, [&] { return std::make_unique<StreamResources>(s); });
}

bool is_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(s, &status));
  return status != cudaStreamCaptureStatusNone;
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

cudaStream_t stream() { return tls_stream ? tls_stream : runtime().default_stream(current_device()); }

// A stream under capture borrows the resources of the stream it is guarded from (its graph is replayed there, and
// creating handles or allocating a workspace cannot be captured); any other stream uses its own.
StreamGuard::StreamGuard(cudaStream_t s) : previous_(tls_stream), previous_resources_(tls_resource_stream) {
  const cudaStream_t lender = is_capturing(s) ? resource_stream() : nullptr;
  tls_stream = s;
  tls_resource_stream = lender == s ? nullptr : lender;
}
StreamGuard::~StreamGuard() {
  tls_stream = previous_;
  tls_resource_stream = previous_resources_;
}

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream())); }

cudnnHandle_t cudnn() { return resources().cudnn(stream()); }
cublasHandle_t cublas() { return resources().cublas(stream()); }
void* workspace(size_t bytes) {
  StreamResources& r = resources();
  // Growing frees the buffer a captured kernel may already point at: during a capture that would replay into
  // freed memory, so it is an error here rather than a wrong replay (the warm-up steps size the workspace).
  TL_CHECK(bytes <= r.workspace_bytes() || !stream_is_capturing(), CudaError, "the CUDA scratch workspace must grow ",
           "to ", bytes, " bytes during a CUDA graph capture (the warm-up steps did not need it); train without ",
           "--cuda-graphs");
  return r.workspace(bytes);
}

void release_stream(cudaStream_t s) { runtime().streams.take_stream(s); }

void release_runtime() {
  runtime().streams.take_all();
  runtime().conv_algos.clear();
}

// Keyed by device as well as by problem: the same problem on two devices may rank algorithms differently.
std::optional<ConvAlgoEntry> find_conv_algos(const std::vector<int64_t>& problem) {
  return runtime().conv_algos.find(current_device(), problem);
}
void store_conv_algos(const std::vector<int64_t>& problem, ConvAlgoEntry entry) {
  runtime().conv_algos.put(current_device(), problem, std::move(entry));
}
size_t conv_algo_cache_size() { return runtime().conv_algos.size(); }

}  // namespace cuda
}  // namespace tl
