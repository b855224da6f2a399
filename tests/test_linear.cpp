// Linear layer: gradient checks, gradient contracts, frozen-aware saving, PyTorch parity, CUDA vs CPU, bad shapes.
#include "layers/linear.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

TEST(Linear, GradcheckFloat64) {
  const Tensor x = Tensor::randn({3, 4}, 1, DType::F64), w = Tensor::randn({5, 4}, 2, DType::F64),
               b = Tensor::randn({5}, 3, DType::F64);
  // All three inputs, then each one alone (the others frozen), then without a bias.
  expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b},
                   {true, true, true});
  expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b},
                   {false, true, false});
  expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1], v[2]); }, {x, w, b},
                   {false, false, true});
  expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1]); }, {x, w}, {true, false});
  expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1]); },
                   {Tensor::randn({1, 6}, 4, DType::F64), Tensor::randn({2, 6}, 5, DType::F64)}, {true, true});
}

TEST(Linear, GradContract) {
  for (DType dt : {DType::F64, DType::F32}) {
    const Tensor x = Tensor::randn({4, 6}, 1, dt), w = Tensor::randn({3, 6}, 2, dt), dy = Tensor::randn({4, 3}, 3, dt);
    expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_data(dy, w, g, acc); }, x, "linear dx");
    expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_weight(dy, x, g, acc); }, w, "linear dw");
    expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_bias(dy, g, acc); }, Tensor::zeros({3}, dt),
                         "linear db");
  }
}

TEST(Linear, FrozenAwareSaving) {
  const Tensor xv = Tensor::randn({4, 6}, 1), wv = Tensor::randn({3, 6}, 2), bv = Tensor::randn({3}, 3);
  struct Case {
    bool x, w, b;
    size_t saved;
  };
  // dx needs w, dw needs x, db needs nothing.
  const Case cases[] = {{false, true, true, xv.nbytes()},  // fine-tuning the head on frozen features
                        {true, false, false, wv.nbytes()},
                        {false, false, true, 0},
                        {true, true, true, xv.nbytes() + wv.nbytes()}};
  for (const Case& c : cases) {
    Tape tape;
    TapeScope scope(tape);
    Variable x(xv, c.x), w(wv, c.w), b(bv, c.b);
    Variable y = linear(x, w, b);
    EXPECT_EQ(tape.saved_bytes(), c.saved) << "x/w/b trainable: " << c.x << c.w << c.b;
    tape.backward(y, Tensor::randn(y.shape(), 4));
    ASSERT_EQ(tape.last_backward().size(), 1u);
    EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{c.x, c.w, c.b}));
    EXPECT_EQ(x.grad().defined(), c.x);
    EXPECT_EQ(w.grad().defined(), c.w);
    EXPECT_EQ(b.grad().defined(), c.b);
  }
  Tape tape;
  TapeScope scope(tape);
  Variable y = linear(Variable(xv), Variable(wv), Variable(bv));  // nothing trains: nothing recorded
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_FALSE(y.requires_grad());
}

TEST(Linear, MatchesPyTorch) {
  const auto& f = fixture("linear");
  for (const std::string name : {"batch1", "small", "nobias", "c1000"}) {
    const std::string p = name + ".";
    const bool has_bias = f.has(p + "b");
    Variable x(f.at(p + "x"), true), w(f.at(p + "w"), true), b = has_bias ? Variable(f.at(p + "b"), true) : Variable();
    Tape tape;
    TapeScope scope(tape);
    Variable y = linear(x, w, b);
    expect_close(y.value(), f.at(p + "y"), kTorchTol, p + "y");
    tape.backward(y, f.at(p + "gy"));
    expect_close(x.grad(), f.at(p + "gx"), kTorchTol, p + "gx");
    expect_close(w.grad(), f.at(p + "gw"), kTorchTol, p + "gw");
    if (has_bias) expect_close(b.grad(), f.at(p + "gb"), kTorchTol, p + "gb");
  }
}

