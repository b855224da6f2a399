// Depthwise convolution: the direct CPU loops (see conv2d_depthwise.h).
#include "layers/conv2d_depthwise.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "layers/layer_util.h"

namespace tl::depthwise_conv {
namespace {

constexpr int64_t kWorkPerChunk = int64_t{1} << 15;  // multiply-adds per parallel range at least
constexpr int64_t kMaxBlocks = 128;                   // NHWC weight gradient: partial sums at most
constexpr int64_t kBlockPixels = 256;                 // NHWC weight gradient: output pixels per block at least

struct Geo {
  int64_t n, c, h, w;  // x
  int64_t k, m, r, s;  // w (K, 1, R, S); m = K / C
  int64_t ho, wo;      // y
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t taps() const { return r * s; }
  int64_t out_plane() const { return ho * wo; }
};

Geo geo_of(const Shape& x, const Shape& w, const Conv2dOptions& o) {
  Geo g;
  g.n = x[0], g.c = x[1], g.h = x[2], g.w = x[3];
  g.k = w[0], g.m = w[0] / x[1], g.r = w[2], g.s = w[3];
  g.sh = o.stride_h, g.sw = o.stride_w, g.ph = o.pad_h, g.pw = o.pad_w, g.dh = o.dilation_h, g.dw = o.dilation_w;
  g.ho = (g.h + 2 * g.ph - g.dh * (g.r - 1) - 1) / g.sh + 1;
  g.wo = (g.w + 2 * g.pw - g.dw * (g.s - 1) - 1) / g.sw + 1;
  return g;
}

// The outputs o in [lo, hi) whose input index o * stride + off lies in [0, in).
struct Span {
  int64_t lo, hi;
};
Span valid_outputs(int64_t off, int64_t stride, int64_t in, int64_t out) {
  const int64_t lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  const int64_t hi = in - 1 - off < 0 ? 0 : std::min(out, (in - 1 - off) / stride + 1);
  return {std::min(lo, hi), hi};
}
std::vector<Span> column_spans(const Geo& g) {
  std::vector<Span> spans(static_cast<size_t>(g.s));
  for (int64_t s = 0; s < g.s; ++s) spans[static_cast<size_t>(s)] = valid_outputs(s * g.dw - g.pw, g.sw, g.w, g.wo);
  return spans;
}

// wt[tap * K + k] = w[k * taps + tap]: one tap's weights contiguous over the channels (NHWC loops).
template <typename T>
std::vector<T> taps_major(const T* w, const Geo& g) {
  std::vector<T> wt(static_cast<size_t>(g.k * g.taps()));
  for (int64_t k = 0; k < g.k; ++k)
    for (int64_t t = 0; t < g.taps(); ++t) wt[static_cast<size_t>(t * g.k + k)] = w[k * g.taps() + t];
  return wt;
}

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kWorkPerChunk / std::max<int64_t>(1, work_per_item));
}

// ---- forward ----

// One (n, k) plane per item: each output row gets bias, then every tap's contribution along the row.
template <typename T>
void forward_nchw(const T* x, const T* w, const T* bias, T* y, const Geo& g) {
  const std::vector<Span> cols = column_spans(g);
  parallel_for(g.n * g.k, grain_for(g.out_plane() * g.taps()), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / g.k, k = p % g.k;
      const T* xp = x + (n * g.c + k / g.m) * g.h * g.w;
      const T* wk = w + k * g.taps();
      T* yp = y + p * g.out_plane();
      const T b = bias ? bias[k] : T(0);
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        T* __restrict yrow = yp + oh * g.wo;
        std::fill(yrow, yrow + g.wo, b);
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          const T* xrow = xp + ih * g.w;
          for (int64_t s = 0; s < g.s; ++s) {
            const T wv = wk[r * g.s + s];
            const int64_t off = s * g.dw - g.pw;
            const Span sp = cols[static_cast<size_t>(s)];
            if (sp.hi <= sp.lo) continue;
            if (g.sw == 1) {
              const T* __restrict xs = xrow + sp.lo + off;
              T* __restrict ys = yrow + sp.lo;
              for (int64_t i = 0; i < sp.hi - sp.lo; ++i) ys[i] += wv * xs[i];
            } else {
              for (int64_t ow = sp.lo; ow < sp.hi; ++ow) yrow[ow] += wv * xrow[ow * g.sw + off];
            }
          }
        }
      }
    }
  });
}

