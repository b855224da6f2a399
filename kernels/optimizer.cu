// CUDA multi-tensor SGD and Adam/AdamW updates: one thread block per chunk of one tensor, tables of tensors
// and chunks in device memory, per-step coefficients read from device memory (formulas in
// kernels/optim_coefficients.h).
#include <string>

#include "kernels/common.cuh"
#include "kernels/optimizer.h"

namespace tl::kernels {
namespace {
constexpr int kOptimThreads = 256;

// The coefficients in T, converted once per thread from the device copy exactly as the CPU reference converts
// them (static_cast: round to nearest).
template <typename T>
struct SgdArgs {
  T neg_lr, weight_decay, momentum, one_minus_dampening;
  bool use_weight_decay, use_momentum, nesterov, first;
  __device__ explicit SgdArgs(const SgdCoefficients& c)
      : neg_lr(static_cast<T>(c.neg_lr)), weight_decay(static_cast<T>(c.weight_decay)),
        momentum(static_cast<T>(c.momentum)), one_minus_dampening(static_cast<T>(c.one_minus_dampening)),
        use_weight_decay(c.weight_decay != 0.0), use_momentum(c.momentum != 0.0), nesterov(c.nesterov),
        first(c.first) {}
};

template <typename T>
struct AdamArgs {
  T l2, decay_factor, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
  bool use_l2, decoupled, amsgrad;
  __device__ explicit AdamArgs(const AdamCoefficients& c)
      : l2(static_cast<T>(c.l2)), decay_factor(static_cast<T>(c.decay_factor)), beta1(static_cast<T>(c.beta1)),
        one_minus_beta1(static_cast<T>(c.one_minus_beta1)), beta2(static_cast<T>(c.beta2)),
        one_minus_beta2(static_cast<T>(c.one_minus_beta2)),
        bias_correction2_sqrt(static_cast<T>(c.bias_correction2_sqrt)), eps(static_cast<T>(c.eps)),
        neg_step_size(static_cast<T>(c.neg_step_size)), use_l2(c.l2 != 0.0), decoupled(c.decoupled),
        amsgrad(c.amsgrad) {}
};

__device__ __forceinline__ float dev_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double dev_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float dev_max(float a, float b) { return (a != a || a > b) ? a : b; }  // NaN wins
__device__ __forceinline__ double dev_max(double a, double b) { return (a != a || a > b) ? a : b; }

template <typename T>
__global__ void sgd_kernel(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                           const SgdCoefficients* coefficients) {
  const SgdArgs<T> a(*coefficients);
  const OptimChunk c = chunks[blockIdx.x];
  const OptimTensor t = tensors[c.tensor];
  T* p = static_cast<T*>(t.param);
  const T* g = static_cast<const T*>(grads[c.tensor]);
  T* buf = static_cast<T*>(t.state0);
  const int64_t begin = static_cast<int64_t>(c.chunk) * kOptimChunk;
  const int64_t end = begin + kOptimChunk < t.numel ? begin + kOptimChunk : t.numel;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const T pv = p[i];
    T d = g[i];
    if (a.use_weight_decay) d = d + a.weight_decay * pv;
    if (a.use_momentum) {
      T b;
      if (a.first) {
        b = d;
      } else {
        b = buf[i] * a.momentum;
        b = b + a.one_minus_dampening * d;
      }
      buf[i] = b;
      d = a.nesterov ? d + a.momentum * b : b;
    }
    p[i] = pv + a.neg_lr * d;
  }
}

template <typename T>
__global__ void adam_kernel(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                            const AdamCoefficients* coefficients) {
  const AdamArgs<T> a(*coefficients);
  const OptimChunk c = chunks[blockIdx.x];
  const OptimTensor t = tensors[c.tensor];
  T* p = static_cast<T*>(t.param);
  const T* g = static_cast<const T*>(grads[c.tensor]);
  T* m = static_cast<T*>(t.state0);
  T* v = static_cast<T*>(t.state1);
  T* vmax = static_cast<T*>(t.state2);
  const int64_t begin = static_cast<int64_t>(c.chunk) * kOptimChunk;
  const int64_t end = begin + kOptimChunk < t.numel ? begin + kOptimChunk : t.numel;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    T pv = p[i];
    T gv = g[i];
    if (a.decoupled) pv = pv * a.decay_factor;
    if (a.use_l2) gv = gv + a.l2 * pv;
    T mv = m[i] * a.beta1;
    mv = mv + a.one_minus_beta1 * gv;
    T vv = v[i] * a.beta2;
    vv = vv + a.one_minus_beta2 * gv * gv;
    m[i] = mv;
    v[i] = vv;
    T den = vv;
    if (a.amsgrad) {
      den = dev_max(vmax[i], vv);
      vmax[i] = den;
    }
    den = dev_sqrt(den) / a.bias_correction2_sqrt + a.eps;
    p[i] = pv + a.neg_step_size * mv / den;
  }
}

void check_launch(int64_t num_chunks, DType dtype, const char* what) {
  TL_CHECK(num_chunks >= 1 && num_chunks <= 0x7fffffffLL, ValueError, what, ": ", num_chunks,
           " chunks is outside [1, 2^31)");
  TL_CHECK(dtype == DType::F32 || dtype == DType::F64, DTypeError, what, ": parameters must be float32 or float64, not ",
           dtype_name(dtype));
}
}  // namespace

void sgd_multi_tensor(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                      int64_t num_chunks, DType dtype, const SgdCoefficients* c, cudaStream_t stream) {
  check_launch(num_chunks, dtype, "sgd_multi_tensor");
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    sgd_kernel<T><<<static_cast<unsigned>(num_chunks), kOptimThreads, 0, stream>>>(tensors, grads, chunks, c);
  };
  if (dtype == DType::F32) launch(0.0f); else launch(0.0);
  TL_LAUNCH_CHECK();
}

void adam_multi_tensor(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                       int64_t num_chunks, DType dtype, const AdamCoefficients* c, cudaStream_t stream) {
  check_launch(num_chunks, dtype, "adam_multi_tensor");
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    adam_kernel<T><<<static_cast<unsigned>(num_chunks), kOptimThreads, 0, stream>>>(tensors, grads, chunks, c);
  };
  if (dtype == DType::F32) launch(0.0f); else launch(0.0);
  TL_LAUNCH_CHECK();
}

}  // namespace tl::kernels
