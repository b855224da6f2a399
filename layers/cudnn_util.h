// The cuDNN plumbing shared by the ops in layers/ (convolution, batch norm, pooling): dtype and layout mapping,
// the host scaling factors (alpha/beta), one RAII tensor descriptor, and the check of a candidate's status against
// the fall-through rules of layers/cudnn_rules.h. CUDA builds only (include it behind `#if TL_WITH_CUDA`).
#pragma once
#if !TL_WITH_CUDA
#error "layers/cudnn_util.h is for the CUDA build only"
#endif
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "core/device.h"
#include "core/error.h"
#include "core/tensor.h"
#include "layers/cudnn_rules.h"

namespace tl::cudnn_util {

static_assert(cudnn_rules::kNotSupported == CUDNN_STATUS_NOT_SUPPORTED, "cuDNN status codes changed");
static_assert(cudnn_rules::kExecutionFailed == CUDNN_STATUS_EXECUTION_FAILED, "cuDNN status codes changed");
static_assert(cudnn_rules::category(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT) ==
                  CUDNN_STATUS_CATEGORY(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT),
              "cuDNN status categories changed");

// The cuDNN data type of `t`; DTypeError naming `op` for integer types.
inline cudnnDataType_t data_type(DType t, const char* op) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::F64: return CUDNN_DATA_DOUBLE;
    case DType::BF16: return CUDNN_DATA_BFLOAT16;
    case DType::F16: return CUDNN_DATA_HALF;
    default: break;
  }
  throw DTypeError(detail::concat(op, ": no cuDNN data type for ", dtype_name(t)));
}
inline cudnnTensorFormat_t format(Layout l) { return l == Layout::NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW; }

// A host scaling factor (alpha, beta): double for double data, float for float/half/bfloat16 data (cuDNN's rule).
class Scalar {
 public:
  explicit Scalar(double v) : f_(static_cast<float>(v)), d_(v) {}
  const void* for_dtype(DType data) const { return data == DType::F64 ? static_cast<const void*>(&d_) : &f_; }

 private:
  float f_;
  double d_;
};

// A cuDNN descriptor of any kind (filter, convolution, pooling, ...), created with the object and destroyed with it.
template <typename D, cudnnStatus_t (*Create)(D*), cudnnStatus_t (*Destroy)(D)>
class Desc {
 public:
  Desc() { CUDNN_CHECK(Create(&d_)); }
  ~Desc() { Destroy(d_); }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  D get() const { return d_; }

 private:
  D d_ = nullptr;
};
using FilterDesc = Desc<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvDesc =
    Desc<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;
using PoolDesc = Desc<cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor, cudnnDestroyPoolingDescriptor>;

// A cuDNN tensor descriptor, destroyed with the object. Dimensions are always given as (n, c, h, w); the format
// says how they lie in memory.
class TensorDesc {
 public:
  TensorDesc() = default;
  // A 4-D descriptor of `t` (its dtype and layout), or of its first `n` images when n >= 0.
  TensorDesc(const Tensor& t, const char* op, int64_t n = -1) : TensorDesc() {
    set(t.dtype(), t.layout(), n >= 0 ? n : t.size(0), t.size(1), t.size(2), t.size(3), op);
  }
  TensorDesc(DType dtype, Layout layout, int64_t n, int64_t c, int64_t h, int64_t w, const char* op) : TensorDesc() {
    set(dtype, layout, n, c, h, w, op);
  }
  cudnnTensorDescriptor_t get() const { return d_.get(); }

 private:
  void set(DType dtype, Layout layout, int64_t n, int64_t c, int64_t h, int64_t w, const char* op) {
    TL_CHECK(n * c * h * w <= cudnn_rules::kMaxElements, ShapeError, op, ": a cuDNN tensor of ", n, "x", c, "x", h,
             "x", w, " elements exceeds cuDNN's 2^31 limit");
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_.get(), format(layout), data_type(dtype, op), static_cast<int>(n),
                                           static_cast<int>(c), static_cast<int>(h), static_cast<int>(w)));
  }
  Desc<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor> d_;
};

// The fall-through outcome of a candidate's cuDNN call (cudnn_rules::outcome_of); throws CudnnError naming the
// call, file and line for a status no other candidate can cure. After a failed execution the CUDA error state is
// cleared, as PyTorch's try_all does.
inline cudnn_rules::Outcome attempt_outcome(cudnnStatus_t st, const char* call, const char* file, int line) {
  const std::optional<cudnn_rules::Outcome> o = cudnn_rules::outcome_of(static_cast<int>(st));
  if (!o) detail::throw_cudnn(static_cast<int>(st), call, file, line);
  if (*o == cudnn_rules::Outcome::ExecutionFailed) (void)cudaGetLastError();
  return *o;
}
// True when a cuDNN call ran, false when its status is in the NOT_SUPPORTED category (the caller takes its own
// kernels); any other failure throws, naming the call, file and line.
inline bool ran_or_unsupported(cudnnStatus_t st, const char* call, const char* file, int line) {
  if (st == CUDNN_STATUS_SUCCESS) return true;
  if (cudnn_rules::not_supported(static_cast<int>(st))) return false;
  detail::throw_cudnn(static_cast<int>(st), call, file, line);
}

}  // namespace tl::cudnn_util

// TL_CUDNN_ATTEMPT(call): the cudnn_rules::Outcome of one candidate's call (throws for fatal statuses).
#define TL_CUDNN_ATTEMPT(call) ::tl::cudnn_util::attempt_outcome((call), #call, __FILE__, __LINE__)
// TL_CUDNN_RAN(call): true when the call ran, false when cuDNN does not support it (any NOT_SUPPORTED sub-code).
#define TL_CUDNN_RAN(call) ::tl::cudnn_util::ran_or_unsupported((call), #call, __FILE__, __LINE__)
