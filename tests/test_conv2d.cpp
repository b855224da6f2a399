// conv2d: float64 gradient checks, gradient contract, PyTorch parity, frozen-input behaviour, bad arguments,
// and CUDA (cuDNN) vs CPU.
#include <cmath>

#include "layers/conv2d.h"
#include "layers/cudnn_rules.h"
#include "layers/module.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

Conv2dOptions opts(int stride, int pad, int dilation = 1, int groups = 1) {
  Conv2dOptions o;
  o.stride_h = o.stride_w = stride;
  o.pad_h = o.pad_w = pad;
  o.dilation_h = o.dilation_w = dilation;
  o.groups = groups;
  return o;
}

// Gradcheck of x, w and (when has_bias) bias for one configuration.
void gradcheck_config(const Shape& xs, const Shape& ws, bool has_bias, const Conv2dOptions& o, uint64_t seed) {
  std::vector<Tensor> inputs = {Tensor::randn(xs, seed, DType::F64), Tensor::randn(ws, seed + 1, DType::F64)};
  std::vector<bool> wrt = {true, true};
  if (has_bias) {
    inputs.push_back(Tensor::randn({ws[0]}, seed + 2, DType::F64));
    wrt.push_back(true);
  }
  expect_gradcheck(
      [&](const std::vector<Variable>& v) { return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Variable(), o); },
      inputs, wrt);
}

// A PyTorch fixture configuration: options stored as [sh, sw, ph, pw, dh, dw, groups].
struct FixtureConfig {
  Tensor x, w, b, gy;
  Conv2dOptions o;
};
FixtureConfig load_config(const std::string& name) {
  const auto& f = fixture("conv2d");
  FixtureConfig c;
  c.x = f.at(name + ".x");
  c.w = f.at(name + ".w");
  c.gy = f.at(name + ".gy");
  if (f.has(name + ".b")) c.b = f.at(name + ".b");
  std::vector<double> v = f.at(name + ".opts").to_doubles();
  c.o.stride_h = (int)v[0], c.o.stride_w = (int)v[1], c.o.pad_h = (int)v[2], c.o.pad_w = (int)v[3];
  c.o.dilation_h = (int)v[4], c.o.dilation_w = (int)v[5], c.o.groups = (int)v[6];
  return c;
}
const char* kConfigs[] = {"basic",     "stride2",   "dil2_groups2", "pointwise_s2", "stem7x7",
                          "depthwise_asym", "incep_1x7", "incep_7x1", "incep_1x3", "incep_3x1",
                          "dw_s1",     "dw_s2",     "dw_5x5_s2",    "dw_mult2",     "dw_dil_asym"};

