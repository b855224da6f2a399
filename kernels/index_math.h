// The index type of an element-wise CUDA kernel: 32-bit when every index and intermediate product of the kernel
// stays below 2^31, else 64-bit. Division and modulo by a run-time value (decoding a memory position into
// (n, c, h, w), the channel of an element) cost several times more in 64 bits than in 32 on the GPU, so kernels
// that decode positions are templated on the index type and the host launcher picks it with with_index_type.
// Host-only (no CUDA header): the CPU tests check the choice.
#pragma once
#include <cstdint>
#include <initializer_list>

namespace tl::kernels {

// True when 32-bit index math is exact for a kernel whose largest index or intermediate product is below each
// of `bounds` (element counts of its tensors, and any product it forms such as oh * H).
inline bool fits_int32(std::initializer_list<int64_t> bounds) {
  for (int64_t b : bounds)
    if (b < 0 || b > INT32_MAX) return false;
  return true;
}

// Calls f(int32_t{}) when fits_int32(bounds), else f(int64_t{}); f picks its index type with decltype.
template <typename F>
decltype(auto) with_index_type(std::initializer_list<int64_t> bounds, F&& f) {
  if (fits_int32(bounds)) return f(int32_t{});
  return f(int64_t{});
}

}  // namespace tl::kernels
