// Fused concat + batch norm + ReLU: the chunk statistics cache, the CPU passes and autograd (see
// concat_bn_relu.h). The arithmetic is batch norm's (layers/batchnorm.cpp), channel for channel: float32 as its
// fast path (float32 coefficients, double sums from layers/channel_sums.h), float64 as its reference.
#include "layers/concat_bn_relu.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/parallel.h"
#include "layers/activation.h"
#include "layers/channel_sums.h"
#include "layers/concat.h"
#include "layers/layer_util.h"
#include "layers/mac_counter.h"

namespace tl {

const BatchMoments& ChunkStatsCache::at(size_t k, const Tensor& chunk) {
  if (k >= entries_.size()) entries_.resize(k + 1);
  Entry& e = entries_[k];
  if (e.moments.mean.empty()) {
    e.moments = batchnorm_batch_moments(chunk);
    e.storage = chunk.storage();
    e.data = chunk.data();
    e.shape = chunk.shape();
    ++computed_;
    return e.moments;
  }
  TL_CHECK(e.storage.lock() == chunk.storage() && e.data == chunk.data() && e.shape == chunk.shape(), ValueError,
           "concat_bn_relu: chunk ", k, " (", chunk.str(), ") is not the tensor whose statistics the block's cache "
           "holds (one ChunkStatsCache per block and forward pass)");
  return e.moments;
}

namespace {

constexpr const char* kOp = "concat_bn_relu";

// Where the chunks lie in their concatenation (N, c, H, W).
struct Geometry {
  int64_t n = 0, c = 0, hw = 0;
  bool nhwc = false;
  std::vector<int64_t> width, start;  // per chunk: channels, first channel in the concatenation
  std::vector<size_t> chunk_of;       // per channel of the concatenation: its chunk
  int64_t rows() const { return n * hw; }
};

Geometry geometry_of(const std::vector<Tensor>& xs) {
  Geometry g;
  g.n = xs[0].size(0);
  g.hw = xs[0].size(2) * xs[0].size(3);
  g.nhwc = xs[0].layout() == Layout::NHWC;
  for (size_t k = 0; k < xs.size(); ++k) {
    g.start.push_back(g.c);
    g.width.push_back(xs[k].size(1));
    g.chunk_of.insert(g.chunk_of.end(), static_cast<size_t>(xs[k].size(1)), k);
    g.c += xs[k].size(1);
  }
  return g;
}

// fn(xi, yi, c) for every element of chunk k: its index in the chunk, the index of the same value in the
// concatenation, and its channel there. Parallel over rows (NHWC) or planes (NCHW): each element once.
template <typename Fn>
void for_each_in_chunk(const Geometry& g, size_t k, Fn&& fn) {
  const int64_t ck = g.width[k], off = g.start[k];
  if (ck == 0) return;
  if (g.nhwc) {
    parallel_for(g.rows(), std::max<int64_t>(1, (int64_t{1} << 14) / ck), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t xo = r * ck, yo = r * g.c + off;
        for (int64_t c = 0; c < ck; ++c) fn(xo + c, yo + c, off + c);
      }
    });
    return;
  }
  parallel_for(g.n * ck, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / ck, lc = p % ck, xo = p * g.hw, yo = (n * g.c + off + lc) * g.hw;
      for (int64_t s = 0; s < g.hw; ++s) fn(xo + s, yo + s, off + lc);
    }
  });
}

// What the backward pass needs besides the chunks and y: the batch statistics as batch norm saves them (the mean,
// and invstd rounded to the data type), and the count m of values per channel.
struct Saved {
  std::vector<double> mean, invstd;
  double m = 0;
};