void expect_shape_error_naming(const std::function<void()>& fn, const std::string& a, const std::string& b) {
  try {
    fn();
    ADD_FAILURE() << "no ShapeError thrown";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find(a), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(b), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Conv2d, OutputShapeFollowsPyTorch) {
  // floor((H + 2p - d(R-1) - 1) / s) + 1
  EXPECT_EQ(conv2d_output_shape({2, 3, 224, 224}, {64, 3, 7, 7}, opts(2, 3)), (Shape{2, 64, 112, 112}));
  EXPECT_EQ(conv2d_output_shape({1, 4, 8, 7}, {6, 2, 3, 3}, opts(2, 1, 2, 2)), (Shape{1, 6, 3, 3}));
  EXPECT_EQ(conv2d_output_shape({1, 8, 7, 7}, {4, 8, 1, 1}, opts(2, 0)), (Shape{1, 4, 4, 4}));
  Conv2dOptions o;
  o.stride_h = 2, o.pad_w = 2, o.dilation_w = 3;
  EXPECT_EQ(conv2d_output_shape({1, 1, 9, 9}, {1, 1, 2, 3}, o), (Shape{1, 1, 4, 7}));
}

TEST(Conv2d, GradcheckFloat64) {
  gradcheck_config({2, 3, 5, 5}, {4, 3, 3, 3}, true, opts(2, 1), 10);        // stride 2, padding
  gradcheck_config({1, 4, 6, 5}, {4, 2, 3, 3}, true, opts(1, 1, 2, 2), 20);  // dilation 2, groups 2
  gradcheck_config({2, 3, 4, 4}, {5, 3, 1, 1}, false, opts(1, 0), 30);       // 1x1, no bias
}

TEST(Conv2d, GradcheckFloat64StemAndAsymmetric) {
  gradcheck_config({1, 2, 8, 8}, {3, 2, 7, 7}, true, opts(2, 3), 40);  // ResNet stem: 7x7, stride 2, pad 3
  Conv2dOptions o;
  o.stride_h = 2, o.pad_w = 1, o.dilation_w = 2, o.groups = 3;  // depthwise, asymmetric
  gradcheck_config({1, 3, 6, 5}, {3, 1, 3, 2}, true, o, 50);
}

TEST(Conv2d, GradcheckFloat64Rectangular) {
  // Inception v3's 1x7 / 7x1 (padding (0, 3) / (3, 0)) and 1x3 / 3x1.
  Conv2dOptions o;
  o.pad_w = 3;
  gradcheck_config({1, 2, 5, 6}, {3, 2, 1, 7}, true, o, 60);
  o.pad_w = 0, o.pad_h = 3;
  gradcheck_config({1, 2, 6, 5}, {3, 2, 7, 1}, false, o, 70);
  o.pad_h = 1, o.stride_w = 2;
  gradcheck_config({2, 2, 4, 5}, {2, 2, 3, 1}, true, o, 80);
}

TEST(Conv2d, GradContract) {
  const Conv2dOptions o = opts(1, 1, 1, 2);
  Tensor x = Tensor::randn({2, 4, 5, 5}, 1, DType::F64), w = Tensor::randn({6, 2, 3, 3}, 2, DType::F64);
  Tensor dy = Tensor::randn({2, 6, 5, 5}, 3, DType::F64);
  expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_data(dy, w, x.shape(), g, o, acc); }, x,
                       "conv2d dx");
  expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_weight(dy, x, g, o, acc); }, w, "conv2d dw");
  expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_bias(dy, g, acc); }, Tensor::zeros({6}, DType::F64),
                       "conv2d db");
  // Stride 2 (kernel size not inferable from the shapes): the overload that takes the weight shape.
  const Conv2dOptions o2 = opts(2, 1);
  Tensor w2 = Tensor::randn({3, 4, 3, 3}, 4, DType::F32), x2 = Tensor::randn({2, 4, 6, 6}, 5, DType::F32);
  Tensor dy2 = Tensor::randn({2, 3, 3, 3}, 6, DType::F32);
  expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_weight(dy2, x2, w2.shape(), g, o2, acc); }, w2,
                       "conv2d dw stride 2");
  expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_data(dy2, w2, x2.shape(), g, o2, acc); }, x2,
                       "conv2d dx stride 2");
}

TEST(Conv2d, MatchesPyTorch) {
  const auto& f = fixture("conv2d");
  for (const char* name : kConfigs) {
    SCOPED_TRACE(name);
    FixtureConfig c = load_config(name);
    Variable x(c.x, true), w(c.w, true), b = c.b.defined() ? Variable(c.b, true) : Variable();
    Tape tape;
    TapeScope scope(tape);
    Variable y = conv2d(x, w, b, c.o);
    const std::string p = std::string(name) + ".";
    expect_close(y.value(), f.at(p + "y"), kTorchTol, p + "y");
    tape.backward(y, c.gy);
    expect_close(x.grad(), f.at(p + "gx"), kTorchTol, p + "gx");
    expect_close(w.grad(), f.at(p + "gw"), kTorchTol, p + "gw");
    if (c.b.defined()) expect_close(b.grad(), f.at(p + "gb"), kTorchTol, p + "gb");
  }
}

