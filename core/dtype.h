// Element types, devices and memory layouts of a Tensor, plus host-side bfloat16/float16 conversions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace tl {

// int32/int64 hold class labels, indices and counters such as num_batches_tracked (no arithmetic kernels).
// float32 and float64 run everywhere (float64 is for gradient checks on the CPU);
// bfloat16 and float16 are CUDA compute types (the CPU only stores and converts them).
enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64 };  // I32/I64: labels, indices, counters
enum class Device : uint8_t { CPU, CUDA };
// Physical order of a 4-D tensor whose logical shape is always (N, C, H, W).
// NHWC is channels-last, what tensor cores want. Tensors of other ranks are row-major (NCHW).
enum class Layout : uint8_t { NCHW, NHWC };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);
const char* layout_name(Layout l);
inline bool is_floating_half(DType t) { return t == DType::BF16 || t == DType::F16; }

// The failure of a dtype dispatch (the TL_DISPATCH_* macros of kernels/common.cuh) that has no case for `t`:
// throws DTypeError "<op>: unsupported dtype <name> (takes <accepted>) [file:line]"; a value outside the enum is
// named by its number.
[[noreturn]] void throw_unsupported_dtype(const char* op, DType t, const char* accepted, const char* file, int line);

// The CPU reference paths compute in float32 and float64: calls f(T{}) with T = double for F64, else float (the
// caller has checked that the dtype is one of the two), e.g. with_cpu_float(x.dtype(), [&](auto t) {
// using T = decltype(t); loop(x.data_as<T>()); }).
template <class F>
decltype(auto) with_cpu_float(DType t, F&& f) {
  if (t == DType::F64) return f(double{});
  return f(float{});
}

// Host conversions, round-to-nearest-even, NaN preserved.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);

}  // namespace tl
