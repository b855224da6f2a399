// StepScalars (see step_scalars.h): the pinned ring and the one host->device copy per step.
#include "train/step_scalars.h"

#include <algorithm>

#include "core/device.h"
#if TL_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tl::train {

#if TL_WITH_CUDA
struct StepScalars::Ring {
  void* host[kRingSlots] = {};
  size_t capacity = 0;  // bytes of each slot
  cudaEvent_t copied[kRingSlots] = {};
  bool queued[kRingSlots] = {};

  ~Ring() {
    for (int i = 0; i < kRingSlots; ++i) {
      if (copied[i]) {
        cudaEventSynchronize(copied[i]);  // a queued copy still reads host[i]
        cudaEventDestroy(copied[i]);
      }
      if (host[i]) cudaFreeHost(host[i]);
    }
  }
  // Slot `i` ready for `bytes`: its previous copy ran (normally long ago), and it is big enough.
  void* slot(int i, size_t bytes) {
    if (queued[i]) CUDA_CHECK(cudaEventSynchronize(copied[i]));
    queued[i] = false;
    if (bytes > capacity) {
      for (int k = 0; k < kRingSlots; ++k) {
        if (queued[k]) CUDA_CHECK(cudaEventSynchronize(copied[k]));
        queued[k] = false;
        if (host[k]) CUDA_CHECK(cudaFreeHost(host[k]));
        host[k] = nullptr;
      }
      capacity = std::max(bytes, 2 * capacity);
      for (int k = 0; k < kRingSlots; ++k) CUDA_CHECK(cudaMallocHost(&host[k], capacity));
    }
    if (!copied[i]) CUDA_CHECK(cudaEventCreateWithFlags(&copied[i], cudaEventDisableTiming));
    return host[i];
  }
};
#else
struct StepScalars::Ring {};
#endif

StepScalars::StepScalars() = default;
StepScalars::~StepScalars() = default;
StepScalars::StepScalars(StepScalars&&) noexcept = default;
StepScalars& StepScalars::operator=(StepScalars&&) noexcept = default;

#if TL_WITH_CUDA
const unsigned char* StepScalars::upload(CUstream_st* stream) {
  const int64_t words = static_cast<int64_t>((std::max<size_t>(host_.size(), 1) + 7) / 8);
  const bool capture = cuda::stream_is_capturing(stream);
  if (!device_.defined() || device_.numel() < words) {
    TL_CHECK(!capture, CudaError, "the per-step scalar table grew from ", device_.defined() ? device_.nbytes() : 0,
             " to ", host_.size(), " bytes during a CUDA graph capture; capture only after an eager warm-up step");
    device_ = Tensor::empty({std::max<int64_t>(words, 32)}, DType::I64, Device::CUDA);
    ++generation_;
  }
  if (capture) {
    pending_ = true;
  } else {
    copy_now(stream);
  }
  return static_cast<const unsigned char*>(device_.data());
}

void StepScalars::flush(CUstream_st* stream) {
  if (!pending_) return;
  TL_CHECK(!cuda::stream_is_capturing(stream), CudaError, "StepScalars::flush: the stream is capturing; flush on the stream that "
           "launches the graph, before the launch");
  copy_now(stream);
}

void StepScalars::copy_now(CUstream_st* stream) {
  if (!ring_) ring_ = std::make_unique<Ring>();
  const int i = next_slot();
  void* pinned = ring_->slot(i, std::max<size_t>(host_.size(), 1));
  if (!host_.empty()) {
    std::memcpy(pinned, host_.data(), host_.size());
    CUDA_CHECK(cudaMemcpyAsync(device_.data(), pinned, host_.size(), cudaMemcpyHostToDevice, stream));
  }
  CUDA_CHECK(cudaEventRecord(ring_->copied[i], stream));
  ring_->queued[i] = true;
  ++uploads_;
  pending_ = false;
}
#endif

}  // namespace tl::train
