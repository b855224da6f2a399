// Concatenation and narrowing: CPU reference, CUDA dispatch and autograd (see concat.h).
#include "layers/concat.h"

#include <algorithm>
#include <cstring>

#include "core/device.h"
#include "core/parallel.h"
#if TL_WITH_CUDA
#include "kernels/concat.h"
#endif
#include "layers/layer_util.h"

namespace tl {
namespace {

int normalize_dim(int dim, int rank, const Shape& shape, const char* op = "concat") {
  const int d = dim < 0 ? dim + rank : dim;
  TL_CHECK(d >= 0 && d < rank, ShapeError, op, ": dimension ", dim, " out of range for shape ", shape_str(shape));
  return d;
}

// How concatenation along logical dim d looks in memory: `rows` blocks, each `inner` elements per index of d.
struct Blocks {
  int64_t rows, inner;
};
Blocks blocks_of(const Shape& s, Layout layout, int d) {
  std::vector<int> order;  // logical dims in memory order
  if (s.size() == 4 && layout == Layout::NHWC) {
    order = {0, 2, 3, 1};
  } else {
    for (int i = 0; i < static_cast<int>(s.size()); ++i) order.push_back(i);
  }
  Blocks b{1, 1};
  bool after = false;
  for (int i : order) {
    if (i == d) after = true;
    else if (after) b.inner *= s[static_cast<size_t>(i)];
    else b.rows *= s[static_cast<size_t>(i)];
  }
  return b;
}

// dst[r*dst_ld + dst_off + j] (+)= src[r*src_ld + src_off + j] for a tensor's dtype and device.
void copy_blocks(const Tensor& src, int64_t src_ld, int64_t src_off, const Tensor& dst, int64_t dst_ld,
                 int64_t dst_off, int64_t rows, int64_t cols, bool accumulate) {
  if (rows * cols == 0) return;
  if (src.is_cuda()) {
#if TL_WITH_CUDA
    kernels::strided_copy(src.data(), src_ld, src_off, dst.data(), dst_ld, dst_off, rows, cols, src.dtype(),
                          accumulate, cuda::stream());
    return;
#endif
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / cols);  // rows per thread at least
  if (!accumulate) {
    const size_t es = dtype_size(src.dtype());
    const char* s = static_cast<const char*>(src.data());
    char* d = static_cast<char*>(dst.data());
    parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        std::memcpy(d + (r * dst_ld + dst_off) * es, s + (r * src_ld + src_off) * es, static_cast<size_t>(cols) * es);
    });
    return;
  }
  check_cpu_float(src, "concat_backward");
  auto add = [&](auto* s, auto* d) {
    parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < cols; ++j) d[r * dst_ld + dst_off + j] += s[r * src_ld + src_off + j];
    });
  };
  with_cpu_float(src.dtype(), [&](auto t) { add(src.data_as<decltype(t)>(), dst.data_as<decltype(t)>()); });
}

}  // namespace

Tensor concat_forward(const std::vector<Tensor>& xs, int dim) {
  TL_CHECK(!xs.empty(), ShapeError, "concat: no inputs");
  for (const Tensor& t : xs) check_defined(t, "concat");
  const Tensor& first = xs[0];
  const int rank = first.ndim();
  TL_CHECK(rank >= 1, ShapeError, "concat: inputs must have at least one dimension, got ", first.str());
  const int d = normalize_dim(dim, rank, first.shape());
  Shape out = first.shape();
  out[static_cast<size_t>(d)] = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& t = xs[k];
    check_same_dtype_device(first, t, "concat");
    TL_CHECK(t.ndim() == rank, ShapeError, "concat: input ", k, " is ", t.str(), ", input 0 is ", first.str());
    TL_CHECK(rank != 4 || t.layout() == first.layout(), ShapeError, "concat: input ", k, " is ", t.str(),
             " but input 0 is ", first.str(), " (convert to one layout first)");
    for (int i = 0; i < rank; ++i)
      TL_CHECK(i == d || t.shape()[static_cast<size_t>(i)] == first.shape()[static_cast<size_t>(i)], ShapeError,
               "concat along dim ", d, ": input ", k, " has shape ", shape_str(t.shape()), ", input 0 has shape ",
               shape_str(first.shape()));
    out[static_cast<size_t>(d)] += t.size(d);
  }
  Tensor y = Tensor::empty(out, first.dtype(), first.device(), first.layout());
  const Blocks yb = blocks_of(out, y.layout(), d);
  const int64_t y_ld = out[static_cast<size_t>(d)] * yb.inner;
  int64_t start = 0;
  for (const Tensor& t : xs) {
    const int64_t cols = t.size(d) * yb.inner;
    copy_blocks(t, cols, 0, y, y_ld, start * yb.inner, yb.rows, cols, false);
    start += t.size(d);
  }
  return y;
}

namespace {
// out (+)= the slice [start, start + length) of `src` along dim d (the gradient contract for `out`): concat's
// backward and narrow's forward.
void slice_out(const Tensor& src, int d, int64_t start, int64_t length, Tensor& out, bool accumulate, const char* op) {
  TL_CHECK(start >= 0 && length >= 0 && start + length <= src.size(d), ShapeError, op, ": slice [", start, ", ",
           start + length, ") of dim ", d, " is outside ", src.str());
  Shape xs = src.shape();
  xs[static_cast<size_t>(d)] = length;
  const Blocks b = blocks_of(src.shape(), src.layout(), d);
  const int64_t cols = length * b.inner;
  write_grad(out, GradSpec{xs, src.dtype(), src.device(), src.layout()}, src.layout(), accumulate, op,
             [&](Tensor& o, bool add) {
               copy_blocks(src, src.size(d) * b.inner, start * b.inner, o, cols, 0, b.rows, cols, add);
             });
}
}  // namespace