TEST(Conv2d, CpuNhwcMatchesNchw) {
  FixtureConfig c = load_config("dil2_groups2");
  Tensor y = conv2d_forward(c.x, c.w, c.b, c.o);
  Tensor xh = c.x.to_layout(Layout::NHWC), gyh = c.gy.to_layout(Layout::NHWC);
  Tensor yh = conv2d_forward(xh, c.w, c.b, c.o);
  EXPECT_EQ(yh.layout(), Layout::NHWC);
  expect_close(yh, y, 1e-6, "nhwc y");
  Tensor dx, dxh, dw, dwh;
  conv2d_backward_data(c.gy, c.w, c.x.shape(), dx, c.o, false);
  conv2d_backward_data(gyh, c.w.to_layout(Layout::NHWC), c.x.shape(), dxh, c.o, false);
  EXPECT_EQ(dxh.layout(), Layout::NHWC);
  expect_close(dxh, dx, 1e-6, "nhwc dx");
  conv2d_backward_weight(c.gy, c.x, c.w.shape(), dw, c.o, false);
  dwh = Tensor::zeros(c.w.shape(), DType::F32, Device::CPU, Layout::NHWC);  // accumulate into an NHWC gradient
  conv2d_backward_weight(gyh, xh, c.w.shape(), dwh, c.o, true);
  EXPECT_EQ(dwh.layout(), Layout::NHWC);
  expect_close(dwh, dw, 1e-6, "nhwc dw");
}

// The float32 CPU path (oneDNN when built with it) against the float64 reference (im2col + GEMM) on the same
// values, in both layouts, for every fixture configuration (groups, dilation, stride, asymmetric kernels and
// padding, bias), and the accumulate half of the gradient contract. The bound is the float32-vs-PyTorch one.
TEST(Conv2d, Float32CpuPathMatchesFloat64Reference) {
  auto twice = [](const Tensor& t) { return t.clone().add_(t); };
  for (const char* name : kConfigs) {
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      SCOPED_TRACE(std::string(name) + " " + layout_name(layout));
      FixtureConfig c = load_config(name);
      const Tensor x = c.x.to_layout(layout), w = c.w.to_layout(layout), gy = c.gy.to_layout(layout);
      const Tensor x64 = c.x.to(DType::F64), w64 = c.w.to(DType::F64), gy64 = c.gy.to(DType::F64);
      const Tensor b64 = c.b.defined() ? c.b.to(DType::F64) : Tensor();
      Tensor y = conv2d_forward(x, w, c.b, c.o);
      EXPECT_EQ(y.layout(), layout);
      expect_close(y, conv2d_forward(x64, w64, b64, c.o), kTorchTol, "y");
      Tensor dx, dx64, dw, dw64, db, db64;
      conv2d_backward_data(gy, w, c.x.shape(), dx, c.o, false);
      conv2d_backward_data(gy64, w64, c.x.shape(), dx64, c.o, false);
      EXPECT_EQ(dx.layout(), layout);
      expect_close(dx, dx64, kTorchTol, "dx");
      conv2d_backward_weight(gy, x, c.w.shape(), dw, c.o, false);
      conv2d_backward_weight(gy64, x64, c.w.shape(), dw64, c.o, false);
      expect_close(dw, dw64, kTorchTol, "dw");
      conv2d_backward_bias(gy, db, false);
      conv2d_backward_bias(gy64, db64, false);
      expect_close(db, db64, kTorchTol, "db");
      // accumulate: adds into what is there
      conv2d_backward_data(gy, w, c.x.shape(), dx, c.o, true);
      expect_close(dx, twice(dx64), kTorchTol, "dx accumulated");
      conv2d_backward_weight(gy, x, c.w.shape(), dw, c.o, true);
      expect_close(dw, twice(dw64), kTorchTol, "dw accumulated");
    }
  }
}

