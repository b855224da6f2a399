// ReLU, ReLU6, add and flatten: gradient checks, gradient contract, PyTorch parity, CUDA vs CPU.
#include <cmath>
#include <limits>
#include <string>

#include "layers/activation.h"
#include "layers/elementwise.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

TEST(Relu, GradcheckFloat64) {
  expect_gradcheck([](const std::vector<Variable>& v) { return relu(v[0]); }, {away_from_zero({2, 3, 4, 4}, 1)},
                   {true});
}

TEST(Relu, GradContract) {
  Tensor x = Tensor::randn({2, 3, 4, 4}, 2, DType::F64);
  Tensor y = relu_forward(x), dy = Tensor::randn(x.shape(), 3, DType::F64);
  expect_grad_contract([&](Tensor& dx, bool acc) { relu_backward(y, dy, dx, acc); }, x, "relu dx");
}

TEST(Relu, MatchesPyTorch) {
  const auto& f = fixture("activation");
  Variable x(f.at("relu.x"), true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = relu(x);
  expect_close(y.value(), f.at("relu.y"), kTorchTol, "relu y");
  tape.backward(y, f.at("relu.gy"));
  expect_close(x.grad(), f.at("relu.gx"), kTorchTol, "relu dx");
}

// The CPU loops are written for vectorization (layers/activation.cpp); they must keep the definition at every
// special value, in the vector body and the remainder alike (37 values: several vectors plus a tail):
// y = x > 0 ? min(x, hi) : 0 (NaN gives 0), and the gradient passes where 0 < y (< hi), assigned or added.
TEST(Relu, SpecialValuesFollowTheDefinitionInEveryLoop) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const std::vector<double> pattern{-inf, -1.0, -0.0, 0.0, 1e-30, 2.0, 6.0, 7.5, inf, nan, 5.999};
  std::vector<double> xs, dys;
  for (int i = 0; i < 37; ++i) {
    xs.push_back(pattern[i % pattern.size()]);
    dys.push_back(0.25 * (i + 1));
  }
  for (DType dt : {DType::F32, DType::F64})
    for (double hi : {0.0, 6.0}) {
      const Tensor x = Tensor::from_values(xs, {37}, dt), dy = Tensor::from_values(dys, {37}, dt);
      const Tensor y = hi > 0 ? relu6_forward(x) : relu_forward(x);
      Tensor dx, acc = Tensor::full({37}, 1.0, dt);
      if (hi > 0) {
        relu6_backward(y, dy, dx, false);
        relu6_backward(y, dy, acc, true);
      } else {
        relu_backward(y, dy, dx, false);
        relu_backward(y, dy, acc, true);
      }
      const std::vector<double> xv = x.to_doubles(), yv = y.to_doubles(), dxv = dx.to_doubles(),
                                accv = acc.to_doubles();
      for (int i = 0; i < 37; ++i) {
        const double v = xv[i];  // as stored in dt
        const double want_y = v > 0 ? (hi > 0 && v > hi ? hi : v) : 0.0;
        const bool pass = want_y > 0 && (hi == 0 || want_y < hi);
        const std::string at = std::string(dtype_name(dt)) + " hi=" + std::to_string(hi) + " x=" + std::to_string(v);
        EXPECT_EQ(yv[i], want_y) << at;
        EXPECT_FALSE(std::signbit(yv[i])) << at << ": -0 must give +0";
        EXPECT_EQ(dxv[i], pass ? dys[i] : 0.0) << at;
        EXPECT_EQ(accv[i], 1.0 + (pass ? dys[i] : 0.0)) << at;
      }
    }
}

namespace {
// Values in [-3, 9) whose distance from both ReLU6 kinks (0 and 6) is at least `margin`.
Tensor away_from_relu6_kinks(const Shape& shape, uint64_t seed, DType dt = DType::F64, double margin = 0.05) {
  std::vector<double> v = Tensor::uniform(shape, -3, 9, seed, DType::F64).to_doubles();
  for (double& e : v)
    for (double kink : {0.0, 6.0})
      if (std::abs(e - kink) < margin) e = kink + (e < kink ? -margin : margin);
  return Tensor::from_values(v, shape, dt);
}
}  // namespace

