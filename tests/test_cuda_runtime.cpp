// The CUDA runtime object (core/device.h, core/runtime_registry.h): per-(thread, stream) handles and workspaces,
// the convolution algorithm cache, Storage::record_stream, and the dtype dispatch errors. The containers' logic
// runs on the CPU in every build; the tests that need a device skip without one.
#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/memory.h"
#include "core/runtime_registry.h"
#include "layers/conv2d.h"
#include "layers/linear.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {
// A registry entry that counts its constructions and destructions.
struct Counted {
  static inline std::atomic<int> alive{0};
  explicit Counted(int tag) : tag(tag) { ++alive; }
  ~Counted() { --alive; }
  int tag;
};
}  // namespace

// One State per (thread, stream): the same thread on the same stream gets the same one (made once), another stream
// or another thread a new one; take_stream / take_thread / take_all remove exactly their entries.
TEST(CudaRuntime, RegistryKeepsOneStatePerThreadAndStream) {
  cuda_detail::ThreadStreamRegistry<Counted> reg;
  int made = 0;
  auto make = [&] { return std::make_unique<Counted>(++made); };
  int s1 = 0, s2 = 0;  // two distinct "streams" (only their addresses matter)
  Counted& a = reg.get(&s1, make);
  EXPECT_EQ(&reg.get(&s1, make), &a);
  EXPECT_EQ(made, 1);
  Counted& b = reg.get(&s2, make);
  EXPECT_NE(&b, &a);
  Counted* other_thread = nullptr;
  std::thread([&] { other_thread = &reg.get(&s1, make); }).join();
  EXPECT_NE(other_thread, &a);
  EXPECT_EQ(made, 3);
  EXPECT_EQ(reg.size(), 3u);
  EXPECT_EQ(Counted::alive, 3);

  // Stream s1 is released: both threads' entries of s1 go, s2's stays.
  EXPECT_EQ(reg.take_stream(&s1).size(), 2u);
  EXPECT_EQ(Counted::alive, 1);
  EXPECT_EQ(&reg.get(&s2, make), &b);
  EXPECT_EQ(reg.get(&s1, make).tag, 4);  // made afresh
  EXPECT_EQ(reg.take_thread(std::this_thread::get_id()).size(), 2u);
  EXPECT_EQ(reg.size(), 0u);

  // A failing make() registers nothing.
  EXPECT_THROW(reg.get(&s1, []() -> std::unique_ptr<Counted> { throw std::runtime_error("no handle"); }),
               std::runtime_error);
  EXPECT_EQ(reg.size(), 0u);
  reg.get(&s1, make);
  std::thread([&] { reg.get(&s2, make); }).join();
  EXPECT_EQ(reg.take_all().size(), 2u);
  EXPECT_EQ(Counted::alive, 0);
}

// The per-device cache of the runtime (the convolution algorithms): one problem on two devices is two entries.
TEST(CudaRuntime, DeviceCacheFindPutClear) {
  cuda_detail::DeviceCache<std::vector<int64_t>, int> cache;
  EXPECT_FALSE(cache.find(0, {1, 2}).has_value());
  cache.put(0, {1, 2}, 7);
  cache.put(1, {1, 2}, 8);
  ASSERT_TRUE(cache.find(0, {1, 2}).has_value());
  EXPECT_EQ(*cache.find(0, {1, 2}), 7);
  EXPECT_EQ(*cache.find(1, {1, 2}), 8);
  EXPECT_FALSE(cache.find(0, {1, 3}).has_value());
  EXPECT_FALSE(cache.find(2, {1, 2}).has_value());
  cache.put(0, {1, 2}, 9);
  EXPECT_EQ(*cache.find(0, {1, 2}), 9);
  EXPECT_EQ(cache.size(), 2u);
  cache.clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_FALSE(cache.find(0, {1, 2}).has_value());
}

// The dispatch macros' error (kernels/common.cuh) names the op, the dtype it got, what the op takes, and where.
TEST(Device, DispatchErrorNamesOpAndDtype) {
  const std::string err = error_of(
      [] { throw_unsupported_dtype("bias_broadcast", DType::I32, "float32 or float64", "kernels/x.cu", 12); });
  EXPECT_TRUE(contains(err, "bias_broadcast: unsupported dtype int32 (takes float32 or float64)")) << err;
  EXPECT_TRUE(contains(err, "kernels/x.cu:12")) << err;
  EXPECT_THROW(throw_unsupported_dtype("op", DType::F16, "float32", "f", 1), DTypeError);
  const std::string bad = error_of([] { throw_unsupported_dtype("op", static_cast<DType>(42), "float32", "f", 1); });
  EXPECT_TRUE(contains(bad, "unsupported dtype with value 42")) << bad;
}