TEST(Conv2d, FrozenWeightRecordsAndSavesOnlyWhatIsNeeded) {
  Tensor xt = Tensor::randn({2, 3, 6, 6}, 1), wt = Tensor::randn({4, 3, 3, 3}, 2), bt = Tensor::randn({4}, 3);
  const Conv2dOptions o = opts(1, 1);
  {  // Nothing needs a gradient: nothing is recorded.
    Tape tape;
    TapeScope scope(tape);
    Variable y = conv2d(Variable(xt, false), Parameter(wt, "w", false), Parameter(bt, "b", false), o);
    EXPECT_EQ(tape.size(), 0u);
    EXPECT_FALSE(y.requires_grad());
  }
  {  // Frozen w and bias, x needs a gradient: only w is saved, only dx is computed.
    Tape tape;
    TapeScope scope(tape);
    Variable x(xt, true);
    Parameter w(wt, "w", false), b(bt, "b", false);
    Variable y = conv2d(x, w, b, o);
    ASSERT_EQ(tape.size(), 1u);
    EXPECT_EQ(tape.entries()[0].op, "conv2d");
    EXPECT_EQ(tape.entries()[0].saved_bytes, wt.nbytes());
    tape.backward(y, Tensor::randn(y.shape(), 4));
    ASSERT_EQ(tape.last_backward().size(), 1u);
    EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{true, false, false}));
    EXPECT_TRUE(x.grad().defined());
    EXPECT_FALSE(w.grad().defined());
    EXPECT_FALSE(b.grad().defined());
  }
  {  // Trainable w and bias, x needs none: only x is saved, dx is not computed.
    Tape tape;
    TapeScope scope(tape);
    Variable x(xt, false);
    Parameter w(wt, "w", true), b(bt, "b", true);
    Variable y = conv2d(x, w, b, o);
    ASSERT_EQ(tape.size(), 1u);
    EXPECT_EQ(tape.entries()[0].saved_bytes, xt.nbytes());
    tape.backward(y, Tensor::randn(y.shape(), 4));
    EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{false, true, true}));
    EXPECT_TRUE(w.grad().defined());
    EXPECT_TRUE(b.grad().defined());
  }
  {  // No bias Variable at all.
    Tape tape;
    TapeScope scope(tape);
    Parameter w(wt, "w", true);
    Variable y = conv2d(Variable(xt, false), w, Variable(), o);
    tape.backward(y, Tensor::randn(y.shape(), 4));
    EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{false, true, false}));
    EXPECT_EQ(w.grad().shape(), wt.shape());
  }
}

TEST(Conv2d, BadArgumentsThrow) {
  const Tensor x = Tensor::zeros({2, 3, 8, 8});
  // Channel mismatch names both shapes.
  expect_shape_error_naming([&] { conv2d_forward(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), {}); }, "[2, 3, 8, 8]",
                            "[4, 2, 3, 3]");
  // Groups that do not divide the channels.
  expect_shape_error_naming([&] { conv2d_forward(x, Tensor::zeros({4, 1, 3, 3}), Tensor(), opts(1, 0, 1, 2)); },
                            "[2, 3, 8, 8]", "[4, 1, 3, 3]");
  // Channels per group mismatch with groups.
  expect_shape_error_naming(
      [&] { conv2d_forward(Tensor::zeros({1, 4, 8, 8}), Tensor::zeros({4, 4, 3, 3}), Tensor(), opts(1, 0, 1, 2)); },
      "[1, 4, 8, 8]", "[4, 4, 3, 3]");
  // Kernel larger than the padded input.
  expect_shape_error_naming([&] { conv2d_forward(x, Tensor::zeros({4, 3, 9, 9}), Tensor(), {}); }, "[2, 3, 8, 8]",
                            "[4, 3, 9, 9]");
  // Wrong ranks and bias.
  EXPECT_THROW(conv2d_forward(Tensor::zeros({3, 8, 8}), Tensor::zeros({4, 3, 3, 3}), Tensor(), {}), ShapeError);
  EXPECT_THROW(conv2d_forward(x, Tensor::zeros({4, 3, 3, 3}), Tensor::zeros({5}), {}), ShapeError);
  // dy that does not match the output shape.
  Tensor dx;
  expect_shape_error_naming(
      [&] { conv2d_backward_data(Tensor::zeros({2, 4, 7, 7}), Tensor::zeros({4, 3, 3, 3}), x.shape(), dx, {}, false); },
      "[2, 4, 7, 7]", "[2, 4, 6, 6]");
  // Dtype mismatch, bad options, ambiguous kernel size.
  EXPECT_THROW(conv2d_forward(x, Tensor::zeros({4, 3, 3, 3}, DType::F64), Tensor(), {}), DTypeError);
  EXPECT_THROW(conv2d_forward(x, Tensor::zeros({4, 3, 3, 3}), Tensor(), opts(0, 0)), ValueError);
  Tensor dw;
  EXPECT_THROW(conv2d_backward_weight(Tensor::zeros({2, 4, 4, 4}), x, dw, opts(2, 0), false), ValueError);
  EXPECT_THROW(conv2d_backward_bias(Tensor::zeros({2, 4, 4, 4}), dw = Tensor::zeros({3}), true), ShapeError);
}

