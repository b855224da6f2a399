// ReLU, add and flatten: gradient checks, gradient contract, PyTorch parity, CUDA vs CPU.
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
