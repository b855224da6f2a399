// Batch norm 2d: argument checks, CPU reference, CUDA dispatch (cuDNN legacy BN + own kernels) and autograd
// (see batchnorm.h).
#include "layers/batchnorm.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/batchnorm.h"
#include "layers/cudnn_util.h"
#endif
#include "layers/channel_sums.h"
#include "layers/layer_util.h"
#include "layers/mac_counter.h"

namespace tl {
namespace {

// ---------------------------------------------------------------- checks and shared helpers

struct Dims {
  int64_t n, c, hw;
  int64_t m() const { return n * hw; }  // values per channel
};
Dims dims_of(const Tensor& x) { return {x.size(0), x.size(1), x.size(2) * x.size(3)}; }
#if TL_WITH_CUDA
kernels::BnDims kdims(const Tensor& x) {
  Dims d = dims_of(x);
  return {d.n, d.c, d.hw, x.layout() == Layout::NHWC};
}
#endif  // TL_WITH_CUDA

void check_input(const Tensor& x, const char* op) {
  check_defined(x, op);
  check_rank(x, 4, op, "x (N, C, H, W)");
  if (x.is_cuda()) {
    TL_CHECK(x.dtype() != DType::I32 && x.dtype() != DType::I64, DTypeError, op, ": x must be floating point, got ",
             x.str());
  } else {
    check_cpu_float(x, op);
  }
}

// A per-channel tensor (gamma, beta, running stats, saved statistics): shape (C), parameter dtype, x's device.
void check_channel_tensor(const Tensor& t, const Tensor& x, const char* op, const char* what) {
  TL_CHECK(t.defined(), ValueError, op, ": ", what, " is undefined (gamma, beta and running statistics are required)");
  const int64_t c = x.size(1);
  TL_CHECK(t.shape() == Shape{c}, ShapeError, op, ": ", what, " must have shape [", c, "] for x ", x.str(), ", got ",
           t.str());
  TL_CHECK(t.dtype() == batchnorm_param_dtype(x.dtype()), DTypeError, op, ": ", what, " must be ",
           dtype_name(batchnorm_param_dtype(x.dtype())), " for x ", x.str(), ", got ", t.str());
  TL_CHECK(t.device() == x.device(), DTypeError, op, ": ", what, " is on ", device_name(t.device()), ", x is ",
           x.str());
}

// ---------------------------------------------------------------- CPU reference

inline int64_t offset(bool nhwc, const Dims& d, int64_t n, int64_t c, int64_t s) {
  return nhwc ? (n * d.hw + s) * d.c + c : (n * d.c + c) * d.hw + s;
}

// Writes channel c's dgamma and dbeta (when requested) following their accumulate flags.
template <typename T>
void write_channel_grads(const BatchNormGrads& gr, int64_t c, double dgamma, double dbeta) {
  if (gr.dgamma) {
    T& o = gr.dgamma->data_as<T>()[c];
    o = static_cast<T>(gr.dgamma_accumulate ? o + dgamma : dgamma);
  }
  if (gr.dbeta) {
    T& o = gr.dbeta->data_as<T>()[c];
    o = static_cast<T>(gr.dbeta_accumulate ? o + dbeta : dbeta);
  }
}

// --sync-bn: per-channel sums (one or more vectors), and the value count, summed over the ranks in place, in one
// all-reduce through the layer's buffer (no allocation once it is big enough). No-op without sync.
void sync_sums(const BatchNormSync* sync, std::initializer_list<std::vector<double>*> parts, double& m) {
  if (!sync || !sync->active()) return;
  size_t n = 1;
  for (const std::vector<double>* v : parts) n += v->size();
  std::vector<double>& buf = sync->buffer;
  if (buf.size() < n) buf.resize(n);
  auto it = buf.begin();
  for (const std::vector<double>* v : parts) it = std::copy(v->begin(), v->end(), it);
  *it = m;
  sync->dist->all_reduce_sum(buf.data(), n, sync->what, sync->at);
  it = buf.begin();
  for (std::vector<double>* v : parts) {
    std::copy(it, it + static_cast<std::ptrdiff_t>(v->size()), v->begin());
    it += static_cast<std::ptrdiff_t>(v->size());
  }
  m = *it;
}
void sync_sums(const BatchNormSync* sync, std::vector<double>& sums, double& m) { sync_sums(sync, {&sums}, m); }

// Per-channel mean and biased variance (over this batch, then over the ranks with --sync-bn): sum x first, then
// sum (x - mean)^2 around the mean (not E[x^2] - mean^2, which cancels), each channel in (n, s) order.
template <typename T>
BatchMoments moments_cpu(const Tensor& x, const BatchNormSync* sync) {
  const Dims d = dims_of(x);
  const bool nx = x.layout() == Layout::NHWC;
  const T* xp = x.data_as<T>();
  BatchMoments mo{std::vector<double>(static_cast<size_t>(d.c), 0.0), std::vector<double>(static_cast<size_t>(d.c), 0.0),
                  static_cast<double>(d.m())};
  std::vector<double>& sum = mo.mean;
  std::vector<double>& sq = mo.var;
  for (int64_t c = 0; c < d.c; ++c)
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s) sum[c] += xp[offset(nx, d, n, c, s)];
  sync_sums(sync, sum, mo.count);
  for (int64_t c = 0; c < d.c; ++c) {
    sum[c] /= mo.count;
    const double mean = sum[c];
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s) {
        const double v = xp[offset(nx, d, n, c, s)] - mean;
        sq[c] += v * v;
      }
  }
  double m_sq = static_cast<double>(d.m());
  sync_sums(sync, sq, m_sq);
  for (int64_t c = 0; c < d.c; ++c) sq[c] /= mo.count;
  return mo;
}

// running_mean = (1 - f) running_mean + f mean, running_var = (1 - f) running_var + f var m / (m - 1).
template <typename T>
void update_running_cpu(Tensor& running_mean, Tensor& running_var, const BatchMoments& mo, double factor) {
  T *rm = running_mean.data_as<T>(), *rv = running_var.data_as<T>();
  const double m = mo.count;
  for (size_t c = 0; c < mo.mean.size(); ++c) {
    rm[c] = static_cast<T>((1.0 - factor) * rm[c] + factor * mo.mean[c]);
    rv[c] = static_cast<T>((1.0 - factor) * rv[c] + factor * mo.var[c] * m / (m - 1.0));
  }
}