// nn::Conv2d with rectangular kernels (Inception v3) loaded with the fixture's weights: forward and backward
// against PyTorch in the float32 layout models use on the CPU (NHWC with oneDNN), in NCHW float32, and in
// float64 (the reference path).
TEST(Conv2dModule, RectangularKernelsMatchPyTorch) {
  const auto& f = fixture("conv2d");
  struct Case {
    const char* name;
    nn::Size2 kernel, padding;
  };
  for (const Case& k : {Case{"incep_1x7", {1, 7}, {0, 3}}, Case{"incep_7x1", {7, 1}, {3, 0}},
                        Case{"incep_1x3", {1, 3}, {0, 1}}, Case{"incep_3x1", {3, 1}, {1, 0}}}) {
    const FixtureConfig c = load_config(k.name);
    const std::string p = std::string(k.name) + ".";
    nn::Generator gen(1);
    nn::Conv2d conv(c.x.size(1), c.w.size(0), k.kernel, 1, k.padding, c.b.defined(), gen);
    ASSERT_EQ(conv.weight.shape(), c.w.shape()) << k.name;
    EXPECT_EQ(conv.options.pad_h, c.o.pad_h);
    EXPECT_EQ(conv.options.pad_w, c.o.pad_w);
    for (auto [dt, layout] : {std::pair{DType::F32, conv2d_cpu_float32_layout()}, std::pair{DType::F32, Layout::NCHW},
                              std::pair{DType::F64, Layout::NCHW}}) {
      SCOPED_TRACE(p + dtype_name(dt) + " " + layout_name(layout));
      conv.weight.mutable_value() = c.w.to(Device::CPU, dt, layout);
      if (c.b.defined()) conv.bias.mutable_value() = c.b.to(dt);
      conv.weight.zero_grad();
      conv.bias.zero_grad();
      Variable x(c.x.to(Device::CPU, dt, layout), true);
      Tape tape;
      TapeScope scope(tape);
      Variable y = conv(x);
      EXPECT_EQ(y.value().layout(), layout);
      expect_close(y.value(), f.at(p + "y"), kTorchTol, "y");
      tape.backward(y, c.gy.to(Device::CPU, dt, layout));
      expect_close(x.grad(), f.at(p + "gx"), kTorchTol, "gx");
      expect_close(conv.weight.grad(), f.at(p + "gw"), kTorchTol, "gw");
      if (c.b.defined()) expect_close(conv.bias.grad(), f.at(p + "gb"), kTorchTol, "gb");
    }
  }
}