TEST(Linear, BadArgumentsThrow) {
  const Tensor x = Tensor::zeros({2, 3}), w = Tensor::zeros({4, 5});
  std::string msg = error_of([&] { linear_forward(x, w, Tensor()); });
  EXPECT_TRUE(contains(msg, "[2, 3]") && contains(msg, "[4, 5]")) << msg;
  EXPECT_THROW(linear_forward(x, w, Tensor()), ShapeError);
  msg = error_of([&] { linear_forward(x, Tensor::zeros({4, 3}), Tensor::zeros({5})); });
  EXPECT_TRUE(contains(msg, "bias") && contains(msg, "[5]") && contains(msg, "[4, 3]")) << msg;
  EXPECT_THROW(linear_forward(Tensor::zeros({2, 3, 1, 1}), Tensor::zeros({4, 3}), Tensor()), ShapeError);
  EXPECT_THROW(linear_forward(x, Tensor::zeros({4, 3}, DType::F64), Tensor()), DTypeError);
  EXPECT_THROW(linear_forward(x.to(DType::BF16), Tensor::zeros({4, 3}, DType::BF16), Tensor()), DTypeError);
  Tensor dx;
  EXPECT_THROW(linear_backward_data(Tensor::zeros({2, 5}), Tensor::zeros({4, 3}), dx, false), ShapeError);
  Tensor dw = Tensor::zeros({3, 3});
  msg = error_of([&] { linear_backward_weight(Tensor::zeros({2, 4}), x, dw, true); });
  EXPECT_TRUE(contains(msg, "[3, 3]") && contains(msg, "[4, 3]")) << msg;
}

TEST(LinearCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (bool has_bias : {true, false}) {
      // CPU reference on the values the GPU sees (rounded to dt), in float32.
      const Tensor x = Tensor::randn({6, 40}, 1).to(dt).to(DType::F32), w = Tensor::randn({30, 40}, 2).to(dt).to(DType::F32),
                   b = has_bias ? Tensor::randn({30}, 3).to(dt).to(DType::F32) : Tensor(),
                   dy = Tensor::randn({6, 30}, 4).to(dt).to(DType::F32);
      Tensor y = linear_forward(x, w, b), dx, dw, db;
      linear_backward_data(dy, w, dx, false);
      linear_backward_weight(dy, x, dw, false);
      linear_backward_bias(dy, db, false);
      const Tensor xg = x.to(Device::CUDA, dt, Layout::NCHW), wg = w.to(Device::CUDA, dt, Layout::NCHW),
                   bg = has_bias ? b.to(Device::CUDA, dt, Layout::NCHW) : Tensor(),
                   dyg = dy.to(Device::CUDA, dt, Layout::NCHW);
      Tensor yg = linear_forward(xg, wg, bg), dxg, dwg, dbg;
      linear_backward_data(dyg, wg, dxg, false);
      linear_backward_weight(dyg, xg, dwg, false);
      linear_backward_bias(dyg, dbg, false);
      const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
      const std::string what = std::string("linear cuda ") + dtype_name(dt) + (has_bias ? " bias" : "");
      expect_close(yg, y, tol, what + " y");
      expect_close(dxg, dx, tol, what + " dx");
      expect_close(dwg, dw, tol, what + " dw");
      expect_close(dbg, db, tol, what + " db");
      expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_data(dyg, wg, g, acc); }, xg, what + " dx");
      expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_weight(dyg, xg, g, acc); }, wg, what + " dw");
      expect_grad_contract([&](Tensor& g, bool acc) { linear_backward_bias(dyg, g, acc); },
                           Tensor::zeros({30}, dt, Device::CUDA), what + " db");
    }
  }
}

TEST(LinearCuda, AutogradAndLargeBatchMatchCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  // Batch 300 exercises the bias-gradient column reduction over many rows; float64 the COMPUTE_64F path.
  for (DType dt : {DType::F32, DType::F64}) {
    const Tensor xv = Tensor::randn({300, 70}, 1, dt), wv = Tensor::randn({1000, 70}, 2, dt),
                 bv = Tensor::randn({1000}, 3, dt), gy = Tensor::randn({300, 1000}, 4, dt);
    Tensor grads[2][3];
    for (int dev = 0; dev < 2; ++dev) {
      const Device d = dev ? Device::CUDA : Device::CPU;
      Tape tape;
      TapeScope scope(tape);
      Variable x(xv.to(d), true), w(wv.to(d), true), b(bv.to(d), true);
      Variable y = linear(x, w, b);
      tape.backward(y, gy.to(d));
      grads[dev][0] = x.grad();
      grads[dev][1] = w.grad();
      grads[dev][2] = b.grad();
    }
    for (int k = 0; k < 3; ++k) expect_close(grads[1][k], grads[0][k], kCudaTol, "linear cuda autograd grad " + std::to_string(k));
  }
}
