// Depthwise convolution's direct CPU loop (layers/conv2d_depthwise.h): against the im2col + GEMM reference in
// every direction, layout and dtype, float64 gradient checks, the gradient contract, PyTorch parity
// (tests/torch_ref/fx_conv2d.py dw_* configurations), the same bits for any thread count, CUDA (cuDNN) vs the
// direct loop, and (DISABLED_, run by hand) the benchmark against oneDNN behind bench/NOTES.md.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/parallel.h"
#include "layers/conv2d.h"
#include "layers/conv2d_depthwise.h"
#include "layers/conv2d_dnnl.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

struct DwCase {
  const char* name;
  Shape x, w;  // w (K, 1, R, S), groups = C
  int sh, sw, ph, pw, dh, dw;
  bool bias;
  Conv2dOptions options() const {
    Conv2dOptions o;
    o.stride_h = sh, o.stride_w = sw, o.pad_h = ph, o.pad_w = pw, o.dilation_h = dh, o.dilation_w = dw;
    o.groups = static_cast<int>(x[1]);
    return o;
  }
};

// Multiplier 1, 2, 3; 3x3, 5x5, 3x2, 1x1; stride 1, 2, (2, 1); padding 0 .. 2 and asymmetric; dilation; odd sizes;
// padding larger than the dilated kernel's reach on one side (columns with no valid tap).
const std::vector<DwCase>& cases() {
  static const std::vector<DwCase> c = {
      {"mbv2_s1", {2, 5, 9, 8}, {5, 1, 3, 3}, 1, 1, 1, 1, 1, 1, false},
      {"mbv2_s2", {2, 4, 9, 10}, {4, 1, 3, 3}, 2, 2, 1, 1, 1, 1, true},
      {"mnas_5x5_s2", {1, 3, 11, 9}, {3, 1, 5, 5}, 2, 2, 2, 2, 1, 1, false},
      {"mult2", {2, 3, 7, 6}, {6, 1, 3, 3}, 1, 1, 1, 1, 1, 1, true},
      {"mult3_asym", {1, 2, 8, 7}, {6, 1, 3, 2}, 2, 1, 0, 1, 1, 2, true},
      {"dilated", {1, 4, 10, 9}, {4, 1, 3, 3}, 1, 2, 2, 2, 2, 2, false},
      {"no_pad_s3", {2, 3, 10, 11}, {3, 1, 3, 3}, 3, 3, 0, 0, 1, 1, true},
      {"pointwise_dw", {2, 3, 5, 4}, {3, 1, 1, 1}, 1, 1, 0, 0, 1, 1, false},
      {"wide_pad", {1, 2, 4, 3}, {2, 1, 3, 3}, 1, 2, 2, 3, 1, 1, true},
  };
  return c;
}

// The same problem as a dense convolution (groups = 1) with a block-diagonal weight: output channel k reads only
// input channel k / m. It runs the im2col + GEMM reference, never the direct loop.
Tensor block_diagonal(const Tensor& w, int64_t channels) {
  const int64_t k = w.size(0), m = k / channels, taps = w.size(2) * w.size(3);
  const std::vector<double> v = w.to_doubles();
  std::vector<double> full(static_cast<size_t>(k * channels * taps), 0.0);
  for (int64_t o = 0; o < k; ++o)
    for (int64_t t = 0; t < taps; ++t)
      full[static_cast<size_t>((o * channels + o / m) * taps + t)] = v[static_cast<size_t>(o * taps + t)];
  return Tensor::from_values(full, {k, channels, w.size(2), w.size(3)}, w.dtype());
}
// The depthwise part (K, 1, R, S) of a dense (K, C, R, S) weight gradient.
Tensor diagonal_part(const Tensor& dw_full, int64_t m) {
  const int64_t k = dw_full.size(0), channels = dw_full.size(1), taps = dw_full.size(2) * dw_full.size(3);
  const std::vector<double> v = dw_full.to_doubles();
  std::vector<double> out(static_cast<size_t>(k * taps));
  for (int64_t o = 0; o < k; ++o)
    for (int64_t t = 0; t < taps; ++t)
      out[static_cast<size_t>(o * taps + t)] = v[static_cast<size_t>((o * channels + o / m) * taps + t)];
  return Tensor::from_values(out, {k, 1, dw_full.size(2), dw_full.size(3)}, dw_full.dtype());
}

struct Result {
  Tensor y, dx, dw;
};