// The module's default initialisation follows nn.Conv2d's rule, fan_in = C/groups * kh * kw: the bounds PyTorch's
// own helpers give (fixture), every value inside them, the largest close to them.
TEST(Conv2dModule, DefaultInitFollowsPyTorchRule) {
  const auto& f = fixture("conv2d");
  for (const char* name : {"square3", "incep_1x7", "incep_7x1", "depthwise", "grouped_1x3"}) {
    SCOPED_TRACE(name);
    const std::string p = std::string("init.") + name + ".";
    const std::vector<double> cfg = f.at(p + "config").to_doubles(), bounds = f.at(p + "bounds").to_doubles();
    const std::vector<double> torch_max = f.at(p + "max").to_doubles();
    const int64_t cin = int64_t(cfg[0]), cout = int64_t(cfg[1]);
    const int kh = int(cfg[2]), kw = int(cfg[3]), groups = int(cfg[4]);
    nn::Generator gen(7);
    nn::Conv2d conv(cin, cout, nn::Size2{kh, kw}, 1, 0, true, gen, groups);
    EXPECT_EQ(conv.weight.shape(), (Shape{cout, cin / groups, kh, kw}));
    EXPECT_NEAR(bounds[0], 1 / std::sqrt(double(cin / groups * kh * kw)), 1e-12);  // the rule stated in module.h
    auto max_abs = [](const Tensor& t) {
      double m = 0;
      for (double v : t.to_doubles()) m = std::max(m, std::abs(v));
      return m;
    };
    for (int i = 0; i < 2; ++i) {
      const Tensor& t = i == 0 ? conv.weight.value() : conv.bias.value();
      const double bound = bounds[size_t(i)], m = max_abs(t);
      EXPECT_LE(torch_max[size_t(i)], bound * (1 + 1e-6));
      EXPECT_LE(m, bound * (1 + 1e-6)) << (i == 0 ? "weight" : "bias");
      // the largest of n uniform draws falls short of the bound by about bound / n
      EXPECT_GE(m, bound * (1 - 20.0 / double(t.numel()))) << (i == 0 ? "weight" : "bias");
    }
  }
  // An int means a square size, as in PyTorch.
  nn::Generator gen(1);
  nn::Conv2d sq(4, 4, 3, 2, 1, false, gen), rect(4, 4, nn::Size2{3, 3}, nn::Size2{2, 2}, nn::Size2{1, 1}, false, gen);
  EXPECT_EQ(sq.weight.shape(), rect.weight.shape());
  EXPECT_EQ(sq.options.stride_w, rect.options.stride_w);
  EXPECT_EQ(sq.options.pad_h, rect.options.pad_h);
  EXPECT_THROW(nn::Conv2d(4, 4, nn::Size2{0, 3}, 1, 0, false, gen), ValueError);
}

// ---- CUDA (cuDNN) vs CPU ----

namespace {
struct CpuResult {
  Tensor y, dx, dw, db;
};
CpuResult cpu_reference(const FixtureConfig& c) {
  CpuResult r;
  r.y = conv2d_forward(c.x, c.w, c.b, c.o);
  conv2d_backward_data(c.gy, c.w, c.x.shape(), r.dx, c.o, false);
  conv2d_backward_weight(c.gy, c.x, c.w.shape(), r.dw, c.o, false);
  if (c.b.defined()) conv2d_backward_bias(c.gy, r.db, false);
  return r;
}
// Rounds a float32 CPU tensor through `dt` (so a reduced-precision run and the reference see the same inputs).
Tensor rounded(const Tensor& t, DType dt) { return t.defined() ? t.to(dt).to(DType::F32) : t; }
}  // namespace

TEST(Conv2dCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  for (const char* name : kConfigs) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
        SCOPED_TRACE(std::string(name) + " " + dtype_name(dt) + " " + layout_name(layout));
        FixtureConfig c = load_config(name);
        if (dt != DType::F32) c.x = rounded(c.x, dt), c.w = rounded(c.w, dt), c.b = rounded(c.b, dt),
                              c.gy = rounded(c.gy, dt);
        CpuResult ref = cpu_reference(c);
        Tensor xg = c.x.to(Device::CUDA, dt, layout), wg = c.w.to(Device::CUDA, dt, layout);
        Tensor gyg = c.gy.to(Device::CUDA, dt, layout);
        Tensor bg = c.b.defined() ? c.b.to(Device::CUDA, dt, Layout::NCHW) : Tensor();
        const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
        Tensor y = conv2d_forward(xg, wg, bg, c.o);
        EXPECT_EQ(y.layout(), layout);
        expect_close(y, ref.y, tol, "cuda y");
        Tensor dx, dw, db;
        conv2d_backward_data(gyg, wg, c.x.shape(), dx, c.o, false);
        conv2d_backward_weight(gyg, xg, c.w.shape(), dw, c.o, false);
        expect_close(dx, ref.dx, tol, "cuda dx");
        expect_close(dw, ref.dw, tol, "cuda dw");
        if (c.b.defined()) {
          conv2d_backward_bias(gyg, db, false);
          expect_close(db, ref.db, tol, "cuda db");
        }
        expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_data(gyg, wg, c.x.shape(), g, c.o, acc); },
                             xg, "cuda dx");
        expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_weight(gyg, xg, c.w.shape(), g, c.o, acc); },
                             wg, "cuda dw");
        expect_grad_contract([&](Tensor& g, bool acc) { conv2d_backward_bias(gyg, g, acc); },
                             Tensor::zeros({c.w.size(0)}, dt, Device::CUDA), "cuda db");
      }
    }
  }
}

