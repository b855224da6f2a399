// Conv + batch-norm folding and the fused bias + residual add + ReLU epilogue (the op is in layers/fused.h).
#include "kernels/common.cuh"
#include "kernels/fused.h"

namespace tl::kernels {
namespace {
// One grid-stride pass over max(numel(w), k) indices: weight elements, and the k folded biases.
// P is the parameter type (float or double), T the output weight type.
template <typename T>
__global__ void fold_conv_bn_kernel(const typename Acc<T>::type* w, const typename Acc<T>::type* bias,
                                    const typename Acc<T>::type* gamma, const typename Acc<T>::type* beta,
                                    const typename Acc<T>::type* mean, const typename Acc<T>::type* var,
                                    typename Acc<T>::type eps, T* w_out, typename Acc<T>::type* b_out, int64_t k,
                                    int64_t inner) {
  using P = typename Acc<T>::type;
  const int64_t nw = k * inner;
  const int64_t total = nw > k ? nw : k;
  TL_KERNEL_LOOP(i, total) {
    if (i < nw) {
      const int64_t c = i / inner;
      const P s = gamma[c] / sqrt(var[c] + eps);
      w_out[i] = from_acc<T>(w[i] * s);
    }
    if (i < k) {
      const P s = gamma[i] / sqrt(var[i] + eps);
      b_out[i] = beta[i] + ((bias ? bias[i] : P(0)) - mean[i]) * s;
    }
  }
}

template <typename T, typename I>
__global__ void bias_add_act_kernel(T* y, const typename Acc<T>::type* b, const T* residual, bool relu,
                                    int64_t total, I k, I hw, bool nhwc) {
  using A = typename Acc<T>::type;
  TL_KERNEL_LOOP_AS(I, i, total) {
    const I c = nhwc ? i % k : (i / hw) % k;
    A v = load(y, i) + b[c];
    if (residual) v += load(residual, i);
    if (relu) v = v > A(0) ? v : A(0);
    y[i] = from_acc<T>(v);
  }
}
}  // namespace

void fold_conv_bn(const void* w, const void* bias, const void* gamma, const void* beta, const void* running_mean,
                  const void* running_var, double eps, void* w_out, void* b_out, DType out_dtype, int64_t k,
                  int64_t inner, cudaStream_t stream) {
  if (k == 0) return;
  const int64_t total = k * inner > k ? k * inner : k;
  TL_DISPATCH_ALL(out_dtype, "fold_conv_bn", {
    using P = typename Acc<scalar_t>::type;
    fold_conv_bn_kernel<scalar_t><<<grid_for(total), 256, 0, stream>>>(
        static_cast<const P*>(w), static_cast<const P*>(bias), static_cast<const P*>(gamma),
        static_cast<const P*>(beta), static_cast<const P*>(running_mean), static_cast<const P*>(running_var),
        static_cast<P>(eps), static_cast<scalar_t*>(w_out), static_cast<P*>(b_out), k, inner);
  });
  TL_LAUNCH_CHECK();
}

void bias_add_act(void* y, const void* b, const void* residual, bool relu, DType dtype, int64_t n, int64_t k,
                  int64_t hw, bool nhwc, cudaStream_t stream) {
  const int64_t total = n * k * hw;
  if (total == 0) return;
  TL_DISPATCH_ALL(dtype, "bias_add_act", {
    using P = typename Acc<scalar_t>::type;
    with_index_type({total}, [&](auto index) {
      using I = decltype(index);
      bias_add_act_kernel<scalar_t, I><<<grid_for(total), 256, 0, stream>>>(
          static_cast<scalar_t*>(y), static_cast<const P*>(b), static_cast<const scalar_t*>(residual), relu, total,
          I(k), I(hw), nhwc);
    });
  });
  TL_LAUNCH_CHECK();
}
}  // namespace tl::kernels
