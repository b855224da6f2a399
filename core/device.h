// The CUDA side of the runtime: device presence, the stream all GPU work is queued on, the cuDNN/cuBLAS
// handles and workspace of each (thread, stream), the convolution algorithm cache, and the math-mode switches
// (TF32). The handles, workspaces and cache live in one runtime object (core/device_cuda.cpp), not in scattered
// function-statics, and release_runtime() tears them down.
//
// All GPU work of tlengine runs on one explicit stream (cuda::stream()). Ops never synchronise the host,
// so a whole training step can be captured as one CUDA graph. Only explicit copies to the host
// (Tensor::to(Device::CPU)) and cuda::synchronize() wait for the GPU.
//
// CPU-only builds (TL_WITH_CUDA == 0, configured with -DTL_CUDA=OFF or without a CUDA toolkit): available() is
// false, unavailable_reason() says so, and the stream/handle/workspace functions do not exist. Every CUDA use in
// the library sits behind `#if TL_WITH_CUDA` at the dispatch level (one CUDA branch per op) or in an
// <op>_cuda.cpp file that only the CUDA build compiles.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#ifndef TL_WITH_CUDA
#error "TL_WITH_CUDA must be defined to 0 or 1 (CMake sets it on the tlengine target)"
#endif
#if TL_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#endif

#include "core/dtype.h"
#include "core/error.h"

namespace tl {
// A --device option: "cpu", "cuda" (throws ValueError when no CUDA device can be used) or "auto" (CUDA when
// available, else the CPU). Throws ValueError naming the accepted values for anything else.
Device parse_device(const std::string& name);
}  // namespace tl

namespace tl::cuda {

// True when this build has CUDA support and a CUDA device can be used. Never throws; cached after the first call.
bool available();
// Why available() is false, as one sentence for an error message ("" when it is true): a CPU-only build, or no
// visible device.
std::string unavailable_reason();
// Number of bytes free / total on the device (cudaMemGetInfo). Throws when !available().
void memory_info(size_t* free_bytes, size_t* total_bytes);
void synchronize();  // waits for the current stream; for tests, tools and host copies only (no-op without CUDA)

// TF32 tensor cores for float32 convolutions and matmuls. Default: on for convolutions (PyTorch's default),
// off for matmuls. Tests that compare with the CPU turn both off.
void set_allow_tf32(bool conv, bool matmul);
bool allow_tf32_conv();
bool allow_tf32_matmul();

#if TL_WITH_CUDA

// The stream every tlengine GPU op of this thread is queued on: the StreamGuard's, else the current device's
// default stream (created on first use, non-blocking, shared by every thread without a guard).
cudaStream_t stream();
// Use `s` for the ops of this thread until the guard ends (e.g. for graph capture on a side stream). Before the
// caller destroys `s`, release_stream(s); tensors allocated under the guard are freed on `s` (core/memory.h).
// When `s` is being captured into a graph as the guard starts, the ops under it use the handles and workspace of
// the stream the thread used before (rebound to `s`): the graph is replayed on that stream, so it is ordered with
// that stream's work, and neither handle creation nor a first workspace allocation can be captured. Otherwise `s`
// gets its own handles and workspace (cudnn() below).
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  cudaStream_t previous_;
  cudaStream_t previous_resources_;
};

// The cuDNN/cuBLAS handles and the scratch workspace belong to (this thread, stream()): each pair gets its own,
// created lazily, so two threads on two streams never share a handle (cuDNN and cuBLAS handles are not for
// concurrent use from several threads) nor a workspace (one stream's kernels would overwrite the other's
// scratch). A thread's entries are released when it exits. The one exception is a capture (StreamGuard).
cudnnHandle_t cudnn();    // bound to stream()
cublasHandle_t cublas();  // bound to stream(), with its own fixed workspace (set again after every cublasSetStream)

// True while `s` is being captured into a CUDA graph (train/cuda_graph.h). What a captured step must not do (a
// value that changes every step taken by value, an allocation that must persist) checks it and says so.
inline bool stream_is_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(s, &status));
  return status != cudaStreamCaptureStatusNone;
}
inline bool stream_is_capturing() { return stream_is_capturing(stream()); }

// A scratch buffer of at least `bytes`, valid on stream() for this thread until its next call that needs more.
// It grows (stream-ordered free + malloc) but never shrinks, so steady-state steps allocate nothing. Throws
// OutOfMemoryError when it cannot grow; the old buffer is gone then (a later call allocates afresh).
void* workspace(size_t bytes);

// Releases every thread's handles and workspace of stream `s` (stream-ordered frees on `s`): call it before
// destroying a stream that tlengine ops ran on, while no thread is queueing work on it.
void release_stream(cudaStream_t s);
// Tears the runtime down: every thread's handles and workspaces, and the convolution algorithm cache. The default
// streams stay (tensors may still be freed on them). For tests and tools; no other thread may run tlengine GPU ops
// during the call.
void release_runtime();

// The convolution algorithm cache (layers/conv2d.cpp): per problem and device, cuDNN's usable heuristic offers,
// best first, and which one ran last (ran == candidates.size(): none yet). It lives in the runtime object rather
// than in the layer so that it is one piece of process state, cleared by release_runtime().
struct ConvAlgo {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};
struct ConvAlgoEntry {
  std::vector<ConvAlgo> candidates;
  size_t ran = 0;
};
// `problem` describes the convolution fully (direction, shapes, options, dtype, layout, math); the current device
// is added to the key here.
std::optional<ConvAlgoEntry> find_conv_algos(const std::vector<int64_t>& problem);
void store_conv_algos(const std::vector<int64_t>& problem, ConvAlgoEntry entry);
size_t conv_algo_cache_size();  // entries over all devices (tests)
#endif  // TL_WITH_CUDA

}  // namespace tl::cuda