// float64 reference through im2col + GEMM.
Result reference(const DwCase& c, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gy) {
  Conv2dOptions o = c.options();
  o.groups = 1;
  const Tensor wf = block_diagonal(w, c.x[1]);
  Result r;
  r.y = conv2d_forward(x, wf, b, o);
  conv2d_backward_data(gy, wf, x.shape(), r.dx, o, false);
  Tensor dwf;
  conv2d_backward_weight(gy, x, wf.shape(), dwf, o, false);
  r.dw = diagonal_part(dwf, c.w[0] / c.x[1]);
  return r;
}

// The direct loop called directly (any dtype, any layout): x, gy in `layout`.
Result direct(const DwCase& c, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gy) {
  const Conv2dOptions o = c.options();
  Result r;
  r.y = Tensor::empty(conv2d_output_shape(x.shape(), w.shape(), o), x.dtype(), Device::CPU, x.layout());
  depthwise_conv::forward(x, w, b, r.y, o);
  r.dx = Tensor::empty(x.shape(), x.dtype(), Device::CPU, gy.layout());
  depthwise_conv::backward_data(gy, w, r.dx, o, false);
  r.dw = Tensor::empty(w.shape(), w.dtype());
  depthwise_conv::backward_weight(gy, x, r.dw, o, false);
  return r;
}

struct Inputs {
  Tensor x, w, b, gy;
};
Inputs inputs_for(const DwCase& c, uint64_t seed, DType dt = DType::F64) {
  Inputs in;
  in.x = Tensor::randn(c.x, seed, dt);
  in.w = Tensor::randn(c.w, seed + 1, dt);
  if (c.bias) in.b = Tensor::randn({c.w[0]}, seed + 2, dt);
  in.gy = Tensor::randn(conv2d_output_shape(c.x, c.w, c.options()), seed + 3, dt);
  return in;
}

}  // namespace

TEST(Depthwise, Applies) {
  Conv2dOptions o;
  o.groups = 4;
  EXPECT_TRUE(depthwise_conv::applies({2, 4, 8, 8}, {4, 1, 3, 3}, o));
  EXPECT_TRUE(depthwise_conv::applies({2, 4, 8, 8}, {8, 1, 3, 3}, o));   // multiplier 2
  EXPECT_FALSE(depthwise_conv::applies({2, 8, 8, 8}, {8, 2, 3, 3}, o));  // 2 channels per group
  o.groups = 1;
  EXPECT_FALSE(depthwise_conv::applies({2, 1, 8, 8}, {4, 1, 3, 3}, o));  // a plain convolution of 1 channel
}

// float64 through conv2d's dispatch (the direct loop) and float32 through the loop itself, NCHW and NHWC, against
// the float64 im2col reference: y, dx, dw.
TEST(Depthwise, MatchesIm2colReference) {
  for (const DwCase& c : cases()) {
    const Inputs in = inputs_for(c, 10);
    const Result ref = reference(c, in.x, in.w, in.b, in.gy);
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(c.name) + " " + layout_name(layout));
      const Tensor x = in.x.to_layout(layout), gy = in.gy.to_layout(layout), w = in.w.to_layout(layout);
      // float64: the public functions (dispatched to the direct loop)
      const Conv2dOptions o = c.options();
      Tensor y = conv2d_forward(x, w, in.b, o), dx, dw;
      EXPECT_EQ(y.layout(), layout);
      conv2d_backward_data(gy, w, c.x, dx, o, false);
      EXPECT_EQ(dx.layout(), layout);
      conv2d_backward_weight(gy, x, c.w, dw, o, false);
      expect_close(y, ref.y, 1e-12, "f64 y");
      expect_close(dx, ref.dx, 1e-12, "f64 dx");
      expect_close(dw, ref.dw, 1e-12, "f64 dw");
      // float32: the loop itself (conv2d may send float32 to oneDNN)
      const Tensor b32 = in.b.defined() ? in.b.to(DType::F32) : Tensor();
      const Result r32 = direct(c, x.to(DType::F32), w.to(DType::F32), b32, gy.to(DType::F32));
      expect_close(r32.y, ref.y, kTorchTol, "f32 y");
      expect_close(r32.dx, ref.dx, kTorchTol, "f32 dx");
      expect_close(r32.dw, ref.dw, kTorchTol, "f32 dw");
    }
  }
}

TEST(Depthwise, GradcheckFloat64) {
  for (size_t i : {size_t{1}, size_t{4}, size_t{5}}) {  // stride 2 + bias, multiplier 3 asymmetric, dilation
    const DwCase& c = cases()[i];
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(c.name) + " " + layout_name(layout));
      const Inputs in = inputs_for(c, 20);
      std::vector<Tensor> inputs = {in.x.to_layout(layout), in.w};
      if (c.bias) inputs.push_back(in.b);
      const Conv2dOptions o = c.options();
      expect_gradcheck(
          [&](const std::vector<Variable>& v) { return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Variable(), o); },
          inputs, std::vector<bool>(inputs.size(), true));
    }
  }
}