TEST(Conv2dCuda, AutogradMixedLayoutsAndLargeBias) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  // x channels-last with an NCHW weight: the weight gradient comes back in the weight's layout.
  FixtureConfig c = load_config("stem7x7");
  CpuResult ref = cpu_reference(c);
  Variable x(c.x.to(Device::CUDA, DType::F32, Layout::NHWC), true);
  Parameter w(c.w.to(Device::CUDA), "w"), b(c.b.to(Device::CUDA), "b");
  Tape tape;
  TapeScope scope(tape);
  Variable y = conv2d(x, w, b, c.o);
  tape.backward(y, c.gy.to(Device::CUDA, DType::F32, Layout::NHWC));
  EXPECT_EQ(w.grad().layout(), Layout::NCHW);
  EXPECT_EQ(x.grad().layout(), Layout::NHWC);
  expect_close(y.value(), ref.y, kCudaTol, "mixed y");
  expect_close(x.grad(), ref.dx, kCudaTol, "mixed dx");
  expect_close(w.grad(), ref.dw, kCudaTol, "mixed dw");
  expect_close(b.grad(), ref.db, kCudaTol, "mixed db");
  // A bias gradient over many rows (several partial-sum chunks), both layouts.
  Tensor dy = Tensor::randn({3, 70, 37, 41}, 7);
  Tensor db_ref;
  conv2d_backward_bias(dy, db_ref, false);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    Tensor db;
    conv2d_backward_bias(dy.to(Device::CUDA, DType::F32, layout), db, false);
    expect_close(db, db_ref, kCudaTol, std::string("large db ") + layout_name(layout));
  }
}

// ---------------------------------------------------------------- cuDNN rules (host logic, no GPU needed)

TEST(Conv2dCudnnRules, NotSupportedIsTheWholeCategory) {
  using namespace tl::cudnn_rules;
  for (int code : {3000, 3001, 3002, 3003, 3004, 3010, 3014, 3999}) {
    EXPECT_TRUE(not_supported(code)) << code;
    EXPECT_EQ(outcome_of(code), Outcome::NotSupported) << code;
  }
  for (int code : {5000, 5001, 5003}) EXPECT_EQ(outcome_of(code), Outcome::ExecutionFailed) << code;
  EXPECT_EQ(outcome_of(0), Outcome::Ran);
  // Bad parameters and internal errors end the search: the caller throws them.
  for (int code : {1001, 2000, 2002, 2999, 4000, 4001, 4004}) {
    EXPECT_FALSE(not_supported(code)) << code;
    EXPECT_FALSE(outcome_of(code).has_value()) << code;
  }
  EXPECT_EQ(category(3012), 3000);
  EXPECT_EQ(category(5004), 5000);
}