// Sums per channel first (over this batch, then over the ranks with --sync-bn), then the output.
template <typename T>
void forward_train_cpu(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, Tensor& save_mean,
                       Tensor& save_invstd, Tensor& running_mean, Tensor& running_var, double factor, double eps,
                       const BatchNormSync* sync) {
  const Dims d = dims_of(x);
  const bool nx = x.layout() == Layout::NHWC, ny = y.layout() == Layout::NHWC;
  const T *xp = x.data_as<T>(), *g = gamma.data_as<T>(), *b = beta.data_as<T>();
  T *yp = y.data_as<T>(), *sm = save_mean.data_as<T>(), *si = save_invstd.data_as<T>();
  const BatchMoments mo = moments_cpu<T>(x, sync);
  for (int64_t c = 0; c < d.c; ++c) {
    const double mean = mo.mean[c];
    const double invstd = 1.0 / std::sqrt(mo.var[c] + eps);
    const double scale = invstd * g[c], shift = b[c];
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s)
        yp[offset(ny, d, n, c, s)] = static_cast<T>((xp[offset(nx, d, n, c, s)] - mean) * scale + shift);
    sm[c] = static_cast<T>(mean);
    si[c] = static_cast<T>(invstd);
  }
  update_running_cpu<T>(running_mean, running_var, mo, factor);
}

template <typename T>
void forward_eval_cpu(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, const Tensor& running_mean,
                      const Tensor& running_var, double eps) {
  const Dims d = dims_of(x);
  const bool nx = x.layout() == Layout::NHWC, ny = y.layout() == Layout::NHWC;
  const T *xp = x.data_as<T>(), *g = gamma.data_as<T>(), *b = beta.data_as<T>();
  const T *rm = running_mean.data_as<T>(), *rv = running_var.data_as<T>();
  T* yp = y.data_as<T>();
  for (int64_t c = 0; c < d.c; ++c) {
    const double mean = rm[c], scale = g[c] / std::sqrt(static_cast<double>(rv[c]) + eps), shift = b[c];
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s)
        yp[offset(ny, d, n, c, s)] = static_cast<T>((xp[offset(nx, d, n, c, s)] - mean) * scale + shift);
  }
}

// All gradient outputs are prepared; dx (if any) has dy's layout. x/mean/invstd/gamma may be undefined when
// the requested gradients do not read them.
// All gradient outputs are prepared; dx (if any) has dy's layout. x/mean/invstd/gamma may be undefined when
// the requested gradients do not read them. Sums per channel first (dgamma and dbeta from them), then, with
// --sync-bn in training, the sums over the ranks for dx.
template <typename T>
void backward_cpu(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                  bool training, const BatchNormGrads& gr) {
  const Dims d = dims_of(dy);
  const bool nx = x.defined() && x.layout() == Layout::NHWC, ndy = dy.layout() == Layout::NHWC;
  const bool ndx = gr.dx && gr.dx->layout() == Layout::NHWC;
  const bool need_xhat = gr.dgamma || (gr.dx && training);
  const T* xp = x.defined() ? x.data_as<T>() : nullptr;
  const T* dyp = dy.data_as<T>();
  const T* mp = mean.defined() ? mean.data_as<T>() : nullptr;
  const T* ip = invstd.defined() ? invstd.data_as<T>() : nullptr;
  const T* gp = gamma.defined() ? gamma.data_as<T>() : nullptr;
  double m = static_cast<double>(d.m());
  // sums[c]: sum dy; sums[C + c]: sum dy (x - mu)
  std::vector<double> sums(static_cast<size_t>(2 * d.c), 0.0);
  for (int64_t c = 0; c < d.c; ++c) {
    const double mu = need_xhat ? mp[c] : 0.0, inv = (need_xhat || gr.dx) ? ip[c] : 0.0;
    double sum_dy = 0, sum_dy_xmu = 0;
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s) {
        const double g = dyp[offset(ndy, d, n, c, s)];
        sum_dy += g;
        if (need_xhat) sum_dy_xmu += g * (xp[offset(nx, d, n, c, s)] - mu);
      }
    write_channel_grads<T>(gr, c, sum_dy_xmu * inv, sum_dy);
    sums[c] = sum_dy, sums[d.c + c] = sum_dy_xmu;
  }
  if (!gr.dx) return;
  if (training) sync_sums(gr.sync, sums, m);
  T* dxp = gr.dx->data_as<T>();
  for (int64_t c = 0; c < d.c; ++c) {
    const double mu = training ? mp[c] : 0.0, inv = ip[c];
    const double sum_dy = sums[c], dgamma = sums[d.c + c] * inv;
    const double k = gp[c] * inv;
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t s = 0; s < d.hw; ++s) {
        const double g = dyp[offset(ndy, d, n, c, s)];
        double r;
        if (training) {
          const double xhat = (xp[offset(nx, d, n, c, s)] - mu) * inv;
          r = k * (g - sum_dy / m - xhat * dgamma / m);
        } else {
          r = k * g;
        }
        T& o = dxp[offset(ndx, d, n, c, s)];
        o = static_cast<T>(gr.dx_accumulate ? o + r : r);
      }
  }
}

// ---------------------------------------------------------------- CPU fast path (float32)
// The same formulas as the reference above, on the process's thread pool (core/parallel.h), in passes that
// read memory in order: NHWC as rows of C channels, NCHW plane by plane. Per-channel sums are taken over fixed
// blocks (layers/channel_sums.h: kRowBlock rows, or one plane) and the blocks' partial sums added in block order in
// double, so results do not depend on the thread count. The reference stays the float64 path; tests compare the two.

using channel_sums::ChannelSums;
using channel_sums::nchw_sums;
using channel_sums::nhwc_sums;