void concat_backward(const Tensor& dy, int dim, int64_t start, int64_t length, Tensor& dx, bool accumulate) {
  check_defined(dy, "concat_backward");
  const int d = normalize_dim(dim, dy.ndim(), dy.shape());
  slice_out(dy, d, start, length, dx, accumulate, "concat_backward");
}

Variable concat(const std::vector<Variable>& xs, int dim) {
  std::vector<Tensor> values;
  bool any_grad = false;
  for (const Variable& v : xs) {
    TL_CHECK(v.defined(), ValueError, "concat: undefined input Variable");
    values.push_back(v.value());
    any_grad = any_grad || needs_grad(v);
  }
  Tensor y = concat_forward(values, dim);
  if (!grad_enabled() || !any_grad) return Variable(y);
  const int d = dim < 0 ? dim + y.ndim() : dim;
  std::vector<int64_t> starts, lengths;
  int64_t start = 0;
  for (const Tensor& t : values) {
    starts.push_back(start);
    lengths.push_back(t.size(d));
    start += t.size(d);
  }
  // record_op() takes a fixed initializer list; a variable number of inputs is recorded the same way by hand.
  auto node = std::make_shared<GradNode>();
  node->requires_grad = true;
  node->is_leaf = false;
  TapeEntry e;
  e.op = "concat";
  for (const Variable& v : xs) e.inputs.push_back(needs_grad(v) ? v.node() : nullptr);
  e.output = node;
  e.saved_bytes = 0;
  e.backward = [d, starts, lengths](const Tensor& dy, std::vector<GradSlot>& s) {
    for (size_t k = 0; k < s.size(); ++k)
      if (s[k].needed) concat_backward(dy, d, starts[k], lengths[k], s[k].grad, s[k].accumulate);
  };
  Tape::current().record(std::move(e));
  return Variable::make_result(std::move(y), std::move(node));
}

Tensor narrow_forward(const Tensor& x, int dim, int64_t start, int64_t length) {
  check_defined(x, "narrow");
  const int d = normalize_dim(dim, x.ndim(), x.shape(), "narrow");
  Tensor y;
  slice_out(x, d, start, length, y, false, "narrow");
  return y;
}

void narrow_backward(const Tensor& dy, const Shape& x_shape, int dim, int64_t start, Tensor& dx, bool accumulate) {
  check_defined(dy, "narrow_backward");
  const int rank = static_cast<int>(x_shape.size());
  const int d = normalize_dim(dim, rank, x_shape, "narrow_backward");
  const int64_t length = dy.ndim() == rank ? dy.size(d) : -1;
  Shape expect = x_shape;
  expect[static_cast<size_t>(d)] = length;
  TL_CHECK(dy.shape() == expect && start >= 0 && start + length <= x_shape[static_cast<size_t>(d)], ShapeError,
           "narrow_backward: dy ", dy.str(), " is not the slice from ", start, " along dim ", d, " of ",
           shape_str(x_shape));
  prepare_grad(dx, GradSpec{x_shape, dy.dtype(), dy.device(), dy.layout()}, accumulate, "narrow_backward");
  if (!accumulate) dx.zero_();
  const Tensor src = rank == 4 && dx.layout() != dy.layout() ? dy.to_layout(dx.layout()) : dy;
  const Blocks b = blocks_of(x_shape, dx.layout(), d);
  const int64_t cols = length * b.inner;
  copy_blocks(src, cols, 0, dx, x_shape[static_cast<size_t>(d)] * b.inner, start * b.inner, b.rows, cols, accumulate);
}

Variable narrow(const Variable& x, int dim, int64_t start, int64_t length) {
  TL_CHECK(x.defined(), ValueError, "narrow: undefined input Variable");
  Tensor y = narrow_forward(x.value(), dim, start, length);
  if (!should_record({&x})) return Variable(y);
  const int d = dim < 0 ? dim + y.ndim() : dim;
  const Shape x_shape = x.shape();
  return record_op("narrow", y, {&x}, 0, [x_shape, d, start](const Tensor& dy, std::vector<GradSlot>& s) {
    narrow_backward(dy, x_shape, d, start, s[0].grad, s[0].accumulate);
  });
}

Variable narrow_channels(const Variable& x, int64_t start, int64_t length) { return narrow(x, 1, start, length); }

std::vector<Variable> split_channels(const Variable& x, const std::vector<int64_t>& sizes) {
  TL_CHECK(x.defined(), ValueError, "split_channels: undefined input Variable");
  TL_CHECK(x.value().ndim() >= 2, ShapeError, "split_channels: x must have a channel dimension, got ", x.value().str());
  int64_t total = 0;
  for (int64_t n : sizes) {
    TL_CHECK(n >= 0, ValueError, "split_channels: negative size ", n);
    total += n;
  }
  TL_CHECK(total == x.size(1), ShapeError, "split_channels: sizes add up to ", total, ", x ", x.value().str(), " has ",
           x.size(1), " channels");
  std::vector<Variable> parts;
  int64_t start = 0;
  for (int64_t n : sizes) {
    parts.push_back(narrow(x, 1, start, n));
    start += n;
  }
  return parts;
}
}  // namespace tl