TEST(Conv2dCudnnRules, CandidatesFallThroughInRankOrder) {
  using namespace tl::cudnn_rules;
  // Candidate 0 is not supported, 1 has no workspace, 2 fails to execute, 3 runs: 3 is taken, after 0, 1, 2.
  const std::vector<Outcome> fate{Outcome::NotSupported, Outcome::OutOfMemory, Outcome::ExecutionFailed, Outcome::Ran,
                                  Outcome::Ran};
  std::vector<size_t> tried;
  auto attempt = [&](size_t i) {
    tried.push_back(i);
    return fate[i];
  };
  EXPECT_EQ(run_first_that_works(fate.size(), fate.size(), attempt, "test"), 3u);
  EXPECT_EQ(tried, (std::vector<size_t>{0, 1, 2, 3}));
  // The one that ran last time is tried first; it runs: nothing else is tried.
  tried.clear();
  EXPECT_EQ(run_first_that_works(fate.size(), 4, attempt, "test"), 4u);
  EXPECT_EQ(tried, (std::vector<size_t>{4}));
  // It no longer runs (e.g. out of workspace): the others follow in rank order, without it again.
  tried.clear();
  EXPECT_EQ(run_first_that_works(fate.size(), 1, attempt, "test"), 3u);
  EXPECT_EQ(tried, (std::vector<size_t>{1, 0, 2, 3}));
  // None runs: CudnnError naming the op and each candidate's outcome.
  const std::vector<Outcome> none{Outcome::NotSupported, Outcome::OutOfMemory};
  const std::string err = error_of([&] {
    run_first_that_works(none.size(), none.size(), [&](size_t i) { return none[i]; }, "conv2d forward");
  });
  EXPECT_TRUE(contains(err, "conv2d forward")) << err;
  EXPECT_TRUE(contains(err, "#0 not supported")) << err;
  EXPECT_TRUE(contains(err, "#1 workspace out of memory")) << err;
  EXPECT_THROW(run_first_that_works(0, 0, attempt, "empty"), CudnnError);
  // An attempt that throws ends the search with its error.
  EXPECT_THROW(run_first_that_works(2, 2, [](size_t) -> Outcome { throw CudnnError("bad param"); }, "x"),
               CudnnError);
}

TEST(Conv2dCudnnRules, MathTypesTheDataMayTake) {
  using namespace tl::cudnn_rules;
  // float32, TF32 off: FMA only; tensor-op offers are skipped.
  EXPECT_EQ(conv_math_for(false, true, ConvMath::Default), ConvMath::Fma);
  EXPECT_EQ(conv_math_for(false, true, ConvMath::Fma), ConvMath::Fma);
  EXPECT_FALSE(conv_math_for(false, true, ConvMath::TensorOp));
  EXPECT_FALSE(conv_math_for(false, true, ConvMath::TensorOpAllowConversion));
  // float32 with TF32, or float64: never down-conversion to half precision.
  EXPECT_EQ(conv_math_for(false, false, ConvMath::TensorOp), ConvMath::TensorOp);
  EXPECT_EQ(conv_math_for(false, false, ConvMath::Default), ConvMath::Default);
  EXPECT_FALSE(conv_math_for(false, false, ConvMath::TensorOpAllowConversion));
  // Half-precision data takes what is offered.
  EXPECT_EQ(conv_math_for(true, false, ConvMath::TensorOpAllowConversion), ConvMath::TensorOpAllowConversion);
  EXPECT_EQ(conv_math_for(true, false, ConvMath::TensorOp), ConvMath::TensorOp);
}

TEST(Conv2dCudnnRules, BatchSlicesStayWithin2To31Elements) {
  using namespace tl::cudnn_rules;
  EXPECT_EQ(images_per_call(256, 3 * 224 * 224), 256);  // fits: one call
  const int64_t per_image = 64 * 512 * 512;               // 2^24: 128 images per call
  EXPECT_EQ(images_per_call(300, per_image), 127);        // 127 * 2^24 < 2^31 - 1 < 128 * 2^24
  EXPECT_LE(images_per_call(300, per_image) * per_image, kMaxElements);
  EXPECT_GT((images_per_call(300, per_image) + 1) * per_image, kMaxElements);
  EXPECT_EQ(images_per_call(4, int64_t(1) << 31), 0);     // one image alone is too large: refused
  EXPECT_EQ(images_per_call(0, 10), 0);
}