// record_stream is a no-op for host memory (no stream to wait for).
TEST(CudaRuntime, RecordStreamIgnoresCpuStorage) {
  Storage s(64, Device::CPU);
  int fake_stream = 0;
  s.record_stream(reinterpret_cast<CUstream_st*>(&fake_stream));
  EXPECT_TRUE(s.used_on_streams().empty());
}

#if TL_WITH_CUDA
namespace {
// A non-blocking stream, released from the runtime and destroyed with the object.
class SideStream {
 public:
  SideStream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~SideStream() {
    cudaStreamSynchronize(s_);
    cuda::release_stream(s_);
    cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};
}  // namespace

// Each (thread, stream) has its own cuDNN and cuBLAS handles, bound to that stream, and its own workspace.
TEST(CudaRuntime, HandlesAndWorkspaceArePerThreadAndStream) {
  TL_REQUIRE_CUDA();
  const cudnnHandle_t h_main = cuda::cudnn();
  const cublasHandle_t b_main = cuda::cublas();
  void* const w_main = cuda::workspace(4096);
  EXPECT_EQ(cuda::cudnn(), h_main);
  EXPECT_EQ(cuda::workspace(100), w_main);  // no growth for less
  cudaStream_t bound = nullptr;
  CUDNN_CHECK(cudnnGetStream(h_main, &bound));
  EXPECT_EQ(bound, cuda::stream());
  SideStream side;
  {
    cuda::StreamGuard guard(side.get());
    EXPECT_NE(cuda::cudnn(), h_main);
    EXPECT_NE(cuda::cublas(), b_main);
    EXPECT_NE(cuda::workspace(4096), w_main);
    CUDNN_CHECK(cudnnGetStream(cuda::cudnn(), &bound));
    EXPECT_EQ(bound, side.get());
    CUBLAS_CHECK(cublasGetStream(cuda::cublas(), &bound));
    EXPECT_EQ(bound, side.get());
  }
  EXPECT_EQ(cuda::cudnn(), h_main);
  cudnnHandle_t h_thread = nullptr;
  void* w_thread = nullptr;
  std::thread([&] {
    h_thread = cuda::cudnn();
    w_thread = cuda::workspace(4096);
    cuda::synchronize();
  }).join();
  EXPECT_NE(h_thread, h_main);  // the same default stream, another thread: its own (released at its exit)
  EXPECT_NE(w_thread, w_main);
}

// A stream under capture borrows the handles and workspace of the stream the thread used before (its graph is
// replayed there; handle creation cannot be captured), rebound to the capture stream, and the owner's handles
// are bound back to it afterwards.
TEST(CudaRuntime, CaptureStreamBorrowsTheOuterStreamsHandles) {
  TL_REQUIRE_CUDA();
  const cudnnHandle_t h_main = cuda::cudnn();
  const cublasHandle_t b_main = cuda::cublas();
  void* const w_main = cuda::workspace(4096);
  const cudaStream_t main_stream = cuda::stream();
  SideStream side;
  cudaStream_t bound = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(side.get(), cudaStreamCaptureModeThreadLocal));
  {
    cuda::StreamGuard guard(side.get());
    EXPECT_EQ(cuda::cudnn(), h_main);
    EXPECT_EQ(cuda::cublas(), b_main);
    EXPECT_EQ(cuda::workspace(4096), w_main);
    CUDNN_CHECK(cudnnGetStream(h_main, &bound));
    EXPECT_EQ(bound, side.get());
    CUBLAS_CHECK(cublasGetStream(b_main, &bound));
    EXPECT_EQ(bound, side.get());
  }
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(side.get(), &graph));
  if (graph) cudaGraphDestroy(graph);
  EXPECT_EQ(cuda::cudnn(), h_main);
  CUDNN_CHECK(cudnnGetStream(h_main, &bound));
  EXPECT_EQ(bound, main_stream);
  CUBLAS_CHECK(cublasGetStream(cuda::cublas(), &bound));
  EXPECT_EQ(bound, main_stream);
}