// One (n, oh) output row per item; each output pixel accumulates its taps over all channels at once.
template <typename T>
void forward_nhwc(const T* x, const T* w, const T* bias, T* y, const Geo& g) {
  const std::vector<T> wt = taps_major(w, g);
  parallel_for(g.n * g.ho, grain_for(g.wo * g.taps() * g.k), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / g.ho, oh = q % g.ho;
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        T* __restrict yp = y + (q * g.wo + ow) * g.k;
        if (bias) std::copy(bias, bias + g.k, yp);
        else std::fill(yp, yp + g.k, T(0));
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t s = 0; s < g.s; ++s) {
            const int64_t iw = ow * g.sw - g.pw + s * g.dw;
            if (iw < 0 || iw >= g.w) continue;
            const T* __restrict xp = x + ((n * g.h + ih) * g.w + iw) * g.c;
            const T* __restrict wp = wt.data() + (r * g.s + s) * g.k;
            if (g.m == 1) {
              for (int64_t k = 0; k < g.k; ++k) yp[k] += wp[k] * xp[k];
            } else {
              for (int64_t c = 0; c < g.c; ++c)
                for (int64_t j = 0; j < g.m; ++j) yp[c * g.m + j] += wp[c * g.m + j] * xp[c];
            }
          }
        }
      }
    }
  });
}

// ---- data gradient ----

// One (n, c) input plane per item: its m output channels scatter into it, rows in order (no other item writes it).
template <typename T>
void backward_data_nchw(const T* dy, const T* w, T* dx, const Geo& g, bool accumulate) {
  const std::vector<Span> cols = column_spans(g);
  parallel_for(g.n * g.c, grain_for(g.m * g.out_plane() * g.taps()), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / g.c, c = p % g.c;
      T* dxp = dx + p * g.h * g.w;
      if (!accumulate) std::fill(dxp, dxp + g.h * g.w, T(0));
      for (int64_t j = 0; j < g.m; ++j) {
        const int64_t k = c * g.m + j;
        const T* dyp = dy + (n * g.k + k) * g.out_plane();
        const T* wk = w + k * g.taps();
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          const T* dyrow = dyp + oh * g.wo;
          for (int64_t r = 0; r < g.r; ++r) {
            const int64_t ih = oh * g.sh - g.ph + r * g.dh;
            if (ih < 0 || ih >= g.h) continue;
            T* dxrow = dxp + ih * g.w;
            for (int64_t s = 0; s < g.s; ++s) {
              const T wv = wk[r * g.s + s];
              const int64_t off = s * g.dw - g.pw;
              const Span sp = cols[static_cast<size_t>(s)];
              if (sp.hi <= sp.lo) continue;
              if (g.sw == 1) {
                T* __restrict d = dxrow + sp.lo + off;
                const T* __restrict e = dyrow + sp.lo;
                for (int64_t i = 0; i < sp.hi - sp.lo; ++i) d[i] += wv * e[i];
              } else {
                for (int64_t ow = sp.lo; ow < sp.hi; ++ow) dxrow[ow * g.sw + off] += wv * dyrow[ow];
              }
            }
          }
        }
      }
    }
  });
}

// One (n, ih) input row per item; each input pixel gathers the output pixels whose windows read it.
template <typename T>
void backward_data_nhwc(const T* dy, const T* w, T* dx, const Geo& g, bool accumulate) {
  const std::vector<T> wt = taps_major(w, g);
  parallel_for(g.n * g.h, grain_for(g.w * g.taps() * g.k), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / g.h, ih = q % g.h;
      for (int64_t iw = 0; iw < g.w; ++iw) {
        T* __restrict dxp = dx + (q * g.w + iw) * g.c;
        if (!accumulate) std::fill(dxp, dxp + g.c, T(0));
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t t = ih + g.ph - r * g.dh;
          if (t < 0 || t % g.sh != 0 || t / g.sh >= g.ho) continue;
          const int64_t oh = t / g.sh;
          for (int64_t s = 0; s < g.s; ++s) {
            const int64_t u = iw + g.pw - s * g.dw;
            if (u < 0 || u % g.sw != 0 || u / g.sw >= g.wo) continue;
            const T* __restrict dyp = dy + ((n * g.ho + oh) * g.wo + u / g.sw) * g.k;
            const T* __restrict wp = wt.data() + (r * g.s + s) * g.k;
            if (g.m == 1) {
              for (int64_t c = 0; c < g.c; ++c) dxp[c] += wp[c] * dyp[c];
            } else {
              for (int64_t c = 0; c < g.c; ++c) {
                T acc = T(0);
                for (int64_t j = 0; j < g.m; ++j) acc += wp[c * g.m + j] * dyp[c * g.m + j];
                dxp[c] += acc;
              }
            }
          }
        }
      }
    }
  });
}