TEST(Relu6, GradcheckFloat64) {
  expect_gradcheck([](const std::vector<Variable>& v) { return relu6(v[0]); },
                   {away_from_relu6_kinks({2, 3, 4, 4}, 1)}, {true});
}

TEST(Relu6, GradContractAndLayouts) {
  Tensor x = away_from_relu6_kinks({2, 3, 4, 4}, 2);
  Tensor y = relu6_forward(x), dy = Tensor::randn(x.shape(), 3, DType::F64);
  expect_grad_contract([&](Tensor& dx, bool acc) { relu6_backward(y, dy, dx, acc); }, x, "relu6 dx");
  // NHWC in, NHWC out, the same values.
  Tensor dx, dxh;
  relu6_backward(y, dy, dx, false);
  const Tensor yh = relu6_forward(x.to_layout(Layout::NHWC));
  EXPECT_EQ(yh.layout(), Layout::NHWC);
  relu6_backward(yh, dy.to_layout(Layout::NHWC), dxh, false);
  EXPECT_EQ(dxh.layout(), Layout::NHWC);
  EXPECT_EQ(yh.to_doubles(), y.to_doubles());
  EXPECT_EQ(dxh.to_doubles(), dx.to_doubles());
  // Exactly at the kinks the gradient is 0 (hardtanh's backward); just inside it passes through.
  const Tensor k = Tensor::from_values({-1, 0, 1e-3, 3, 6 - 1e-3, 6, 7}, {7}, DType::F64);
  Tensor gk;
  relu6_backward(relu6_forward(k), Tensor::full({7}, 2.0, DType::F64), gk, false);
  EXPECT_EQ(relu6_forward(k).to_doubles(), (std::vector<double>{0, 0, 1e-3, 3, 6 - 1e-3, 6, 6}));
  EXPECT_EQ(gk.to_doubles(), (std::vector<double>{0, 0, 2, 2, 2, 0, 0}));
  EXPECT_THROW(relu6_backward(y, dy.to_layout(Layout::NHWC), dx, false), ShapeError);
}

TEST(Relu6, MatchesPyTorch) {
  const auto& f = fixture("activation");
  for (DType dt : {DType::F32, DType::F64}) {
    Variable x(f.at("relu6.x").to(dt), true);
    Tape tape;
    TapeScope scope(tape);
    Variable y = relu6(x);
    expect_close(y.value(), f.at("relu6.y"), kTorchTol, "relu6 y");
    tape.backward(y, f.at("relu6.gy").to(dt));
    expect_close(x.grad(), f.at("relu6.gx"), kTorchTol, "relu6 dx");
  }
}

TEST(Add, GradcheckAndPyTorch) {
  expect_gradcheck([](const std::vector<Variable>& v) { return add(v[0], v[1]); },
                   {Tensor::randn({3, 4}, 1, DType::F64), Tensor::randn({3, 4}, 2, DType::F64)}, {true, true});
  const auto& f = fixture("activation");
  Variable a(f.at("add.a"), true), b(f.at("add.b"), true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = add(a, b);
  expect_close(y.value(), f.at("add.y"), kTorchTol, "add y");
  tape.backward(y, f.at("add.gy"));
  expect_close(a.grad(), f.at("add.ga"), kTorchTol, "add da");
  expect_close(b.grad(), f.at("add.gb"), kTorchTol, "add db");
}

// a + alpha * b (the weighted sum of a main and an auxiliary loss).
TEST(Add, ScaledGradcheck) {
  expect_gradcheck([](const std::vector<Variable>& v) { return add(v[0], v[1], 0.4); },
                   {Tensor::randn({3, 4}, 1, DType::F64), Tensor::randn({3, 4}, 2, DType::F64)}, {true, true});
  Variable a(Tensor::from_values({1, 2}, {2}), true), b(Tensor::from_values({10, 20}, {2}), true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = add(a, b, 0.3);
  expect_close(y.value(), Tensor::from_values({4, 8}, {2}), 1e-6, "a + 0.3 b");
  tape.backward(y, Tensor::from_values({1, -1}, {2}));
  expect_close(b.grad(), Tensor::from_values({0.3, -0.3}, {2}), 1e-6, "db = 0.3 dy");
}

TEST(Add, ShapeMismatchNamesBothShapes) {
  try {
    add_forward(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}));
    FAIL() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 2]"), std::string::npos) << e.what();
  }
}