TEST(Depthwise, GradContract) {
  for (size_t i : {size_t{0}, size_t{3}}) {
    const DwCase& c = cases()[i];
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(c.name) + " " + layout_name(layout));
      const Inputs in = inputs_for(c, 30);
      const Tensor x = in.x.to_layout(layout), gy = in.gy.to_layout(layout);
      const Conv2dOptions o = c.options();
      expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_data(gy, in.w, c.x, g, o, acc); }, x,
                           "depthwise dx");
      // a fresh weight gradient takes x's layout (as conv2d's other paths); (K, 1, R, S) is the same memory in both
      expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_weight(gy, x, c.w, g, o, acc); },
                           in.w.to_layout(layout), "depthwise dw");
    }
  }
}

TEST(Depthwise, MatchesPyTorch) {
  const auto& f = fixture("conv2d");
  for (const char* name : {"dw_s1", "dw_s2", "dw_5x5_s2", "dw_mult2", "dw_dil_asym", "depthwise_asym"}) {
    const std::string p = std::string(name) + ".";
    std::vector<double> v = f.at(p + "opts").to_doubles();
    DwCase c{name, f.at(p + "x").shape(), f.at(p + "w").shape(), int(v[0]), int(v[1]), int(v[2]), int(v[3]),
             int(v[4]), int(v[5]), f.has(p + "b")};
    for (DType dt : {DType::F32, DType::F64}) {
      for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
        SCOPED_TRACE(p + dtype_name(dt) + " " + layout_name(layout));
        const Tensor b = c.bias ? f.at(p + "b").to(dt) : Tensor();
        const Result r = direct(c, f.at(p + "x").to(Device::CPU, dt, layout), f.at(p + "w").to(dt), b,
                                f.at(p + "gy").to(Device::CPU, dt, layout));
        expect_close(r.y, f.at(p + "y"), kTorchTol, "y");
        expect_close(r.dx, f.at(p + "gx"), kTorchTol, "dx");
        expect_close(r.dw, f.at(p + "gw"), kTorchTol, "dw");
      }
    }
  }
}

// The same bits for 1, 2 and 3 threads (disjoint outputs; the weight gradient's blocks depend on the shape only).
TEST(Depthwise, SameBitsForAnyThreadCount) {
  const int saved = num_threads();
  const std::vector<DwCase> big = {{"big_s1", {3, 24, 30, 29}, {24, 1, 3, 3}, 1, 1, 1, 1, 1, 1, true},
                                   {"big_s2_mult2", {2, 12, 33, 31}, {24, 1, 3, 3}, 2, 2, 1, 1, 1, 1, false}};
  for (const DwCase& c : big) {
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(c.name) + " " + layout_name(layout));
      const Inputs in = inputs_for(c, 40, DType::F32);
      const Tensor x = in.x.to_layout(layout), gy = in.gy.to_layout(layout);
      std::vector<std::vector<double>> first;
      for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        const Result r = direct(c, x, in.w, in.b, gy);
        std::vector<std::vector<double>> now = {r.y.to_doubles(), r.dx.to_doubles(), r.dw.to_doubles()};
        if (first.empty()) first = now;
        for (size_t i = 0; i < 3; ++i) EXPECT_EQ(now[i], first[i]) << "output " << i << " with " << threads << " threads";
      }
    }
  }
  set_num_threads(saved);
}

TEST(Depthwise, EmptyBatch) {
  const DwCase& c = cases()[0];
  const Conv2dOptions o = c.options();
  const Tensor x = Tensor::zeros({0, 5, 9, 8}, DType::F64), w = Tensor::randn(c.w, 1, DType::F64);
  EXPECT_EQ(conv2d_forward(x, w, Tensor(), o).shape(), (Shape{0, 5, 9, 8}));
  Tensor dw;
  conv2d_backward_weight(Tensor::zeros({0, 5, 9, 8}, DType::F64), x, c.w, dw, o, false);
  for (double v : dw.to_doubles()) EXPECT_EQ(v, 0.0);
}