// y = relu((x - M) A + B) per channel, batch norm's forward coefficients in T (M = mean, A = invstd gamma,
// B = beta), written into the concatenation's place of every chunk.
template <typename T>
Tensor forward_cpu(const std::vector<Tensor>& xs, const Geometry& g, const Tensor& gamma, const Tensor& beta,
                   const BatchMoments& mo, double eps, Saved& saved) {
  const T *gp = gamma.data_as<T>(), *bp = beta.data_as<T>();
  std::vector<T> M(static_cast<size_t>(g.c)), A(static_cast<size_t>(g.c)), B(static_cast<size_t>(g.c));
  saved.mean = mo.mean;
  saved.invstd.resize(static_cast<size_t>(g.c));
  saved.m = mo.count;
  for (int64_t c = 0; c < g.c; ++c) {
    const double invstd = 1.0 / std::sqrt(mo.var[c] + eps);
    M[c] = static_cast<T>(mo.mean[c]);
    A[c] = static_cast<T>(invstd * gp[c]);
    B[c] = bp[c];
    saved.invstd[c] = static_cast<T>(invstd);
  }
  Shape shape = xs[0].shape();
  shape[1] = g.c;
  Tensor y = Tensor::empty(shape, xs[0].dtype(), Device::CPU, xs[0].layout());
  T* yp = y.data_as<T>();
  for (size_t k = 0; k < xs.size(); ++k) {
    const T* x = xs[k].data_as<T>();
    for_each_in_chunk(g, k, [&](int64_t xi, int64_t yi, int64_t c) {
      const T v = (x[xi] - M[c]) * A[c] + B[c];
      yp[yi] = v > T(0) ? v : T(0);
    });
  }
  return y;
}

// ReLU's gradient: dy where y > 0, else +0 (relu_backward's value, bit for bit), as a bit mask: GCC vectorizes
// this where it leaves `y > 0 ? dy : 0` followed by a float -> double conversion a branch.
template <typename T>
inline T masked(const T* y, const T* dy, int64_t i) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits b;
  std::memcpy(&b, &dy[i], sizeof b);
  b &= Bits(0) - static_cast<Bits>(y[i] > T(0));
  T r;
  std::memcpy(&r, &b, sizeof r);
  return r;
}

// Per channel: sum dz and sum dz (x - mean) (the second only when `xmu`), batch norm's backward sums in the order
// its CPU paths add them: float32 in layers/channel_sums.h's blocks, float64 channel by channel in (n, s) order.
channel_sums::ChannelSums sums_f32(const std::vector<Tensor>& xs, const Geometry& g, const float* y, const float* dy,
                                   const std::vector<float>& mu, bool xmu) {
  if (g.nhwc) {
    return channel_sums::nhwc_sums(g.rows(), g.c, [&](int64_t o, double* a, double* b) {
      const int64_t r = o / g.c;
      for (size_t k = 0; k < g.width.size(); ++k) {  // xs is empty when only dbeta is needed
        const int64_t ck = g.width[k], off = g.start[k];
        for (int64_t c = 0; c < ck; ++c) a[off + c] += masked(y, dy, o + off + c);
        if (!xmu) continue;
        const float* x = xs[k].data_as<float>() + r * ck;
        for (int64_t c = 0; c < ck; ++c)
          b[off + c] += static_cast<double>(masked(y, dy, o + off + c)) * (x[c] - mu[off + c]);
      }
    });
  }
  return channel_sums::nchw_sums(g.n, g.c, [&](int64_t p, int64_t c, double* a, double* b) {
    const size_t k = g.chunk_of[c];
    const int64_t o = p * g.hw, n = p / g.c;
    double sa = 0, sb = 0;
    for (int64_t i = 0; i < g.hw; ++i) sa += masked(y, dy, o + i);
    if (xmu) {
      const float* x = xs[k].data_as<float>() + (n * g.width[k] + c - g.start[k]) * g.hw;
      for (int64_t i = 0; i < g.hw; ++i) sb += static_cast<double>(masked(y, dy, o + i)) * (x[i] - mu[c]);
    }
    *a = sa, *b = sb;
  });
}