// Per-channel coefficients of affine_pass.
struct Affine {
  std::vector<float> M, A, B, G;  // G empty: no dy term
  explicit Affine(int64_t c, bool with_dy)
      : M(static_cast<size_t>(c)), A(static_cast<size_t>(c)), B(static_cast<size_t>(c)),
        G(with_dy ? static_cast<size_t>(c) : 0) {}
};
// out = (x - M[c]) * A[c] + B[c] (+ dy * G[c] when dy) (+ out when accumulate), x and out in one layout. x is
// centred before scaling (as the reference does), so a channel whose mean is large against its spread keeps its
// precision.
void affine_pass(const Dims& d, bool nhwc, const float* x, const float* dy, const Affine& f, float* out,
                 bool accumulate) {
  const int64_t C = d.c;
  const float *M = f.M.data(), *A = f.A.data(), *B = f.B.data(), *G = f.G.data();
  if (nhwc) {
    parallel_for(d.m(), 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r * C;
        for (int64_t c = 0; c < C; ++c) {
          float v = (x[o + c] - M[c]) * A[c] + B[c];
          if (dy) v += dy[o + c] * G[c];
          out[o + c] = accumulate ? out[o + c] + v : v;
        }
      }
    });
  } else {
    parallel_for(d.n * C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C, o = p * d.hw;
        const float m = M[c], a = A[c], b = B[c], g = dy ? G[c] : 0.f;
        for (int64_t s = 0; s < d.hw; ++s) {
          float v = (x[o + s] - m) * a + b;
          if (dy) v += dy[o + s] * g;
          out[o + s] = accumulate ? out[o + s] + v : v;
        }
      }
    });
  }
}

// Per-channel sum of x and of (x - mu)^2 (mu given), in x's layout.
ChannelSums sums_x(const Dims& d, bool nhwc, const float* x, const std::vector<float>* mu) {
  if (nhwc) {
    return nhwc_sums(d.m(), d.c, [&](int64_t o, double* a, double* b) {
      if (!mu) {
        for (int64_t c = 0; c < d.c; ++c) a[c] += x[o + c];
      } else {
        for (int64_t c = 0; c < d.c; ++c) {
          const double v = static_cast<double>(x[o + c]) - (*mu)[c];
          b[c] += v * v;
        }
      }
    });
  }
  return nchw_sums(d.n, d.c, [&](int64_t p, int64_t c, double* a, double* b) {
    const float* xp = x + p * d.hw;
    double sa = 0, sb = 0;
    if (!mu) {
      for (int64_t s = 0; s < d.hw; ++s) sa += xp[s];
    } else {
      const double m = (*mu)[c];
      for (int64_t s = 0; s < d.hw; ++s) sb += (xp[s] - m) * (xp[s] - m);
    }
    *a = sa, *b = sb;
  });
}

// The float32 moments_cpu: the same two passes on the thread pool; the mean is rounded to float32 before the
// second pass (the value the affine pass and the saved mean use).
BatchMoments moments_fast(const Tensor& x, const BatchNormSync* sync) {
  const Dims d = dims_of(x);
  const bool nhwc = x.layout() == Layout::NHWC;
  const float* xp = x.data_as<float>();
  BatchMoments mo;
  mo.count = static_cast<double>(d.m());
  std::vector<float> mu(static_cast<size_t>(d.c));
  ChannelSums s1 = sums_x(d, nhwc, xp, nullptr);
  sync_sums(sync, s1.a, mo.count);
  for (int64_t c = 0; c < d.c; ++c) mu[c] = static_cast<float>(s1.a[c] / mo.count);
  ChannelSums s2 = sums_x(d, nhwc, xp, &mu);
  double m_sq = static_cast<double>(d.m());
  sync_sums(sync, s2.b, m_sq);
  mo.mean.assign(mu.begin(), mu.end());
  mo.var = std::move(s2.b);
  for (double& v : mo.var) v /= mo.count;
  return mo;
}

void forward_train_fast(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, Tensor& save_mean,
                        Tensor& save_invstd, Tensor& running_mean, Tensor& running_var, double factor, double eps,
                        const BatchNormSync* sync) {
  const Dims d = dims_of(x);
  const bool nhwc = x.layout() == Layout::NHWC;  // y has x's layout
  const BatchMoments mo = moments_fast(x, sync);
  Affine f(d.c, false);
  const float *g = gamma.data_as<float>(), *b = beta.data_as<float>();
  float *sm = save_mean.data_as<float>(), *si = save_invstd.data_as<float>();
  for (int64_t c = 0; c < d.c; ++c) {
    const double invstd = 1.0 / std::sqrt(mo.var[c] + eps);
    f.M[c] = static_cast<float>(mo.mean[c]);
    f.A[c] = static_cast<float>(invstd * g[c]);
    f.B[c] = b[c];
    sm[c] = f.M[c];
    si[c] = static_cast<float>(invstd);
  }
  update_running_cpu<float>(running_mean, running_var, mo, factor);
  affine_pass(d, nhwc, x.data_as<float>(), nullptr, f, y.data_as<float>(), false);
}

void forward_eval_fast(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, const Tensor& running_mean,
                       const Tensor& running_var, double eps) {
  const Dims d = dims_of(x);
  const float *g = gamma.data_as<float>(), *b = beta.data_as<float>();
  const float *rm = running_mean.data_as<float>(), *rv = running_var.data_as<float>();
  Affine f(d.c, false);
  for (int64_t c = 0; c < d.c; ++c) {
    f.M[c] = rm[c];
    f.A[c] = static_cast<float>(g[c] / std::sqrt(static_cast<double>(rv[c]) + eps));
    f.B[c] = b[c];
  }
  affine_pass(d, x.layout() == Layout::NHWC, x.data_as<float>(), nullptr, f, y.data_as<float>(), false);
}

