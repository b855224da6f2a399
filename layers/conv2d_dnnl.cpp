// conv2d through oneDNN on the CPU (see conv2d_dnnl.h).
#include "layers/conv2d_dnnl.h"

#if TL_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

#include "core/parallel.h"

namespace tl::dnnl_conv {

#if !TL_WITH_DNNL

bool takes(const Tensor&) { return false; }
void forward(const Tensor&, const Tensor&, const Tensor&, Tensor&, const Conv2dOptions&) {
  throw Error("conv2d: this build has no oneDNN");
}
void backward_data(const Tensor&, const Tensor&, Tensor&, const Conv2dOptions&) {
  throw Error("conv2d: this build has no oneDNN");
}
void backward_weight(const Tensor&, const Tensor&, Tensor&, const Conv2dOptions&) {
  throw Error("conv2d: this build has no oneDNN");
}

#else

namespace {
using dnnl::memory;
using tag = memory::format_tag;

// The CPU engine, and a stream per thread (oneDNN streams are not shared between threads).
const dnnl::engine& engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

memory::dims dims_of(const Shape& s) { return memory::dims(s.begin(), s.end()); }

// Weights (K, C/g, R, S) in their own layout; grouped weights as (g, K/g, C/g, R, S).
memory::desc weight_desc(const Tensor& t, int groups) {
  const bool nhwc = t.layout() == Layout::NHWC;
  if (groups == 1) return memory::desc(dims_of(t.shape()), memory::data_type::f32, nhwc ? tag::ohwi : tag::oihw);
  const Shape& s = t.shape();
  return memory::desc({groups, s[0] / groups, s[1], s[2], s[3]}, memory::data_type::f32,
                      nhwc ? tag::gohwi : tag::goihw);
}
// The same weights with oneDNN choosing the layout.
memory::desc any_weight_desc(const Shape& s, int groups) {
  if (groups == 1) return memory::desc(dims_of(s), memory::data_type::f32, tag::any);
  return memory::desc({groups, s[0] / groups, s[1], s[2], s[3]}, memory::data_type::f32, tag::any);
}

memory wrap(const memory::desc& d, const Tensor& t) { return memory(d, engine(), const_cast<void*>(t.data())); }

// `m` in the layout the primitive wants: itself, or a reordered copy.
memory as_wanted(const memory& m, const memory::desc& want) {
  if (m.get_desc() == want) return m;
  memory out(want, engine());
  dnnl::reorder(m, out).execute(stream(), const_cast<memory&>(m), out);
  return out;
}

// Where a primitive writes an output the caller owns: the user's memory when the primitive takes its layout, else a
// scratch memory in the primitive's layout that deliver() reorders into the user's.
memory output_for(const memory& user, const memory::desc& want) {
  return user.get_desc() == want ? user : memory(want, engine());
}
void deliver(memory& out, memory& user) {
  if (out.get_data_handle() != user.get_data_handle()) dnnl::reorder(out, user).execute(stream(), out, user);
  stream().wait();
}

struct Problem {
  memory::desc x, w_any, y;
  memory::dims strides, dilates, pad_l, pad_r;
  Problem(const Shape& xs, Layout xl, const Shape& ws, const Shape& ys, Layout yl, const Conv2dOptions& o)
      : x(dims_of(xs), memory::data_type::f32, xl == Layout::NHWC ? tag::nhwc : tag::nchw),
        w_any(any_weight_desc(ws, o.groups)),
        y(dims_of(ys), memory::data_type::f32, yl == Layout::NHWC ? tag::nhwc : tag::nchw),
        strides{o.stride_h, o.stride_w},
        dilates{o.dilation_h - 1, o.dilation_w - 1},
        pad_l{o.pad_h, o.pad_w} {
    // oneDNN's right padding makes the output size exact: (in + pl + pr - dil*(k-1) - 1) / stride + 1 = out.
    const int64_t ph = (ys[2] - 1) * o.stride_h + o.dilation_h * (ws[2] - 1) + 1 - xs[2] - o.pad_h;
    const int64_t pw = (ys[3] - 1) * o.stride_w + o.dilation_w * (ws[3] - 1) + 1 - xs[3] - o.pad_w;
    pad_r = {ph, pw};
  }
  dnnl::convolution_forward::primitive_desc forward_pd(bool with_bias) const {
    const memory::desc b = with_bias ? memory::desc({y.dims()[1]}, memory::data_type::f32, tag::x) : memory::desc();
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x,
                                      w_any, b, y, strides, dilates, pad_l, pad_r);
    return dnnl::convolution_forward::primitive_desc(d, engine());
  }
};

// Runs f, turning oneDNN's exceptions into tl::Error naming the op and the shapes.
template <typename F>
void translated(const char* op, const Tensor& a, const Tensor& b, F&& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    throw Error(detail::concat(op, ": oneDNN failed (", e.what(), ", status ", static_cast<int>(e.status), ") for ",
                               a.str(), " and ", b.str()));
  }
}

}  // namespace