channel_sums::ChannelSums sums_f64(const std::vector<Tensor>& xs, const Geometry& g, const double* y,
                                   const double* dy, const std::vector<double>& mu, bool xmu) {
  channel_sums::ChannelSums s{std::vector<double>(static_cast<size_t>(g.c)),
                              std::vector<double>(static_cast<size_t>(g.c))};
  parallel_for(g.c, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const size_t k = g.chunk_of[c];
      const int64_t ck = g.width[k], lc = c - g.start[k];
      const double* x = xmu ? xs[k].data_as<double>() : nullptr;  // xs is empty when only dbeta is needed
      double sum_dz = 0, sum_dz_xmu = 0;
      for (int64_t n = 0; n < g.n; ++n)
        for (int64_t s_ = 0; s_ < g.hw; ++s_) {
          const int64_t yi = g.nhwc ? (n * g.hw + s_) * g.c + c : (n * g.c + c) * g.hw + s_;
          const int64_t xi = g.nhwc ? (n * g.hw + s_) * ck + lc : (n * ck + lc) * g.hw + s_;
          const double dz = masked(y, dy, yi);
          sum_dz += dz;
          if (xmu) sum_dz_xmu += dz * (x[xi] - mu[c]);
        }
      s.a[c] = sum_dz, s.b[c] = sum_dz_xmu;
    }
  });
  return s;
}

// One slot's per-channel gradient (dgamma or dbeta) under the contract.
template <typename T>
void write_channel_grad(GradSlot& slot, const std::vector<double>& v) {
  const DType dt = std::is_same_v<T, float> ? DType::F32 : DType::F64;
  prepare_grad(slot.grad, GradSpec{{static_cast<int64_t>(v.size())}, dt, Device::CPU}, slot.accumulate,
               "concat_bn_relu_backward");
  T* o = slot.grad.data_as<T>();
  for (size_t c = 0; c < v.size(); ++c) o[c] = static_cast<T>(slot.accumulate ? o[c] + v[c] : v[c]);
}

// dx of chunk k into `out` (chunk k's shape and layout), added when `add`: batch norm's training dx with dz.
template <typename T>
void dx_chunk(const std::vector<Tensor>& xs, const Geometry& g, size_t k, const T* y, const T* dy, const T* gamma,
              const Saved& sv, const channel_sums::ChannelSums& s, Tensor& out, bool add) {
  const T* x = xs[k].data_as<T>();
  T* o = out.data_as<T>();
  const int64_t c0 = g.start[k], c1 = c0 + g.width[k];
  const double m = sv.m;
  if constexpr (std::is_same_v<T, float>) {
    // dx = G dz + A (x - M) + B (batch norm's fast path: float32 coefficients).
    std::vector<float> M(static_cast<size_t>(g.c)), A(M.size()), B(M.size()), G(M.size());
    for (int64_t c = c0; c < c1; ++c) {
      const double inv = sv.invstd[c], dgamma = s.b[c] * inv, sum_dy = s.a[c], kk = gamma[c] * inv;
      G[c] = static_cast<float>(kk);
      M[c] = static_cast<float>(sv.mean[c]);
      A[c] = static_cast<float>(-kk * inv * dgamma / m);
      B[c] = static_cast<float>(-kk * sum_dy / m);
    }
    for_each_in_chunk(g, k, [&](int64_t xi, int64_t yi, int64_t c) {
      float v = (x[xi] - M[c]) * A[c] + B[c];
      v += masked(y, dy, yi) * G[c];
      o[xi] = add ? o[xi] + v : v;
    });
  } else {
    // dx = k (dz - sum dz / m - xhat dgamma / m) (batch norm's reference).
    for_each_in_chunk(g, k, [&](int64_t xi, int64_t yi, int64_t c) {
      const double inv = sv.invstd[c], dgamma = s.b[c] * inv, kk = gamma[c] * inv;
      const double xhat = (x[xi] - sv.mean[c]) * inv;
      const double r = kk * (masked(y, dy, yi) - s.a[c] / m - xhat * dgamma / m);
      o[xi] = add ? o[xi] + r : r;
    });
  }
}