// x (when defined) and dy share one layout, and dx (when requested) has it too (batchnorm_backward converts).
void backward_fast(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                   bool training, const BatchNormGrads& gr) {
  const Dims d = dims_of(dy);
  const bool nhwc = dy.layout() == Layout::NHWC;
  const bool need_xhat = gr.dgamma || (gr.dx && training);
  const float* xp = need_xhat ? x.data_as<float>() : nullptr;
  const float* dyp = dy.data_as<float>();
  std::vector<float> mu(static_cast<size_t>(d.c), 0.f);
  if (need_xhat)
    for (int64_t c = 0; c < d.c; ++c) mu[c] = mean.data_as<float>()[c];
  ChannelSums s;  // a: sum dy, b: sum dy * (x - mu)
  if (nhwc) {
    s = nhwc_sums(d.m(), d.c, [&](int64_t o, double* a, double* b) {
      for (int64_t c = 0; c < d.c; ++c) a[c] += dyp[o + c];
      if (need_xhat)
        for (int64_t c = 0; c < d.c; ++c) b[c] += static_cast<double>(dyp[o + c]) * (xp[o + c] - mu[c]);
    });
  } else {
    s = nchw_sums(d.n, d.c, [&](int64_t p, int64_t c, double* a, double* b) {
      const float* g = dyp + p * d.hw;
      double sa = 0, sb = 0;
      for (int64_t i = 0; i < d.hw; ++i) sa += g[i];
      if (need_xhat) {
        const float* xx = xp + p * d.hw;
        for (int64_t i = 0; i < d.hw; ++i) sb += static_cast<double>(g[i]) * (xx[i] - mu[c]);
      }
      *a = sa, *b = sb;
    });
  }
  double m = static_cast<double>(d.m());
  for (int64_t c = 0; c < d.c; ++c)
    write_channel_grads<float>(gr, c, s.b[c] * (need_xhat ? invstd.data_as<float>()[c] : 0.0), s.a[c]);
  if (!gr.dx) return;
  if (training) sync_sums(gr.sync, {&s.a, &s.b}, m);  // --sync-bn: dx from the sums over all ranks
  Affine f(d.c, true);
  for (int64_t c = 0; c < d.c; ++c) {
    const double inv = invstd.data_as<float>()[c];
    const double dgamma = s.b[c] * inv, sum_dy = s.a[c];
    // dx = k (dy - sum_dy / m - xhat dgamma / m), xhat = (x - mu) inv  ->  dx = G dy + A (x - mu) + B
    const double k = gamma.data_as<float>()[c] * inv;
    f.G[c] = static_cast<float>(k);
    f.M[c] = mu[c];
    f.A[c] = static_cast<float>(training ? -k * inv * dgamma / m : 0.0);
    f.B[c] = static_cast<float>(training ? -k * sum_dy / m : 0.0);
  }
  affine_pass(d, nhwc, training ? xp : dyp, dyp, f, gr.dx->data_as<float>(), gr.dx_accumulate);
}

#if TL_WITH_CUDA
// ---------------------------------------------------------------- cuDNN helpers

using cudnn_util::Scalar;
using cudnn_util::TensorDesc;

// cuDNN's BN kernels are asked below PyTorch's batch-size limits (above them PyTorch also falls back) and within
// cuDNN's 2^31-element limit; beyond either, and for bfloat16, the own kernels run. Should cuDNN answer a status
// of the NOT_SUPPORTED category, the own kernels run as well.
bool use_cudnn(const Tensor& x, bool training) {
  if (x.dtype() == DType::BF16) return false;  // PyTorch keeps bfloat16 off cuDNN BN as well
  if (x.size(0) > (training ? 880801 : 65535)) return false;
  return x.numel() <= cudnn_rules::kMaxElements;
}
// NHWC float32/float16 training runs CUDNN_BATCHNORM_SPATIAL_PERSISTENT through the *Ex functions (PyTorch's
// choice for channels-last training); everything else the legacy CUDNN_BATCHNORM_SPATIAL functions.
bool use_persistent(const Tensor& x) {
  return x.layout() == Layout::NHWC && (x.dtype() == DType::F32 || x.dtype() == DType::F16);
}

// The (1, C, 1, 1) descriptor of gamma/beta/mean/var/saved statistics and their gradients, derived from x's for
// `mode`: float for float/half/bfloat16 data, double for double data.
void derive_param_desc(const TensorDesc& pd, const TensorDesc& xd, cudnnBatchNormMode_t mode) {
  CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd.get(), xd.get(), mode));
}

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// ---------------------------------------------------------------- CUDA forward

void forward_train_own(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, Tensor& save_mean,
                       Tensor& save_invstd, BatchNormBuffers& buf, double factor, double eps) {
  const kernels::BnDims d = kdims(x);
  void* scratch = cuda::workspace(kernels::bn_reduce_scratch_bytes(x.dtype(), d));
  kernels::bn_batch_stats(x.data(), x.dtype(), d, save_mean.data(), save_invstd.data(), buf.running_mean.data(),
                          buf.running_var.data(), factor, eps, scratch, cuda::stream());
  kernels::bn_normalize(x.data(), y.data(), x.dtype(), d, save_mean.data(), save_invstd.data(), false, eps,
                        gamma.data(), beta.data(), cuda::stream());
}

// exponentialAverageFactor is PyTorch's momentum: running = running * (1 - factor) + batch * factor
// (cudnn_ops.h: "runningMean = newMean*factor + runningMean*(1-factor)"). For the variance, the header and
// the API reference only say "moving average of variance[x]" without naming the estimator; what cuDNN
// averages is the UNBIASED batch variance (m/(m-1) correction), which is why PyTorch's cudnn_batch_norm
// passes running_var straight through with factor = momentum and matches its native kernels (which apply
// the unbiased correction explicitly). resultSaveInvVariance is 1/sqrt(biased var + eps), i.e. save_invstd.
// The CUDA-vs-CPU test checks running_var after a step.

// Legacy spatial training forward; false when cuDNN does not support it.
bool forward_train_spatial(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, Tensor& save_mean,
                           Tensor& save_invstd, BatchNormBuffers& buf, double factor, double eps) {
  const TensorDesc xd(x, "batch_norm2d"), yd(y, "batch_norm2d"), pd;
  derive_param_desc(pd, xd, CUDNN_BATCHNORM_SPATIAL);
  const Scalar one(1.0), zero(0.0);
  return TL_CUDNN_RAN(cudnnBatchNormalizationForwardTraining(
      cuda::cudnn(), CUDNN_BATCHNORM_SPATIAL, one.for_dtype(x.dtype()), zero.for_dtype(x.dtype()), xd.get(), x.data(),
      yd.get(), y.data(), pd.get(), gamma.data(), beta.data(), factor, buf.running_mean.data(),
      buf.running_var.data(), eps, save_mean.data(), save_invstd.data()));
}