// ---- weight gradient ----

// One output channel k per item. Per image, lane ow of tap t sums dy * x down the rows (elementwise, so it
// vectorises); the lanes are then added in double, image after image.
template <typename T>
void backward_weight_nchw(const T* dy, const T* x, T* dw, const Geo& g, bool accumulate) {
  const std::vector<Span> cols = column_spans(g);
  parallel_for(g.k, grain_for(g.n * g.out_plane() * g.taps()), [&](int64_t k0, int64_t k1) {
    std::vector<T> lanes(static_cast<size_t>(g.taps() * g.wo));
    std::vector<double> total(static_cast<size_t>(g.taps()));
    for (int64_t k = k0; k < k1; ++k) {
      std::fill(total.begin(), total.end(), 0.0);
      for (int64_t n = 0; n < g.n; ++n) {
        std::fill(lanes.begin(), lanes.end(), T(0));
        const T* xp = x + (n * g.c + k / g.m) * g.h * g.w;
        const T* dyp = dy + (n * g.k + k) * g.out_plane();
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          const T* dyrow = dyp + oh * g.wo;
          for (int64_t r = 0; r < g.r; ++r) {
            const int64_t ih = oh * g.sh - g.ph + r * g.dh;
            if (ih < 0 || ih >= g.h) continue;
            const T* xrow = xp + ih * g.w;
            for (int64_t s = 0; s < g.s; ++s) {
              T* a = lanes.data() + (r * g.s + s) * g.wo;
              const int64_t off = s * g.dw - g.pw;
              const Span sp = cols[static_cast<size_t>(s)];
              if (sp.hi <= sp.lo) continue;
              if (g.sw == 1) {
                T* __restrict as = a + sp.lo;
                const T* __restrict xs = xrow + sp.lo + off;
                const T* __restrict es = dyrow + sp.lo;
                for (int64_t i = 0; i < sp.hi - sp.lo; ++i) as[i] += es[i] * xs[i];
              } else {
                for (int64_t ow = sp.lo; ow < sp.hi; ++ow) a[ow] += dyrow[ow] * xrow[ow * g.sw + off];
              }
            }
          }
        }
        for (int64_t t = 0; t < g.taps(); ++t) {
          double sum = 0;
          for (int64_t ow = 0; ow < g.wo; ++ow) sum += static_cast<double>(lanes[static_cast<size_t>(t * g.wo + ow)]);
          total[static_cast<size_t>(t)] += sum;
        }
      }
      for (int64_t t = 0; t < g.taps(); ++t) {
        T& out = dw[k * g.taps() + t];
        const double v = total[static_cast<size_t>(t)];
        out = accumulate ? static_cast<T>(out + v) : static_cast<T>(v);
      }
    }
  });
}

// Blocks of whole output rows (a count that depends on the shape only) each sum dy * x per tap and channel
// (elementwise over the channels); the blocks are then added in order, in double.
template <typename T>
void backward_weight_nhwc(const T* dy, const T* x, T* dw, const Geo& g, bool accumulate) {
  const int64_t rows = g.n * g.ho, per_tap = g.k, block_size = g.taps() * g.k;
  int64_t rows_per_block = std::max<int64_t>(1, (kBlockPixels + g.wo - 1) / g.wo);
  rows_per_block = std::max(rows_per_block, (rows + kMaxBlocks - 1) / kMaxBlocks);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  std::vector<T> part(static_cast<size_t>(blocks * block_size));
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* pb = part.data() + b * block_size;
      std::fill(pb, pb + block_size, T(0));
      for (int64_t q = b * rows_per_block; q < std::min(rows, (b + 1) * rows_per_block); ++q) {
        const int64_t n = q / g.ho, oh = q % g.ho;
        for (int64_t r = 0; r < g.r; ++r) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t ow = 0; ow < g.wo; ++ow) {
            const T* __restrict dyp = dy + (q * g.wo + ow) * g.k;
            for (int64_t s = 0; s < g.s; ++s) {
              const int64_t iw = ow * g.sw - g.pw + s * g.dw;
              if (iw < 0 || iw >= g.w) continue;
              const T* __restrict xp = x + ((n * g.h + ih) * g.w + iw) * g.c;
              T* __restrict pp = pb + (r * g.s + s) * per_tap;
              if (g.m == 1) {
                for (int64_t k = 0; k < g.k; ++k) pp[k] += dyp[k] * xp[k];
              } else {
                for (int64_t c = 0; c < g.c; ++c)
                  for (int64_t j = 0; j < g.m; ++j) pp[c * g.m + j] += dyp[c * g.m + j] * xp[c];
              }
            }
          }
        }
      }
    }
  });
  parallel_for(block_size, 256, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      double sum = 0;
      for (int64_t b = 0; b < blocks; ++b) sum += static_cast<double>(part[static_cast<size_t>(b * block_size + e)]);
      T& out = dw[(e % g.k) * g.taps() + e / g.k];
      out = accumulate ? static_cast<T>(out + sum) : static_cast<T>(sum);
    }
  });
}