TEST(Flatten, GradcheckNCHW) {
  expect_gradcheck([](const std::vector<Variable>& v) { return relu(flatten(v[0])); },
                   {away_from_zero({2, 3, 2, 2}, 4)}, {true});
}

TEST(ReluCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor x = Tensor::randn({2, 5, 3, 3}, 5), dy = Tensor::randn({2, 5, 3, 3}, 6);
      Tensor y_cpu = relu_forward(x), dx_cpu;
      relu_backward(y_cpu, dy, dx_cpu, false);
      Tensor xg = x.to(Device::CUDA, dt, layout), dyg = dy.to(Device::CUDA, dt, layout);
      Tensor y_gpu = relu_forward(xg), dx_gpu;
      relu_backward(y_gpu, dyg, dx_gpu, false);
      const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
      expect_close(y_gpu, y_cpu, tol, "relu cuda y");
      expect_close(dx_gpu, dx_cpu, tol, "relu cuda dx");
      expect_grad_contract([&](Tensor& g, bool acc) { relu_backward(y_gpu, dyg, g, acc); }, xg, "relu cuda dx");
    }
  }
}

TEST(Relu6Cuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
      // Kinks kept 0.1 away, so that rounding to bfloat16 never moves a value across one.
      Tensor x = away_from_relu6_kinks({2, 5, 3, 3}, 5, DType::F32, 0.1), dy = Tensor::randn({2, 5, 3, 3}, 6);
      if (dt == DType::BF16 || dt == DType::F16) x = x.to(dt).to(DType::F32), dy = dy.to(dt).to(DType::F32);
      Tensor y_cpu = relu6_forward(x), dx_cpu;
      relu6_backward(y_cpu, dy, dx_cpu, false);
      Tensor xg = x.to(Device::CUDA, dt, layout), dyg = dy.to(Device::CUDA, dt, layout);
      Tensor y_gpu = relu6_forward(xg), dx_gpu;
      relu6_backward(y_gpu, dyg, dx_gpu, false);
      const double tol = dt == DType::F32 || dt == DType::F64 ? kCudaTol : kBf16Tol;
      expect_close(y_gpu, y_cpu, tol, "relu6 cuda y");
      expect_close(dx_gpu, dx_cpu, tol, "relu6 cuda dx");
      expect_grad_contract([&](Tensor& g, bool acc) { relu6_backward(y_gpu, dyg, g, acc); }, xg, "relu6 cuda dx");
    }
  }
}

TEST(AddCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  Tensor a = Tensor::randn({4, 7}, 1), b = Tensor::randn({4, 7}, 2);
  expect_close(add_forward(a.to(Device::CUDA), b.to(Device::CUDA)), add_forward(a, b), kCudaTol, "add cuda");
}

TEST(Cast, GradientReturnsInTheInputDtype) {
  Parameter p(Tensor::from_values({1.5, -2.25}, {2}), "p");
  Variable y = cast(p, DType::F64);
  EXPECT_EQ(y.value().dtype(), DType::F64);
  backward(relu(y));
  EXPECT_EQ(p.grad().dtype(), DType::F32);
  EXPECT_EQ(p.grad().to_doubles(), (std::vector<double>{1, 0}));
  Variable same = cast(p, DType::F32);
  EXPECT_EQ(same.node(), p.node());  // no-op cast records nothing
}