// Persistent (NHWC) training forward through cudnnBatchNormalizationForwardTrainingEx (ops: BN only, no z, no
// activation, as PyTorch calls it). Its reserve space goes to `reserve` for the backward. False when cuDNN does
// not support it.
bool forward_train_persistent(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y,
                              Tensor& save_mean, Tensor& save_invstd, BatchNormBuffers& buf, double factor,
                              double eps, Tensor& reserve) {
  const cudnnBatchNormMode_t mode = CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
  const cudnnBatchNormOps_t ops = CUDNN_BATCHNORM_OPS_BN;
  cudnnHandle_t h = cuda::cudnn();
  const TensorDesc xd(x, "batch_norm2d"), pd;
  derive_param_desc(pd, xd, mode);
  size_t ws_bytes = 0, reserve_bytes = 0;
  // (handle, mode, ops, xDesc, zDesc, yDesc, bnScaleBiasMeanVarDesc, activationDesc, &bytes); y shares x's desc.
  if (!TL_CUDNN_RAN(cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(h, mode, ops, xd.get(), xd.get(),
                                                                             xd.get(), pd.get(), nullptr, &ws_bytes)))
    return false;
  // (handle, mode, ops, activationDesc, xDesc, &bytes)
  if (!TL_CUDNN_RAN(cudnnGetBatchNormalizationTrainingExReserveSpaceSize(h, mode, ops, nullptr, xd.get(),
                                                                         &reserve_bytes)))
    return false;
  // The layer's reserve from the last step, unless it is too small or a forward not yet back-propagated still
  // holds it (a layer called twice in one forward): steady-state steps allocate nothing.
  Tensor& res = buf.cudnn_reserve;
  const int64_t words = std::max<int64_t>(static_cast<int64_t>((reserve_bytes + 3) / 4), 1);
  if (!res.defined() || res.numel() < words || !res.is_unique())
    res = Tensor::empty({words}, DType::F32, Device::CUDA);
  void* ws = ws_bytes ? cuda::workspace(ws_bytes) : nullptr;
  const Scalar one(1.0), zero(0.0);
  const bool ran = TL_CUDNN_RAN(cudnnBatchNormalizationForwardTrainingEx(
      h, mode, ops, one.for_dtype(x.dtype()), zero.for_dtype(x.dtype()), xd.get(), x.data(), nullptr, nullptr,
      xd.get(), y.data(), pd.get(), gamma.data(), beta.data(), factor, buf.running_mean.data(),
      buf.running_var.data(), eps, save_mean.data(), save_invstd.data(), nullptr, ws, ws_bytes,
      reserve_bytes ? res.data() : nullptr, reserve_bytes));
  if (ran) reserve = res;
  return ran;
}

void forward_train_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y, Tensor& save_mean,
                        Tensor& save_invstd, BatchNormBuffers& buf, double factor, double eps, Tensor& reserve) {
  if (use_cudnn(x, true)) {
    if (use_persistent(x) &&
        forward_train_persistent(x, gamma, beta, y, save_mean, save_invstd, buf, factor, eps, reserve))
      return;
    if (forward_train_spatial(x, gamma, beta, y, save_mean, save_invstd, buf, factor, eps)) return;
  }
  forward_train_own(x, gamma, beta, y, save_mean, save_invstd, buf, factor, eps);
}

void forward_eval_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y,
                       const BatchNormBuffers& buf, double eps) {
  if (use_cudnn(x, false)) {
    const TensorDesc xd(x, "batch_norm2d"), yd(y, "batch_norm2d"), pd;
    derive_param_desc(pd, xd, CUDNN_BATCHNORM_SPATIAL);
    const Scalar one(1.0), zero(0.0);
    if (TL_CUDNN_RAN(cudnnBatchNormalizationForwardInference(
            cuda::cudnn(), CUDNN_BATCHNORM_SPATIAL, one.for_dtype(x.dtype()), zero.for_dtype(x.dtype()), xd.get(),
            x.data(), yd.get(), y.data(), pd.get(), gamma.data(), beta.data(), buf.running_mean.data(),
            buf.running_var.data(), eps)))
      return;
  }
  kernels::bn_normalize(x.data(), y.data(), x.dtype(), kdims(x), buf.running_mean.data(), buf.running_var.data(),
                        true, eps, gamma.data(), beta.data(), cuda::stream());
}

// ---------------------------------------------------------------- CUDA backward

// Own kernels: every case (eval mode, no dx, bfloat16, beyond cuDNN's limits, or refused by cuDNN). Gradient
// outputs are prepared; dx (if any) has x's layout; dy has x's layout when x is defined.
void backward_own(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                  bool training, const BatchNormGrads& gr) {
  const DType dt = dy.dtype();
  const kernels::BnDims d = kdims(dy);
  const bool need_x = gr.dgamma || (gr.dx && training);
  const bool need_sums = gr.dx && training;
  const bool reduce = gr.dgamma || gr.dbeta || need_sums;
  const size_t sums_bytes = need_sums ? round_up(2 * static_cast<size_t>(d.c) * dtype_size(batchnorm_param_dtype(dt)))
                                      : 0;
  const size_t reduce_bytes = reduce ? kernels::bn_reduce_scratch_bytes(dt, d) : 0;
  char* ws = (sums_bytes + reduce_bytes) ? static_cast<char*>(cuda::workspace(sums_bytes + reduce_bytes)) : nullptr;
  void* sums = need_sums ? ws : nullptr;
  if (reduce)
    kernels::bn_backward_reduce(need_x ? x.data() : nullptr, dy.data(), dt, d, need_x ? mean.data() : nullptr,
                                need_x ? invstd.data() : nullptr, gr.dgamma ? gr.dgamma->data() : nullptr,
                                gr.dgamma_accumulate, gr.dbeta ? gr.dbeta->data() : nullptr, gr.dbeta_accumulate,
                                sums, ws + sums_bytes, cuda::stream());
  if (gr.dx)
    kernels::bn_backward_dx(training ? x.data() : nullptr, dy.data(), gr.dx->data(), dt, d,
                            training ? mean.data() : nullptr, invstd.data(), gamma.data(), sums, training,
                            gr.dx_accumulate, cuda::stream());
}

// The blending factors of a cuDNN backward call and where its outputs go. cuDNN always writes dx, dgamma and
// dbeta: dgamma/dbeta that are not requested go to workspace scratch. One blend pair covers dgamma and dbeta:
// with different accumulate flags the assigned one is zeroed first and both accumulate.
struct CudnnGradOut {
  void* dgamma;
  void* dbeta;
  bool param_acc, data_acc;
};
CudnnGradOut cudnn_grad_out(const BatchNormGrads& gr, char* scratch, size_t dbeta_offset) {
  CudnnGradOut o{gr.dgamma ? gr.dgamma->data() : scratch, gr.dbeta ? gr.dbeta->data() : scratch + dbeta_offset,
                 false, gr.dx_accumulate};
  if (gr.dgamma && gr.dbeta && gr.dgamma_accumulate != gr.dbeta_accumulate) {
    (gr.dgamma_accumulate ? gr.dbeta : gr.dgamma)->zero_();
    o.param_acc = true;
  } else {
    o.param_acc = gr.dgamma ? gr.dgamma_accumulate : (gr.dbeta ? gr.dbeta_accumulate : false);
  }
  return o;
}