// Two threads on two streams run convolutions and matmuls at once (each with its own handles and workspace) and
// get what one thread gets alone.
TEST(CudaRuntime, TwoThreadsOnTwoStreamsMatchOneThread) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const Tensor x = Tensor::randn({4, 16, 20, 20}, 1, DType::F32, Device::CUDA);
  const Tensor w = Tensor::randn({32, 16, 3, 3}, 2, DType::F32, Device::CUDA);
  const Tensor a = Tensor::randn({64, 256}, 3, DType::F32, Device::CUDA);
  const Tensor lw = Tensor::randn({128, 256}, 4, DType::F32, Device::CUDA);
  Conv2dOptions o;
  o.pad_h = o.pad_w = 1;
  const Tensor y_ref = conv2d_forward(x, w, Tensor(), o).to(Device::CPU);
  const Tensor l_ref = linear_forward(a, lw, Tensor()).to(Device::CPU);
  std::vector<Tensor> ys(2), ls(2);
  auto work = [&](int t) {
    SideStream side;
    cuda::StreamGuard guard(side.get());
    for (int i = 0; i < 20; ++i) {
      ys[t] = conv2d_forward(x, w, Tensor(), o);
      ls[t] = linear_forward(a, lw, Tensor());
    }
    ys[t] = ys[t].to(Device::CPU);
    ls[t] = ls[t].to(Device::CPU);
  };
  std::thread t0(work, 0), t1(work, 1);
  t0.join();
  t1.join();
  for (int t = 0; t < 2; ++t) {
    expect_close(ys[t], y_ref, 1e-5, "conv on a side stream");
    expect_close(ls[t], l_ref, 1e-5, "linear on a side stream");
  }
}

// A tensor read on another stream, marked with record_stream: its memory is not reused on the allocation stream
// until that stream's work is done. The side stream is held back on the host until the memory has been freed and
// reallocated (filled with -1) on the main stream; without the recorded stream the fill would overwrite the
// values before the side stream's copy reads them.
TEST(CudaRuntime, RecordStreamDelaysTheFreeUntilTheOtherStreamIsDone) {
  TL_REQUIRE_CUDA();
  const int64_t n = 1 << 20;
  Tensor src = Tensor::full({n}, 7.0, DType::F32, Device::CUDA);
  Tensor out = Tensor::zeros({n}, DType::F32, Device::CUDA);
  cuda::synchronize();
  SideStream side;
  std::atomic<bool> go{false};
  struct Release {  // lets the side stream go whatever happens below, so the test cannot hang
    std::atomic<bool>& go;
    ~Release() { go = true; }
  } release{go};
  CUDA_CHECK(cudaLaunchHostFunc(
      side.get(),
      [](void* p) {
        while (!static_cast<std::atomic<bool>*>(p)->load()) std::this_thread::yield();
      },
      &go));
  CUDA_CHECK(cudaMemcpyAsync(out.data(), src.data(), n * sizeof(float), cudaMemcpyDeviceToDevice, side.get()));
  src.storage()->record_stream(side.get());
  src.storage()->record_stream(side.get());   // recorded once
  src.storage()->record_stream(cuda::stream());  // the allocation stream itself: nothing to wait for
  EXPECT_EQ(src.storage()->used_on_streams().size(), 1u);
  src = Tensor();
  const Tensor reused = Tensor::full({n}, -1.0, DType::F32, Device::CUDA);
  go = true;
  CUDA_CHECK(cudaStreamSynchronize(side.get()));
  const std::vector<double> v = out.to_doubles();
  size_t wrong = 0;
  for (double e : v) wrong += e != 7.0;
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(reused.to_doubles()[0], -1.0);
}

// The convolution algorithm cache lives in the runtime: filled by a convolution, emptied by release_runtime(),
// after which convolutions run again (fresh handles, heuristics re-queried) with the same results.
TEST(CudaRuntime, ReleaseRuntimeClearsTheConvAlgorithmCache) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const Tensor x = Tensor::randn({2, 3, 9, 9}, 5, DType::F32, Device::CUDA);
  const Tensor w = Tensor::randn({4, 3, 3, 3}, 6, DType::F32, Device::CUDA);
  Conv2dOptions o;
  o.pad_h = o.pad_w = 1;
  const Tensor y1 = conv2d_forward(x, w, Tensor(), o).to(Device::CPU);
  EXPECT_GE(cuda::conv_algo_cache_size(), 1u);
  cuda::release_runtime();
  EXPECT_EQ(cuda::conv_algo_cache_size(), 0u);
  const Tensor y2 = conv2d_forward(x, w, Tensor(), o).to(Device::CPU);
  expect_close(y2, y1, 1e-6, "conv after release_runtime");
  EXPECT_GE(cuda::conv_algo_cache_size(), 1u);
}
#endif  // TL_WITH_CUDA
