// Per-step scalars in device memory: a small block of plain structs (the optimizer's coefficients per fused
// launch: lr, Adam bias corrections, SGD's first-update flag) that CUDA kernels read through a device pointer
// instead of taking by value. A kernel argument is baked into a captured CUDA graph, so a replay would reuse the
// lr and bias corrections of the captured step; a value read from device memory is whatever the last copy wrote.
//
// Why host-computed and copied, not computed on the device from a device step counter (PyTorch's capturable
// Adam): the CPU reference and the kernels must use the same doubles, bit for bit (kernels/optim_coefficients.h
// is the single definition), and CUDA's pow() is not glibc's (up to 2 ulp apart), so a device-side bias
// correction would drift from the CPU reference and from PyTorch; the lr comes from a host-side schedule anyway.
//
// Each step the host fills the table (set()), then upload() queues ONE host->device copy of it on the stream,
// from a pinned ring slot (so the host may rewrite the table for the next step while the copy is queued; a slot
// is reused only after its copy ran, a wait that only happens when the host is kRingSlots uploads ahead). The
// copy is never part of a captured graph: while the stream is capturing, upload() only marks the table pending,
// and whoever launches the graph calls flush() on the launching stream first (a captured memcpy node would copy
// from one fixed pinned slot). The device block keeps its address while it is big enough; device_generation()
// changes when it moves, which invalidates graphs that captured the old address.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

struct CUstream_st;

namespace tl::train {

class StepScalars {
 public:
  static constexpr int kRingSlots = 4;
  static constexpr size_t kAlign = 16;  // every entry starts on this boundary (doubles, and room for vector loads)

  StepScalars();
  ~StepScalars();
  StepScalars(const StepScalars&) = delete;
  StepScalars& operator=(const StepScalars&) = delete;
  StepScalars(StepScalars&&) noexcept;
  StepScalars& operator=(StepScalars&&) noexcept;

  // Host table. clear() starts a step's table; add() appends an entry and returns its byte offset; at(offset)
  // reads it back (tests, and the CPU reference, which uses the same entries as the kernels).
  void clear() { host_.clear(); }
  template <typename T>
  size_t add(const T& value) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= kAlign, "a step scalar is a plain struct");
    const size_t offset = (host_.size() + kAlign - 1) / kAlign * kAlign;
    host_.resize(offset + sizeof(T));
    std::memcpy(host_.data() + offset, &value, sizeof(T));
    return offset;
  }
  template <typename T>
  T at(size_t offset) const {
    TL_CHECK(offset % kAlign == 0 && offset + sizeof(T) <= host_.size(), ValueError, "StepScalars::at: offset ",
             offset, " (", sizeof(T), " bytes) is outside the table of ", host_.size(), " bytes");
    T value;
    std::memcpy(&value, host_.data() + offset, sizeof(T));
    return value;
  }
  size_t bytes() const { return host_.size(); }
  const unsigned char* host_data() const { return host_.data(); }

  // Ring bookkeeping (host only, tested on the CPU): the slot the next upload uses, and how many uploads ran.
  int next_slot() const { return static_cast<int>(uploads_ % kRingSlots); }
  int64_t uploads() const { return uploads_; }
  // Increments each time the device block is (re)allocated; a captured graph holds the block's address.
  int64_t device_generation() const { return generation_; }
  bool pending() const { return pending_; }

#if TL_WITH_CUDA
  // Queues the copy of the table to the device block on `stream` (deferred while `stream` is capturing, see the
  // top of this file) and returns the device block (entry at offset k: device_block + k). Allocates the block only
  // when the table outgrew it, which is an error during a capture (warm up eagerly first).
  const unsigned char* upload(CUstream_st* stream);
  // Queues a deferred copy (no-op when none is pending). `stream` must not be capturing.
  void flush(CUstream_st* stream);
#endif

 private:
#if TL_WITH_CUDA
  void copy_now(CUstream_st* stream);
#endif
  std::vector<unsigned char> host_;
  Tensor device_;  // the block (int64 words), on CUDA
  int64_t generation_ = 0;
  int64_t uploads_ = 0;
  bool pending_ = false;
  struct Ring;  // pinned slots and their events (step_scalars.cpp)
  std::unique_ptr<Ring> ring_;
};

}  // namespace tl::train