// cuDNN training backward with dx requested (x, dy, dx in one layout and dtype, hence one descriptor): the
// persistent *Ex function (`persistent`: the forward ran it and gave its reserve space), or the legacy spatial
// one. False when cuDNN does not support it (nothing written).
bool backward_cudnn(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                    double eps, const BatchNormGrads& gr, bool persistent, const Tensor& reserve) {
  const DType dt = dy.dtype();
  const cudnnBatchNormMode_t mode = persistent ? CUDNN_BATCHNORM_SPATIAL_PERSISTENT : CUDNN_BATCHNORM_SPATIAL;
  const cudnnBatchNormOps_t ops = CUDNN_BATCHNORM_OPS_BN;
  cudnnHandle_t h = cuda::cudnn();
  const TensorDesc xd(x, "batch_norm2d_backward"), pd;
  derive_param_desc(pd, xd, mode);
  size_t ex_bytes = 0;
  // (handle, mode, ops, xDesc, yDesc, dyDesc, dzDesc, dxDesc, dBnScaleBiasDesc, activationDesc, &bytes)
  if (persistent && !TL_CUDNN_RAN(cudnnGetBatchNormalizationBackwardExWorkspaceSize(
                        h, mode, ops, xd.get(), xd.get(), xd.get(), nullptr, xd.get(), pd.get(), nullptr, &ex_bytes)))
    return false;
  const size_t param_bytes = round_up(static_cast<size_t>(dy.size(1)) * dtype_size(batchnorm_param_dtype(dt)));
  const size_t scratch_bytes = (gr.dgamma ? 0 : param_bytes) + (gr.dbeta ? 0 : param_bytes);
  char* ws = (scratch_bytes + ex_bytes) ? static_cast<char*>(cuda::workspace(scratch_bytes + ex_bytes)) : nullptr;
  const CudnnGradOut o = cudnn_grad_out(gr, ws, gr.dgamma ? 0 : param_bytes);
  const Scalar one(1.0), zero(0.0);
  const void* beta_data = (o.data_acc ? one : zero).for_dtype(dt);
  const void* beta_param = (o.param_acc ? one : zero).for_dtype(dt);
  if (persistent) {
    return TL_CUDNN_RAN(cudnnBatchNormalizationBackwardEx(
        h, mode, ops, one.for_dtype(dt), beta_data, one.for_dtype(dt), beta_param, xd.get(), x.data(), nullptr,
        nullptr, xd.get(), dy.data(), nullptr, nullptr, xd.get(), gr.dx->data(), pd.get(), gamma.data(), nullptr,
        o.dgamma, o.dbeta, eps, mean.data(), invstd.data(), nullptr, ex_bytes ? ws + scratch_bytes : nullptr,
        ex_bytes, reserve.numel() ? reserve.data() : nullptr, reserve.nbytes()));
  }
  return TL_CUDNN_RAN(cudnnBatchNormalizationBackward(
      h, mode, one.for_dtype(dt), beta_data, one.for_dtype(dt), beta_param, xd.get(), x.data(), xd.get(), dy.data(),
      xd.get(), gr.dx->data(), pd.get(), gamma.data(), o.dgamma, o.dbeta, eps, mean.data(), invstd.data()));
}

// Gradient outputs are prepared; dx (if any) has x's layout; dy has x's layout when x is defined. cuDNN runs only
// for training-mode backward with dx requested: without dx, the own reduction reads dy (and x) once and needs no
// scratch of x's size. `reserve`: the persistent forward's reserve space (undefined when it did not run).
void backward_cuda(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                   bool training, double eps, const BatchNormGrads& gr, const Tensor& reserve) {
  if (training && gr.dx && use_cudnn(dy, true)) {
    if (use_persistent(x) && reserve.defined() && backward_cudnn(x, dy, gamma, mean, invstd, eps, gr, true, reserve))
      return;
    if (backward_cudnn(x, dy, gamma, mean, invstd, eps, gr, false, Tensor())) return;
  }
  backward_own(x, dy, gamma, mean, invstd, training, gr);
}

#endif  // TL_WITH_CUDA

// num_batches_tracked += 1; returns this batch's running-statistics factor (momentum, or 1 / num_batches_tracked).
double count_batch(BatchNormBuffers& buffers, const BatchNormOptions& opt) {
  buffers.num_batches_tracked += 1;
  return opt.cumulative_average ? 1.0 / static_cast<double>(buffers.num_batches_tracked) : opt.momentum;
}
}  // namespace

// ---------------------------------------------------------------- public API

DType batchnorm_param_dtype(DType x) {
  TL_CHECK(x != DType::I32 && x != DType::I64, DTypeError, "batch_norm2d: x must be floating point, got ",
           dtype_name(x));
  return x == DType::F64 ? DType::F64 : DType::F32;
}

BatchNormBuffers batchnorm_buffers(int64_t channels, DType param_dtype, Device device) {
  BatchNormBuffers b;
  b.running_mean = Tensor::zeros({channels}, param_dtype, device);
  b.running_var = Tensor::full({channels}, 1.0, param_dtype, device);
  return b;
}

