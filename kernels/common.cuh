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

// Runs the statements `...` with `scalar_t` the C++ type of `dtype`; `what` names the op. A dtype without a case
// throws DTypeError naming the op, the dtype and what the op takes (tl::throw_unsupported_dtype), so that a
// failure says which call got which dtype. The dtype is evaluated once.
#define TL_DISPATCH_ALL(dtype, what, ...)                                                                              \
  switch (const ::tl::DType tl_dispatch_dtype = (dtype); tl_dispatch_dtype) {                                          \
    case ::tl::DType::F32: { using scalar_t = float; __VA_ARGS__; break; }                                             \
    case ::tl::DType::F64: { using scalar_t = double; __VA_ARGS__; break; }                                            \
    case ::tl::DType::BF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }                                    \
    case ::tl::DType::F16: { using scalar_t = __half; __VA_ARGS__; break; }                                            \
    default: ::tl::throw_unsupported_dtype(what, tl_dispatch_dtype, "float32, float64, bfloat16 or float16",           \
                                          __FILE__, __LINE__);                                                         \
  }

// TL_DISPATCH_ALL plus int32 and int64: for the kernels that only store and convert values (fill, cast). Every
// DType has a case; the default catches a corrupted value (its number is in the message).
#define TL_DISPATCH_ALL_AND_INT(dtype, what, ...)                                                                      \
  switch (const ::tl::DType tl_dispatch_dtype = (dtype); tl_dispatch_dtype) {                                          \
    case ::tl::DType::F32: { using scalar_t = float; __VA_ARGS__; break; }                                             \
    case ::tl::DType::F64: { using scalar_t = double; __VA_ARGS__; break; }                                            \
    case ::tl::DType::BF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }                                    \
    case ::tl::DType::F16: { using scalar_t = __half; __VA_ARGS__; break; }                                            \
    case ::tl::DType::I32: { using scalar_t = int32_t; __VA_ARGS__; break; }                                           \
    case ::tl::DType::I64: { using scalar_t = int64_t; __VA_ARGS__; break; }                                           \
    default: ::tl::throw_unsupported_dtype(what, tl_dispatch_dtype, "a float or integer dtype", __FILE__, __LINE__);   \
  }

#define TL_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

}  // namespace tl::kernels
