// Host-side rules for using cuDNN that need no CUDA header, so that the CPU-only build compiles them and the CPU
// tests check them: which status codes mean "this configuration is not supported, use another way", the
// fall-through over a ranked list of candidates (cuDNN algorithms) as PyTorch's try_all does it, which
// heuristic offers a convolution may take, and how a batch too large for one cuDNN call is split.
// (layers/cudnn_util.h has the CUDA side: descriptors, dtype mapping, scaling factors.)
//
// cuDNN 9 status codes are category + sub-code (cudnn_graph.h: CUDNN_STATUS_CATEGORY(code) = code / 1000 * 1000):
// 3000-3999 NOT_SUPPORTED (3000 itself, and e.g. 3002 _SHAPE, 3003 _DATA_TYPE, 3004 _LAYOUT, 3010
// _SHARED_MEMORY_INSUFFICIENT), 5000-5999 EXECUTION_FAILED. layers/cudnn_util.h checks these values against the
// header at compile time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <climits>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"

namespace tl::cudnn_rules {

constexpr int kSuccess = 0;
constexpr int kNotSupported = 3000;     // CUDNN_STATUS_NOT_SUPPORTED, the category
constexpr int kExecutionFailed = 5000;  // CUDNN_STATUS_EXECUTION_FAILED, the category

// CUDNN_STATUS_CATEGORY without the header.
constexpr int category(int code) { return code / 1000 * 1000; }
// Any NOT_SUPPORTED sub-code: the caller may take another path (an other algorithm, its own kernels).
constexpr bool not_supported(int code) { return category(code) == kNotSupported; }
constexpr bool execution_failed(int code) { return category(code) == kExecutionFailed; }

// What one attempt at a candidate came to.
enum class Outcome {
  Ran,              // it ran: use it
  NotSupported,     // a NOT_SUPPORTED status: try the next
  ExecutionFailed,  // an EXECUTION_FAILED status: try the next
  OutOfMemory,      // its workspace could not be allocated: try the next
};
// The outcome of a cuDNN status returned by a candidate's call, or nullopt for a status that no other candidate
// can cure (bad parameters, internal errors): the caller throws it.
inline std::optional<Outcome> outcome_of(int code) {
  if (code == kSuccess) return Outcome::Ran;
  if (not_supported(code)) return Outcome::NotSupported;
  if (execution_failed(code)) return Outcome::ExecutionFailed;
  return std::nullopt;
}
inline const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::Ran: return "ran";
    case Outcome::NotSupported: return "not supported";
    case Outcome::ExecutionFailed: return "execution failed";
    case Outcome::OutOfMemory: return "workspace out of memory";
  }
  return "?";
}

// Tries candidates in the order `first`, then 0, 1, ... (skipping `first`), until attempt(i) returns Ran; returns
// that index. attempt(i) throws for errors that end the search. Throws CudnnError naming `what` and each
// candidate's outcome when none ran. `first` may be count (no preferred candidate).
template <typename Attempt>
size_t run_first_that_works(size_t count, size_t first, Attempt&& attempt, const std::string& what) {
  std::string tried;
  auto try_one = [&](size_t i) {
    const Outcome o = attempt(i);
    if (o == Outcome::Ran) return true;
    tried += detail::concat(tried.empty() ? "" : ", ", "#", i, " ", outcome_name(o));
    return false;
  };
  if (first < count && try_one(first)) return first;
  for (size_t i = 0; i < count; ++i)
    if (i != first && try_one(i)) return i;
  throw CudnnError(detail::concat(what, ": none of the ", count, " cuDNN candidates ran (",
                                  tried.empty() ? "no candidate" : tried, ")"));
}

// Math types of a convolution candidate (cudnnMathType_t without the header).
enum class ConvMath { Default, TensorOp, TensorOpAllowConversion, Fma };
// The math type to set on the descriptor for a heuristic offer of math type `offered`, or nullopt to skip the
// offer. `fma_only`: float32 with TF32 off, which runs FMA math only (offers of tensor-op math are skipped).
// Float32 and float64 data never take TENSOR_OP_MATH_ALLOW_CONVERSION (cuDNN would compute them in half
// precision); half-precision data takes what is offered.
inline std::optional<ConvMath> conv_math_for(bool half_data, bool fma_only, ConvMath offered) {
  if (fma_only) {
    if (offered != ConvMath::Fma && offered != ConvMath::Default) return std::nullopt;
    return ConvMath::Fma;
  }
  if (!half_data && offered == ConvMath::TensorOpAllowConversion) return std::nullopt;
  return offered;
}

// cuDNN's legacy API takes int dimensions and strides: a tensor of one call holds at most this many elements.
constexpr int64_t kMaxElements = INT32_MAX;
// Images per cuDNN call so that each tensor of the call, of `per_image` elements per image (the largest of x, y),
// stays within kMaxElements: n itself when the whole batch fits, 0 when a single image is already too large.
constexpr int64_t images_per_call(int64_t n, int64_t per_image) {
  if (per_image <= 0) return n;
  const int64_t fit = kMaxElements / per_image;
  return fit < n ? fit : n;
}

}  // namespace tl::cudnn_rules