Tensor batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormBuffers& buffers,
                               const BatchNormOptions& opt, Tensor& save_mean, Tensor& save_invstd, Tensor* reserve) {
  const char* op = "batchnorm_forward_train";
  check_input(x, op);
  check_channel_tensor(gamma, x, op, "gamma");
  check_channel_tensor(beta, x, op, "beta");
  check_channel_tensor(buffers.running_mean, x, op, "running_mean");
  check_channel_tensor(buffers.running_var, x, op, "running_var");
  TL_CHECK(dims_of(x).m() > 1, ShapeError, op, ": expected more than 1 value per channel when training, got x ",
           x.str());
  TL_CHECK(opt.eps > 0, ValueError, op, ": eps must be > 0, got ", opt.eps);
  TL_CHECK(opt.cumulative_average || (opt.momentum >= 0 && opt.momentum <= 1), ValueError, op,
           ": momentum must be in [0, 1], got ", opt.momentum);
  TL_CHECK(!(opt.sync && opt.sync->active() && x.is_cuda()), ValueError, op, ": --sync-bn runs on the CPU only "
           "for now (", opt.sync ? opt.sync->what : "", "); train on the CPU or without --sync-bn");

#if TL_WITH_CUDA
  // The cumulative-average factor changes every batch, and cuDNN takes it by value: a captured CUDA graph would
  // replay the captured batch's factor. (No torchvision model uses momentum=None.)
  TL_CHECK(!opt.cumulative_average || !x.is_cuda() || !cuda::stream_is_capturing(), ValueError, op,
           ": cumulative-average batch norm (momentum=None) cannot run in a captured CUDA graph (its factor "
           "1/num_batches_tracked changes every batch); train without --cuda-graphs or give the layer a momentum");
#endif
  const double factor = count_batch(buffers, opt);
  const DType pdt = batchnorm_param_dtype(x.dtype());
  const int64_t C = x.size(1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  save_mean = Tensor::empty({C}, pdt, x.device());
  save_invstd = Tensor::empty({C}, pdt, x.device());
  Tensor cudnn_reserve;
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    forward_train_cuda(x, gamma, beta, y, save_mean, save_invstd, buffers, factor, opt.eps, cudnn_reserve);
#endif
  } else if (x.dtype() == DType::F32) {
    forward_train_fast(x, gamma, beta, y, save_mean, save_invstd, buffers.running_mean, buffers.running_var, factor,
                       opt.eps, opt.sync);
  } else {
    forward_train_cpu<double>(x, gamma, beta, y, save_mean, save_invstd, buffers.running_mean, buffers.running_var,
                              factor, opt.eps, opt.sync);
  }
  if (reserve) *reserve = cudnn_reserve;
  return y;
}

BatchMoments batchnorm_batch_moments(const Tensor& x) {
  const char* op = "batchnorm_batch_moments";
  check_input(x, op);
  TL_CHECK(!x.is_cuda(), ValueError, op, ": CPU tensors only, got ", x.str());
  TL_CHECK(dims_of(x).m() > 1, ShapeError, op, ": expected more than 1 value per channel when training, got x ",
           x.str());
  return x.dtype() == DType::F32 ? moments_fast(x, nullptr) : moments_cpu<double>(x, nullptr);
}

void batchnorm_update_running(BatchNormBuffers& buffers, const BatchMoments& moments, const BatchNormOptions& opt) {
  const char* op = "batchnorm_update_running";
  const Tensor& rm = buffers.running_mean;
  TL_CHECK(rm.defined() && !rm.is_cuda() && rm.shape() == Shape{static_cast<int64_t>(moments.mean.size())} &&
               moments.var.size() == moments.mean.size() && buffers.running_var.shape() == rm.shape() &&
               buffers.running_var.dtype() == rm.dtype(),
           ShapeError, op, ": running statistics ", rm.str(), " do not match ", moments.mean.size(),
           " channels on the CPU");
  TL_CHECK(opt.cumulative_average || (opt.momentum >= 0 && opt.momentum <= 1), ValueError, op,
           ": momentum must be in [0, 1], got ", opt.momentum);
  const double factor = count_batch(buffers, opt);
  if (rm.dtype() == DType::F32)
    update_running_cpu<float>(buffers.running_mean, buffers.running_var, moments, factor);
  else
    update_running_cpu<double>(buffers.running_mean, buffers.running_var, moments, factor);
}

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const BatchNormBuffers& buffers, double eps) {
  const char* op = "batchnorm_forward_eval";
  check_input(x, op);
  check_channel_tensor(gamma, x, op, "gamma");
  check_channel_tensor(beta, x, op, "beta");
  check_channel_tensor(buffers.running_mean, x, op, "running_mean");
  check_channel_tensor(buffers.running_var, x, op, "running_var");
  TL_CHECK(eps > 0, ValueError, op, ": eps must be > 0, got ", eps);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), x.layout());
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    forward_eval_cuda(x, gamma, beta, y, buffers, eps);
#endif
  } else if (x.dtype() == DType::F32) {
    forward_eval_fast(x, gamma, beta, y, buffers.running_mean, buffers.running_var, eps);
  } else {
    forward_eval_cpu<double>(x, gamma, beta, y, buffers.running_mean, buffers.running_var, eps);
  }
  return y;
}

Tensor batchnorm_invstd(const Tensor& running_var, double eps) {
  check_defined(running_var, "batchnorm_invstd");
  check_rank(running_var, 1, "batchnorm_invstd", "running_var");
  TL_CHECK(running_var.dtype() == DType::F32 || running_var.dtype() == DType::F64, DTypeError,
           "batchnorm_invstd: running_var must be float32 or float64, got ", running_var.str());
  Tensor out = Tensor::empty(running_var.shape(), running_var.dtype(), running_var.device());
  const int64_t c = running_var.numel();
  if (running_var.is_cuda()) {
#if TL_WITH_CUDA
    kernels::bn_invstd(running_var.data(), out.data(), running_var.dtype(), c, eps, cuda::stream());
#endif
  } else if (running_var.dtype() == DType::F32) {
    const float* v = running_var.data_as<float>();
    for (int64_t i = 0; i < c; ++i)
      out.data_as<float>()[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(v[i]) + eps));
  } else {
    for (int64_t i = 0; i < c; ++i) out.data_as<double>()[i] = 1.0 / std::sqrt(running_var.data_as<double>()[i] + eps);
  }
  return out;
}