bool takes(const Tensor& t) { return t.dtype() == DType::F32 && !t.is_cuda(); }

namespace {
void forward_impl(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Conv2dOptions& o) {
  num_threads();  // the pool's thread count is applied before oneDNN starts its threads
  const Problem p(x.shape(), x.layout(), w.shape(), y.shape(), y.layout(), o);
  const auto pd = p.forward_pd(bias.defined());
  memory xm = wrap(p.x, x), ym = wrap(p.y, y);
  memory wm = as_wanted(wrap(weight_desc(w, o.groups), w), pd.weights_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, as_wanted(xm, pd.src_desc())}, {DNNL_ARG_WEIGHTS, wm}};
  if (bias.defined()) args[DNNL_ARG_BIAS] = wrap(pd.bias_desc(), bias);
  memory out = output_for(ym, pd.dst_desc());
  args[DNNL_ARG_DST] = out;
  dnnl::convolution_forward(pd).execute(stream(), args);
  deliver(out, ym);
}

void backward_data_impl(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dOptions& o) {
  num_threads();
  const Problem p(dx.shape(), dx.layout(), w.shape(), dy.shape(), dy.layout(), o);
  const auto hint = p.forward_pd(false);
  dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, p.x, p.w_any, p.y, p.strides,
                                          p.dilates, p.pad_l, p.pad_r);
  const dnnl::convolution_backward_data::primitive_desc pd(d, engine(), hint);
  memory dxm = wrap(p.x, dx);
  memory out = output_for(dxm, pd.diff_src_desc());
  dnnl::convolution_backward_data(pd).execute(
      stream(), {{DNNL_ARG_DIFF_DST, as_wanted(wrap(p.y, dy), pd.diff_dst_desc())},
                 {DNNL_ARG_WEIGHTS, as_wanted(wrap(weight_desc(w, o.groups), w), pd.weights_desc())},
                 {DNNL_ARG_DIFF_SRC, out}});
  deliver(out, dxm);
}

void backward_weight_impl(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o) {
  num_threads();
  const Problem p(x.shape(), x.layout(), dw.shape(), dy.shape(), dy.layout(), o);
  const auto hint = p.forward_pd(false);
  dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, p.x, p.w_any, p.y, p.strides,
                                             p.dilates, p.pad_l, p.pad_r);
  const dnnl::convolution_backward_weights::primitive_desc pd(d, engine(), hint);
  memory dwm = wrap(weight_desc(dw, o.groups), dw);
  memory out = output_for(dwm, pd.diff_weights_desc());
  dnnl::convolution_backward_weights(pd).execute(
      stream(), {{DNNL_ARG_DIFF_DST, as_wanted(wrap(p.y, dy), pd.diff_dst_desc())},
                 {DNNL_ARG_SRC, as_wanted(wrap(p.x, x), pd.src_desc())},
                 {DNNL_ARG_DIFF_WEIGHTS, out}});
  deliver(out, dwm);
}
}  // namespace

void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Conv2dOptions& o) {
  translated("conv2d_forward", x, w, [&] { forward_impl(x, w, bias, y, o); });
}
void backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dOptions& o) {
  translated("conv2d_backward_data", dy, w, [&] { backward_data_impl(dy, w, dx, o); });
}
void backward_weight(const Tensor& dy, const Tensor& x, Tensor& dw, const Conv2dOptions& o) {
  translated("conv2d_backward_weight", dy, x, [&] { backward_weight_impl(dy, x, dw, o); });
}

#endif  // TL_WITH_DNNL

}  // namespace tl::dnnl_conv
