// Shared helpers for tlengine's CUDA kernels: dtype dispatch, float conversion of bf16/f16, grid sizing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/index_math.h"

namespace tl::kernels {

// Accumulation type: double for double, float for the other floating types. The integer types (fill and cast
// only) go through double, as the host conversions do (exact for int32, and for int64 up to 2^53).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <> struct Acc<int32_t> { using type = double; };
template <> struct Acc<int64_t> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load(const T* p, int64_t i) {
  return static_cast<typename Acc<T>::type>(p[i]);
}
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <> __device__ __forceinline__ float load<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }

inline unsigned grid_for(int64_t n, int block = 256) {
  int64_t g = (n + block - 1) / block;
  if (g > 65535LL * 32) g = 65535LL * 32;  // grid-stride loops cover the rest
  if (g < 1) g = 1;
  return static_cast<unsigned>(g);
}

#define TL_KERNEL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

// The same loop with the body seeing `i` as index type I (int32_t or int64_t, see kernels/index_math.h): the
// loop counter itself stays 64-bit, so stepping past n never overflows; the body's division and modulo run in I.
#define TL_KERNEL_LOOP_AS(I, i, n)                                                                             \
  for (int64_t i##_wide = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i##_wide < (n);                      \
       i##_wide += (int64_t)blockDim.x * gridDim.x)                                                            \
    if (const I i = static_cast<I>(i##_wide); true)

// Calls `body` with a typed null pointer `(scalar_t*)nullptr` for the dtype (use decltype to get the type).
#define TL_DISPATCH_ALL(dtype, what, ...)                                        \
  switch (dtype) {                                                              \
    case ::tl::DType::F32: { using scalar_t = float; __VA_ARGS__; break; }      \
    case ::tl::DType::F64: { using scalar_t = double; __VA_ARGS__; break; }     \
    case ::tl::DType::BF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; } \
    case ::tl::DType::F16: { using scalar_t = __half; __VA_ARGS__; break; }     \
    default: throw ::tl::DTypeError(std::string(what) + ": unsupported dtype"); \
  }

// TL_DISPATCH_ALL plus int32 and int64: for the kernels that only store and convert values (fill, cast).
#define TL_DISPATCH_ALL_AND_INT(dtype, what, ...)                                \
  switch (dtype) {                                                              \
    case ::tl::DType::F32: { using scalar_t = float; __VA_ARGS__; break; }      \
    case ::tl::DType::F64: { using scalar_t = double; __VA_ARGS__; break; }     \
    case ::tl::DType::BF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; } \
    case ::tl::DType::F16: { using scalar_t = __half; __VA_ARGS__; break; }     \
    case ::tl::DType::I32: { using scalar_t = int32_t; __VA_ARGS__; break; }    \
    case ::tl::DType::I64: { using scalar_t = int64_t; __VA_ARGS__; break; }    \
    default: throw ::tl::DTypeError(std::string(what) + ": unsupported dtype"); \
  }

#define TL_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

}  // namespace tl::kernels