// cuDNN's depthwise convolution against the direct CPU loop, MobileNet-sized channels, both layouts.
TEST(DepthwiseCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const std::vector<DwCase> cs = {{"mbv2_s1", {2, 32, 14, 14}, {32, 1, 3, 3}, 1, 1, 1, 1, 1, 1, true},
                                  {"mbv2_s2", {2, 64, 15, 15}, {64, 1, 3, 3}, 2, 2, 1, 1, 1, 1, false},
                                  {"mult2_5x5", {1, 8, 12, 11}, {16, 1, 5, 5}, 2, 2, 2, 2, 1, 1, true}};
  for (const DwCase& c : cs) {
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(c.name) + " " + layout_name(layout));
      const Inputs in = inputs_for(c, 50, DType::F32);
      const Result ref = direct(c, in.x, in.w, in.b, in.gy);
      const Tensor xg = in.x.to(Device::CUDA, DType::F32, layout), wg = in.w.to(Device::CUDA, DType::F32, layout);
      const Tensor gyg = in.gy.to(Device::CUDA, DType::F32, layout);
      const Tensor bg = in.b.defined() ? in.b.to(Device::CUDA) : Tensor();
      const Conv2dOptions o = c.options();
      expect_close(conv2d_forward(xg, wg, bg, o), ref.y, kCudaTol, "cuda y");
      Tensor dx, dw;
      conv2d_backward_data(gyg, wg, c.x, dx, o, false);
      conv2d_backward_weight(gyg, xg, c.w, dw, o, false);
      expect_close(dx, ref.dx, kCudaTol, "cuda dx");
      expect_close(dw, ref.dw, kCudaTol, "cuda dw");
    }
  }
}

// ---- benchmark (run by hand: --gtest_also_run_disabled_tests --gtest_filter='*DepthwiseVsOneDnn*') ----
// MobileNet V2's depthwise layers at batch 16, 224 px, float32 NHWC (the CPU float32 model layout) and NCHW:
// median ms of forward, data gradient and weight gradient, oneDNN against the direct loop.
TEST(DepthwiseBench, DISABLED_DepthwiseVsOneDnn) {
  if (!dnnl_conv::takes(Tensor::zeros({1}))) GTEST_SKIP() << "this build has no oneDNN";
  struct B {
    int64_t c, hw;
    int stride;
  };
  const std::vector<B> layers = {{32, 112, 1},  {96, 112, 2}, {144, 56, 1}, {144, 56, 2}, {192, 28, 1},
                                 {192, 28, 2},  {384, 14, 1}, {576, 14, 1}, {576, 14, 2}, {960, 7, 1}};
  const int64_t n = 16;
  const int reps = 5;
  auto time_ms = [&](const std::function<void()>& fn) {
    fn();  // warm-up (oneDNN primitive creation, page faults)
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  std::printf("threads %d, batch %lld, median of %d\n", num_threads(), static_cast<long long>(n), reps);
  std::printf("%-6s %-4s %-3s %-6s | %9s %9s | %9s %9s | %9s %9s\n", "layout", "C", "HW", "stride", "fwd dnnl",
              "fwd loop", "bwd-d dnnl", "loop", "bwd-w dnnl", "loop");
  for (Layout layout : {Layout::NHWC, Layout::NCHW}) {
    for (const B& l : layers) {
      Conv2dOptions o;
      o.stride_h = o.stride_w = l.stride;
      o.pad_h = o.pad_w = 1;
      o.groups = static_cast<int>(l.c);
      const Shape xs{n, l.c, l.hw, l.hw}, ws{l.c, 1, 3, 3};
      const Tensor x = Tensor::randn(xs, 1, DType::F32, Device::CPU, layout), w = Tensor::randn(ws, 2);
      const Shape ys = conv2d_output_shape(xs, ws, o);
      const Tensor dy = Tensor::randn(ys, 3, DType::F32, Device::CPU, layout);
      Tensor y = Tensor::empty(ys, DType::F32, Device::CPU, layout);
      Tensor dx = Tensor::empty(xs, DType::F32, Device::CPU, layout), dw = Tensor::empty(ws);
      const double f_d = time_ms([&] { dnnl_conv::forward(x, w, Tensor(), y, o); });
      const double f_l = time_ms([&] { depthwise_conv::forward(x, w, Tensor(), y, o); });
      const double d_d = time_ms([&] { dnnl_conv::backward_data(dy, w, dx, o); });
      const double d_l = time_ms([&] { depthwise_conv::backward_data(dy, w, dx, o, false); });
      const double w_d = time_ms([&] { dnnl_conv::backward_weight(dy, x, dw, o); });
      const double w_l = time_ms([&] { depthwise_conv::backward_weight(dy, x, dw, o, false); });
      std::printf("%-6s %-4lld %-3lld %-6d | %9.2f %9.2f | %9.2f %9.2f | %9.2f %9.2f | chosen: %s\n",
                  layout_name(layout), static_cast<long long>(l.c), static_cast<long long>(l.hw), l.stride, f_d, f_l,
                  d_d, d_l, w_d, w_l, depthwise_conv::preferred_over_dnnl(xs, ws, o, layout) ? "loop" : "oneDNN");
    }
  }
}
