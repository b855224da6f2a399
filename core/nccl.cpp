// The NCCL backend (see nccl.h). Only this file includes nccl.h (TL_HAVE_NCCL, set by CMake with CUDA and MPI).
#include "core/nccl.h"

#ifdef TL_HAVE_NCCL
#include <chrono>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "core/device.h"
#endif

namespace tl {

bool NcclComm::built_with_nccl() {
#ifdef TL_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

#ifdef TL_HAVE_NCCL

namespace {

[[noreturn]] void throw_nccl(ncclResult_t r, const char* call, const char* file, int line) {
  throw Error(detail::concat(call, " failed: ", ncclGetErrorString(r), " [", file, ":", line, "]"));
}
// ncclInProgress is no failure: the communicator is non-blocking (the caller waits with settle()).
#define NCCL_CHECK(call)                                                           \
  do {                                                                             \
    const ncclResult_t tl_nccl_ = (call);                                          \
    if (tl_nccl_ != ncclSuccess && tl_nccl_ != ncclInProgress)                     \
      throw_nccl(tl_nccl_, #call, __FILE__, __LINE__);                             \
  } while (0)

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    default: throw ValueError(detail::concat("NCCL all-reduce: floating-point tensors only, got ", dtype_name(t)));
  }
}

cudaEvent_t new_event() {
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// The GPU of this process: the node-local rank's, modulo the visible devices (one process per GPU).
int select_device(const Distributed& dist) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  TL_CHECK(count > 0, ValueError, "rank ", dist.rank(), ": training on CUDA over several processes, but no CUDA ",
           "device is visible to this process: check CUDA_VISIBLE_DEVICES, or add --device cpu");
  const int device = dist.local_rank() % count;
  CUDA_CHECK(cudaSetDevice(device));
  return device;
}

}  // namespace

struct NcclComm::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;  // the communication stream
  std::vector<cudaEvent_t> ready, done;  // per slot: gradients copied in (compute stream); reduced (communication)
  cudaEvent_t step_end = nullptr;  // recorded on the communication stream by end_step()
  bool step_end_recorded = false;
  int last_epoch = 0;
  int64_t last_step = 0;
  double timeout_s = 300;
  int rank = 0;

  ~Impl() {  // no throw: a failure here cannot be acted on
    if (comm) finalize();
    for (cudaEvent_t e : ready) cudaEventDestroy(e);
    for (cudaEvent_t e : done) cudaEventDestroy(e);
    if (step_end) cudaEventDestroy(step_end);
    if (stream) cudaStreamDestroy(stream);
  }
  // A non-blocking communicator is finalised (its work flushed) before it is destroyed; one that does not finish
  // within the timeout (a peer gone) is aborted instead.
  void finalize() noexcept {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    ncclResult_t state = ncclCommFinalize(comm);
    while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) break;
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
    comm = nullptr;
  }
  // Ends the communicator's work at once (its kernels too), so that nothing waits for the other ranks any more.
  void abort() {
    if (comm) ncclCommAbort(comm);
    comm = nullptr;
  }
  [[noreturn]] void fail(const std::string& what, bool timed_out, ncclResult_t r) {
    abort();
    if (timed_out)
      throw DistributedTimeout(detail::concat("rank ", rank, ": ", what, " timed out after ", timeout_s,
                                              " s: another rank died or hangs (--dist-timeout)"));
    throw Error(detail::concat("rank ", rank, ": ", what, " failed in NCCL: ", ncclGetErrorString(r),
                               " (another rank may have died)"));
  }
  // Polls until `done()` says so, failing on an NCCL error or at the deadline (`what()`: the operation, formatted
  // only then).
  template <class What, class Done>
  void poll(const What& what, Done done) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s);
    for (int polls = 0;; ++polls) {
      if (done()) return;
      ncclResult_t async = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
      if (async != ncclSuccess && async != ncclInProgress) fail(what(), false, async);
      if (clock::now() > deadline) fail(what(), true, ncclSuccess);
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  // A non-blocking communicator may return ncclInProgress from a call: it must have settled before the next one.
  void settle(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    if (r != ncclInProgress) fail(what, false, r);
    poll([&] { return std::string(what); }, [&] {
      ncclResult_t async = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
      return async != ncclInProgress;
    });
  }
};