// What the recorded backward keeps (see the top of concat_bn_relu.h).
struct Context {
  std::vector<Tensor> xs;  // the chunks (empty when neither dx nor dgamma is needed)
  Tensor y, gamma;         // gamma only when a chunk needs dx
  Geometry g;
  Saved saved;
};

// slots: one per chunk, then gamma, then beta.
template <typename T>
void backward_cpu(const Context& cx, const Tensor& dy_in, std::vector<GradSlot>& slots) {
  const size_t K = cx.g.width.size();
  const Tensor dy = dy_in.layout() == cx.y.layout() ? dy_in : dy_in.to_layout(cx.y.layout());
  check_same_shape(cx.y, dy, "concat_bn_relu_backward");
  check_same_dtype_device(cx.y, dy, "concat_bn_relu_backward");
  bool any_dx = false;
  for (size_t k = 0; k < K; ++k) any_dx = any_dx || slots[k].needed;
  GradSlot &sg = slots[K], &sb = slots[K + 1];
  const bool xmu = sg.needed || any_dx;
  const T *yp = cx.y.data_as<T>(), *dyp = dy.data_as<T>();
  channel_sums::ChannelSums s;
  if constexpr (std::is_same_v<T, float>)
    s = sums_f32(cx.xs, cx.g, yp, dyp, std::vector<float>(cx.saved.mean.begin(), cx.saved.mean.end()), xmu);
  else
    s = sums_f64(cx.xs, cx.g, yp, dyp, cx.saved.mean, xmu);
  if (sg.needed) {
    std::vector<double> dgamma(s.b);
    for (size_t c = 0; c < dgamma.size(); ++c) dgamma[c] *= cx.saved.invstd[c];
    write_channel_grad<T>(sg, dgamma);
  }
  if (sb.needed) write_channel_grad<T>(sb, s.a);
  for (size_t k = 0; k < K; ++k) {
    if (!slots[k].needed) continue;
    const Tensor& x = cx.xs[k];
    write_grad(slots[k].grad, grad_spec_like(x), x.layout(), slots[k].accumulate, "concat_bn_relu_backward",
               [&](Tensor& out, bool add) {
                 dx_chunk<T>(cx.xs, cx.g, k, yp, dyp, cx.gamma.data_as<T>(), cx.saved, s, out, add);
               });
  }
}

// The statistics of every channel of the concatenation, chunk after chunk, from the block's cache.
BatchMoments gather_moments(const std::vector<Tensor>& xs, ChunkStatsCache& cache) {
  BatchMoments all;
  for (size_t k = 0; k < xs.size(); ++k) {
    const BatchMoments& mk = cache.at(k, xs[k]);
    all.mean.insert(all.mean.end(), mk.mean.begin(), mk.mean.end());
    all.var.insert(all.var.end(), mk.var.begin(), mk.var.end());
    all.count = mk.count;
  }
  return all;
}

void check_channel_param(const Tensor& t, const Geometry& g, DType dt, const char* what) {
  TL_CHECK(t.defined() && t.shape() == Shape{g.c} && t.dtype() == dt && !t.is_cuda(), ValueError, kOp, ": ", what,
           " must be ", dtype_name(dt), "[", g.c, "] on the CPU for ", g.width.size(), " chunks of ", g.c,
           " channels, got ", t.defined() ? t.str() : std::string("undefined"));
}