bool is_nhwc(const Tensor& t) { return t.layout() == Layout::NHWC; }

}  // namespace

bool applies(const Shape& x, const Shape& w, const Conv2dOptions& o) {
  return x.size() == 4 && w.size() == 4 && o.groups > 1 && x[1] == o.groups && w[1] == 1 && w[0] % x[1] == 0;
}

// Measured on MobileNet V2's depthwise layers (bench/NOTES.md, "Depthwise convolution"): in NCHW the loop beat
// oneDNN in every layer and direction (1.1-8x; oneDNN has no fast NCHW depthwise kernel), in NHWC oneDNN's JIT
// kernels (AVX-512 there) beat this portable loop in every one (1.3-5x).
bool preferred_over_dnnl(const Shape& x, const Shape& w, const Conv2dOptions& o, Layout layout) {
  return applies(x, w, o) && layout == Layout::NCHW;
}

void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Conv2dOptions& o) {
  TL_CHECK(applies(x.shape(), w.shape(), o), ShapeError, "depthwise conv2d: not a depthwise problem: x ", x.str(),
           ", w ", w.str(), ", groups ", o.groups);
  TL_CHECK(y.layout() == x.layout(), ShapeError, "depthwise conv2d: y ", y.str(), " must take x's layout ", x.str());
  const Geo g = geo_of(x.shape(), w.shape(), o);
  with_cpu_float(x.dtype(), [&](auto t) {
    using T = decltype(t);
    const T* b = bias.defined() ? bias.data_as<T>() : nullptr;
    if (is_nhwc(x)) forward_nhwc(x.data_as<T>(), w.data_as<T>(), b, y.data_as<T>(), g);
    else forward_nchw(x.data_as<T>(), w.data_as<T>(), b, y.data_as<T>(), g);
  });
}

void backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dOptions& o, bool accumulate) {
  TL_CHECK(applies(dx.shape(), w.shape(), o), ShapeError,
           "depthwise conv2d_backward_data: not a depthwise problem: dx ", dx.str(), ", w ", w.str(), ", groups ",
           o.groups);
  TL_CHECK(dx.layout() == dy.layout(), ShapeError, "depthwise conv2d_backward_data: dx ", dx.str(),
           " must take dy's layout ", dy.str());
  const Geo g = geo_of(dx.shape(), w.shape(), o);
  with_cpu_float(dy.dtype(), [&](auto t) {
    using T = decltype(t);
    if (is_nhwc(dy)) backward_data_nhwc(dy.data_as<T>(), w.data_as<T>(), dx.data_as<T>(), g, accumulate);
    else backward_data_nchw(dy.data_as<T>(), w.data_as<T>(), dx.data_as<T>(), g, accumulate);
  });
}

void backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o, bool accumulate) {
  TL_CHECK(applies(x.shape(), dw.shape(), o), ShapeError,
           "depthwise conv2d_backward_weight: not a depthwise problem: x ", x.str(), ", dw ", dw.str(), ", groups ",
           o.groups);
  TL_CHECK(x.layout() == dy.layout(), ShapeError, "depthwise conv2d_backward_weight: dy ", dy.str(),
           " must take x's layout ", x.str());
  const Geo g = geo_of(x.shape(), dw.shape(), o);
  with_cpu_float(x.dtype(), [&](auto t) {
    using T = decltype(t);
    if (is_nhwc(x)) backward_weight_nhwc(dy.data_as<T>(), x.data_as<T>(), dw.data_as<T>(), g, accumulate);
    else backward_weight_nchw(dy.data_as<T>(), x.data_as<T>(), dw.data_as<T>(), g, accumulate);
  });
}

}  // namespace tl::depthwise_conv