NcclComm::NcclComm(const Distributed& dist)
    : impl_(std::make_unique<Impl>()), world_size_(dist.world_size()) {
  device_ = select_device(dist);  // before anything else touches CUDA
  impl_->timeout_s = dist.timeout_s();
  impl_->rank = dist.rank();
  ncclUniqueId id{};
  if (dist.is_main()) NCCL_CHECK(ncclGetUniqueId(&id));
  dist.broadcast_bytes(&id, sizeof id, 0, "broadcast of the NCCL id");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a rank missing at the start times out as any collective does
  impl_->settle(ncclCommInitRankConfig(&impl_->comm, dist.world_size(), id, dist.rank(), &config),
                "creating the NCCL communicator");
  CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  impl_->step_end = new_event();
}

NcclComm::~NcclComm() = default;

void NcclComm::reserve(size_t slots) {
  while (impl_->ready.size() < slots) {
    impl_->ready.push_back(new_event());
    impl_->done.push_back(new_event());
  }
}

void NcclComm::start_mean(Tensor& t, size_t slot) {
  TL_CHECK(t.is_cuda(), ValueError, "NCCL all-reduce: the tensor is on ", device_name(t.device()),
           "; NCCL reduces CUDA tensors (the CPU path is MPI's)");
  TL_CHECK(slot < impl_->ready.size(), ValueError, "NCCL all-reduce: slot ", slot, " not reserved");
  TL_CHECK(impl_->comm, Error, "NCCL all-reduce after the communicator was aborted");
  CUDA_CHECK(cudaEventRecord(impl_->ready[slot], cuda::stream()));
  CUDA_CHECK(cudaStreamWaitEvent(impl_->stream, impl_->ready[slot], 0));
  impl_->settle(ncclAllReduce(t.data(), t.data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), ncclAvg,
                              impl_->comm, impl_->stream),
                "all-reduce of the gradients (NCCL)");
  CUDA_CHECK(cudaEventRecord(impl_->done[slot], impl_->stream));
}

void NcclComm::wait_on_compute_stream(size_t slot) {
  TL_CHECK(slot < impl_->done.size(), ValueError, "NCCL all-reduce: slot ", slot, " not reserved");
  CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), impl_->done[slot], 0));
}

// The reductions up to the last end_step() have ended (polled, with the deadline).
void NcclComm::wait_recorded() {
  Impl& m = *impl_;
  TL_CHECK(m.comm, Error, "NCCL: a step after the communicator was aborted");
  if (!m.step_end_recorded) return;
  const auto what = [&] {
    return detail::concat("all-reduce of the gradients (NCCL) at epoch ", m.last_epoch + 1, " step ", m.last_step + 1);
  };
  m.poll(what, [&] {
    const cudaError_t q = cudaEventQuery(m.step_end);
    if (q != cudaErrorNotReady) CUDA_CHECK(q);
    return q == cudaSuccess;
  });
}

void NcclComm::end_step(int epoch, int64_t step) {
  wait_recorded();  // the previous step's reductions: normally over long ago
  Impl& m = *impl_;
  CUDA_CHECK(cudaEventRecord(m.step_end, m.stream));
  m.step_end_recorded = true;
  m.last_epoch = epoch;
  m.last_step = step;
}

void NcclComm::drain() { wait_recorded(); }

#else  // no NCCL in this build

struct NcclComm::Impl {};

NcclComm::NcclComm(const Distributed& dist) : world_size_(dist.world_size()) {
  throw ValueError(
      "training on CUDA over several processes needs NCCL, and this tlengine was built without it: install NCCL "
      "(libnccl-dev, or NCCL for the CUDA toolkit under /usr/local/cuda), reconfigure with -DTL_WITH_NCCL=ON (CUDA "
      "and MPI are needed too) and rebuild; or add --device cpu");
}
NcclComm::~NcclComm() = default;
void NcclComm::reserve(size_t) {}
void NcclComm::start_mean(Tensor&, size_t) {}
void NcclComm::wait_on_compute_stream(size_t) {}
void NcclComm::end_step(int, int64_t) {}
void NcclComm::drain() {}

#endif

}  // namespace tl