// Records the fused op: inputs are the chunks, gamma and beta (written by hand: a variable number of inputs).
Variable record(const std::vector<Variable>& chunks, const Variable& gamma, const Variable& beta, Context cx) {
  auto node = std::make_shared<GradNode>();
  node->requires_grad = true;
  node->is_leaf = false;
  TapeEntry e;
  e.op = kOp;
  bool any_dx = false;
  for (const Variable& v : chunks) {
    e.inputs.push_back(needs_grad(v) ? v.node() : nullptr);
    any_dx = any_dx || needs_grad(v);
  }
  e.inputs.push_back(needs_grad(gamma) ? gamma.node() : nullptr);
  e.inputs.push_back(needs_grad(beta) ? beta.node() : nullptr);
  if (!any_dx && !needs_grad(gamma)) cx.xs.clear();  // dbeta = sum dz reads y and dy only
  if (!any_dx) cx.gamma = Tensor();
  // y only: the chunks are shared by every later layer of the block (one copy each, whoever counts them).
  e.saved_bytes = bytes_of({cx.y});
  const Tensor y = cx.y;
  const bool f32 = y.dtype() == DType::F32;
  e.output = node;
  e.backward = [cx = std::move(cx), f32](const Tensor& dy, std::vector<GradSlot>& slots) {
    if (f32)
      backward_cpu<float>(cx, dy, slots);
    else
      backward_cpu<double>(cx, dy, slots);
  };
  Tape::current().record(std::move(e));
  return Variable::make_result(y, std::move(node));
}

}  // namespace

bool concat_bn_relu_fused(const std::vector<Variable>& chunks, const BatchNormOptions& opt) {
  if (!opt.training || (opt.sync && opt.sync->active()) || chunks.empty()) return false;
  for (const Variable& v : chunks) {
    if (!v.defined()) return false;
    const Tensor& t = v.value();
    const Tensor& first = chunks[0].value();
    if (t.ndim() != 4 || t.is_cuda() || (t.dtype() != DType::F32 && t.dtype() != DType::F64)) return false;
    if (t.dtype() != first.dtype() || t.layout() != first.layout() || t.size(0) != first.size(0) ||
        t.size(2) != first.size(2) || t.size(3) != first.size(3))
      return false;  // the composition reports what does not fit
  }
  return true;
}

Variable concat_bn_relu(const std::vector<Variable>& chunks, const Variable& gamma, const Variable& beta,
                        BatchNormBuffers& buffers, const BatchNormOptions& opt, ChunkStatsCache& cache) {
  if (!concat_bn_relu_fused(chunks, opt))
    return relu(batch_norm2d(chunks.size() == 1 ? chunks[0] : concat(chunks, 1), gamma, beta, buffers, opt));
  TL_CHECK(gamma.defined() && beta.defined(), ValueError, kOp, ": gamma and beta must be defined");
  TL_CHECK(opt.eps > 0, ValueError, kOp, ": eps must be > 0, got ", opt.eps);
  std::vector<Tensor> xs;
  for (const Variable& v : chunks) xs.push_back(v.value());
  Context cx;
  cx.g = geometry_of(xs);
  const DType dt = xs[0].dtype();
  check_channel_param(gamma.value(), cx.g, dt, "gamma");
  check_channel_param(beta.value(), cx.g, dt, "beta");
  Shape shape = xs[0].shape();
  shape[1] = cx.g.c;
  record_shapes(gamma.value(), shape, shape);
  const BatchMoments mo = gather_moments(xs, cache);
  // checkpoint()'s recomputation: the first run updated the running statistics.
  if (!recomputing()) batchnorm_update_running(buffers, mo, opt);
  cx.y = dt == DType::F32 ? forward_cpu<float>(xs, cx.g, gamma.value(), beta.value(), mo, opt.eps, cx.saved)
                          : forward_cpu<double>(xs, cx.g, gamma.value(), beta.value(), mo, opt.eps, cx.saved);
  bool any_grad = needs_grad(gamma) || needs_grad(beta);
  for (const Variable& v : chunks) any_grad = any_grad || needs_grad(v);
  if (!grad_enabled() || !any_grad) return Variable(cx.y);
  cx.xs = std::move(xs);
  cx.gamma = gamma.value();
  return record(chunks, gamma, beta, std::move(cx));
}

}  // namespace tl