void batchnorm_backward(const Tensor& x, const Tensor& dy_in, const Tensor& gamma, const Tensor& mean,
                        const Tensor& invstd, bool training, double eps, const BatchNormGrads& grads,
                        const Tensor& reserve) {
  const char* op = "batchnorm_backward";
  check_input(dy_in, op);
  const bool need_x = grads.dgamma || (grads.dx && training);
  const bool need_stats = grads.dgamma || grads.dx;
  Tensor dy = dy_in;
  if (need_x) {
    check_input(x, op);
    check_same_shape(x, dy_in, op);
    check_same_dtype_device(x, dy_in, op);
    if (dy.layout() != x.layout()) dy = dy_in.to_layout(x.layout());
    check_channel_tensor(mean, dy, op, "mean");
  }
  if (need_stats) check_channel_tensor(invstd, dy, op, "invstd");
  TL_CHECK(!(training && grads.dx && grads.sync && grads.sync->active() && dy.is_cuda()), ValueError, op,
           ": --sync-bn runs on the CPU only for now (", grads.sync->what, ")");
  if (grads.dx) check_channel_tensor(gamma, dy, op, "gamma");
  const Tensor& like = need_x ? x : dy;  // dx takes x's layout (dy's when x is not needed)
  const int64_t C = dy.size(1);
  const DType pdt = batchnorm_param_dtype(dy.dtype());

  // dx to accumulate into a tensor of another layout: compute a fresh dx, then add it converted.
  if (grads.dx && grads.dx_accumulate && grads.dx->layout() != like.layout()) {
    check_same_shape(*grads.dx, like, op);
    Tensor fresh;
    BatchNormGrads g = grads;
    g.dx = &fresh;
    g.dx_accumulate = false;
    batchnorm_backward(x, dy, gamma, mean, invstd, training, eps, g, reserve);
    grads.dx->add_(fresh.to_layout(grads.dx->layout()));
    return;
  }
  if (grads.dx) prepare_grad(*grads.dx, like, grads.dx_accumulate, op);
  const GradSpec channel_spec{{C}, pdt, dy.device()};
  if (grads.dgamma) prepare_grad(*grads.dgamma, channel_spec, grads.dgamma_accumulate, op);
  if (grads.dbeta) prepare_grad(*grads.dbeta, channel_spec, grads.dbeta_accumulate, op);
  if (!grads.dx && !grads.dgamma && !grads.dbeta) return;

  if (dy.is_cuda()) {
#if TL_WITH_CUDA
    backward_cuda(x, dy, gamma, mean, invstd, training, eps, grads, reserve);
#endif
  } else if (dy.dtype() == DType::F32) {
    backward_fast(x, dy, gamma, mean, invstd, training, grads);
  } else {
    backward_cpu<double>(x, dy, gamma, mean, invstd, training, grads);
  }
}

Variable batch_norm2d(const Variable& x, const Variable& gamma, const Variable& beta, BatchNormBuffers& buffers,
                      const BatchNormOptions& opt) {
  TL_CHECK(x.defined() && gamma.defined() && beta.defined(), ValueError,
           "batch_norm2d: x, gamma and beta must be defined");
  record_shapes(gamma.value(), x.shape(), x.shape());
  const bool gx = needs_grad(x), gg = needs_grad(gamma);  // dbeta needs nothing saved
  const bool record = should_record({&x, &gamma, &beta});
  const double eps = opt.eps;

  if (opt.training) {
    Tensor save_mean, save_invstd, reserve;
    // Run again by checkpoint() in the backward pass: the same batch statistics, but the running statistics were
    // updated by the first run, so this one updates copies.
    BatchNormBuffers copies;
    if (recomputing())
      copies = {buffers.running_mean.clone(), buffers.running_var.clone(), buffers.num_batches_tracked,
                std::move(buffers.cudnn_reserve)};
    Tensor y = batchnorm_forward_train(x.value(), gamma.value(), beta.value(), recomputing() ? copies : buffers, opt,
                                       save_mean, save_invstd, &reserve);
    if (recomputing()) buffers.cudnn_reserve = std::move(copies.cudnn_reserve);  // the layer's, for the next step
    if (!record) return Variable(y);  // running statistics were updated all the same
    // dbeta = sum(dy) needs nothing; dx and dgamma need x and the batch statistics; dx needs gamma (cuDNN's
    // backward runs only when dx is needed).
    const bool keep_stats = gx || gg;
    const Tensor xs = keep_stats ? x.value() : Tensor();
    const Tensor ms = keep_stats ? save_mean : Tensor(), is = keep_stats ? save_invstd : Tensor();
    const Tensor gs = gx ? gamma.value() : Tensor();
    const Tensor rs = gx ? reserve : Tensor();  // cuDNN's persistent backward reads it (dx only)
    return record_op("batch_norm2d", y, {&x, &gamma, &beta}, bytes_of({xs, ms, is, gs, rs}),
                     [xs, ms, is, gs, rs, eps, sync = opt.sync](const Tensor& dy, std::vector<GradSlot>& s) {
                       BatchNormGrads g;
                       g.sync = sync;  // points into the module, which outlives its graph
                       if (s[0].needed) g.dx = &s[0].grad, g.dx_accumulate = s[0].accumulate;
                       if (s[1].needed) g.dgamma = &s[1].grad, g.dgamma_accumulate = s[1].accumulate;
                       if (s[2].needed) g.dbeta = &s[2].grad, g.dbeta_accumulate = s[2].accumulate;
                       batchnorm_backward(xs, dy, gs, ms, is, true, eps, g, rs);
                     });
  }

  Tensor y = batchnorm_forward_eval(x.value(), gamma.value(), beta.value(), buffers, eps);
  if (!record) return Variable(y);
  // Eval: dx = dy * gamma * invstd needs gamma and invstd; dgamma needs x, mean and invstd; dbeta nothing.
  // The running statistics are copied (C values): a later training step updates the buffers in place.
  const Tensor is = (gx || gg) ? batchnorm_invstd(buffers.running_var, eps) : Tensor();
  const Tensor gs = gx ? gamma.value() : Tensor();
  const Tensor xs = gg ? x.value() : Tensor();
  const Tensor ms = gg ? buffers.running_mean.clone() : Tensor();
  return record_op("batch_norm2d", y, {&x, &gamma, &beta}, bytes_of({xs, ms, is, gs}),
                   [xs, ms, is, gs, eps](const Tensor& dy, std::vector<GradSlot>& s) {
                     BatchNormGrads g;
                     if (s[0].needed) g.dx = &s[0].grad, g.dx_accumulate = s[0].accumulate;
                     if (s[1].needed) g.dgamma = &s[1].grad, g.dgamma_accumulate = s[1].accumulate;
                     if (s[2].needed) g.dbeta = &s[2].grad, g.dbeta_accumulate = s[2].accumulate;
                     batchnorm_backward(xs, dy, gs, ms, is, false, eps, g);
                   });
}

}  // namespace tl
