// Dropout (statistics, exact scale, eval identity, mask reuse in backward, determinism, CPU == CUDA mask) and
// concatenation (gradient checks, contract, PyTorch parity via tests/torch_ref/fx_concat.py, NHWC, frozen inputs,
// bad arguments, CUDA vs CPU).
#include <cmath>

#include "kernels/random_hash.h"
#include "layers/concat.h"
#include "layers/dropout.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

// ---------------------------------------------------------------- dropout

TEST(Dropout, StatisticsAndExactScale) {
  const int64_t n = 200000;
  const Tensor x = Tensor::uniform({4, n / 4}, 0.5, 2.0, 1);
  for (double p : {0.1, 0.5, 0.8}) {
    const Tensor y = dropout_forward(x, p, 1234, 0);
    const std::vector<double> xv = x.to_doubles(), yv = y.to_doubles();
    const float scale = static_cast<float>(1.0 / (1.0 - p));
    int64_t dropped = 0, bad = 0;
    for (size_t i = 0; i < xv.size(); ++i) {
      if (yv[i] == 0) ++dropped;
      else if (static_cast<float>(yv[i]) != static_cast<float>(xv[i]) * scale) ++bad;  // kept: exactly x / (1 - p)
    }
    const double frac = double(dropped) / double(n), sigma = std::sqrt(p * (1 - p) / double(n));
    EXPECT_NEAR(frac, p, 6 * sigma) << "p = " << p;
    EXPECT_EQ(bad, 0) << "p = " << p;
  }
  // p = 1 drops everything; p = 0 keeps everything unscaled.
  for (double v : dropout_forward(x, 1.0, 5, 0).to_doubles()) ASSERT_EQ(v, 0.0);
  EXPECT_EQ(dropout_forward(x, 0.0, 5, 0).to_doubles(), x.to_doubles());
}

TEST(Dropout, EvalAndZeroPAreIdentity) {
  Variable x(Tensor::randn({3, 4}, 2), true);
  Tape tape;
  TapeScope scope(tape);
  Variable a = dropout(x, 0.5, /*training=*/false, 7, 0);
  Variable b = dropout(x, 0.0, /*training=*/true, 7, 0);
  EXPECT_EQ(a.value().data(), x.value().data());
  EXPECT_EQ(b.value().data(), x.value().data());
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_THROW(dropout(x, 1.5, true, 7, 0), ValueError);
  EXPECT_THROW(dropout(x, -0.1, false, 7, 0), ValueError);
}

TEST(Dropout, MaskIsAFunctionOfSeedOffsetAndIndex) {
  const Tensor ones = Tensor::full({2, 3, 8, 8}, 1.0);
  const auto m1 = dropout_forward(ones, 0.5, 42, 100).to_doubles();
  EXPECT_EQ(dropout_forward(ones, 0.5, 42, 100).to_doubles(), m1);  // same seed and offset: same mask
  EXPECT_NE(dropout_forward(ones, 0.5, 43, 100).to_doubles(), m1);  // other seed
  EXPECT_NE(dropout_forward(ones, 0.5, 42, 101).to_doubles(), m1);  // other offset
  // Offset shifts the element counter: element i at offset 100 is element i - 1 at offset 101.
  const auto m2 = dropout_forward(ones, 0.5, 42, 101).to_doubles();
  for (size_t i = 1; i < m1.size(); ++i) ASSERT_EQ(m1[i], m2[i - 1]) << i;
  // The mask follows the logical index, so it does not depend on the layout.
  const Tensor y_nhwc = dropout_forward(ones.to_layout(Layout::NHWC), 0.5, 42, 100);
  EXPECT_EQ(y_nhwc.layout(), Layout::NHWC);
  EXPECT_EQ(y_nhwc.to_doubles(), m1);
  // The host helper gives the same decision.
  const uint64_t thr = rng::drop_threshold(0.5);
  for (size_t i = 0; i < m1.size(); ++i) ASSERT_EQ(m1[i] != 0, rng::keep_element(42, 100, i, thr)) << i;
}

TEST(Dropout, BackwardUsesTheForwardMask) {
  const Tensor x0 = away_from_zero({2, 3, 4, 5}, 3, 0.1);
  expect_gradcheck([](const std::vector<Variable>& v) { return dropout(v[0], 0.4, true, 9, 17); }, {x0}, {true});
  Variable x(x0.to(DType::F32), true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = dropout(x, 0.4, true, 9, 17);
  EXPECT_EQ(tape.saved_bytes(), 0u);  // the mask is regenerated, not saved
  const Tensor gy = Tensor::randn(x.shape(), 4);
  tape.backward(y, gy);
  const auto yv = y.value().to_doubles(), gyv = gy.to_doubles(), gxv = x.grad().to_doubles();
  const float scale = static_cast<float>(1.0 / 0.6);
  int kept = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    const bool keep = yv[i] != 0;  // x is never 0, so y == 0 exactly where the forward dropped
    kept += keep;
    ASSERT_EQ(static_cast<float>(gxv[i]), keep ? static_cast<float>(gyv[i]) * scale : 0.0f) << i;
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, int(yv.size()));
  const Tensor dy = Tensor::randn(x0.shape(), 5, DType::F64);
  expect_grad_contract([&](Tensor& dx, bool acc) { dropout_backward(dy, 0.4, 9, 17, dx, acc); }, x0, "dropout dx");
}

TEST(DropoutCuda, MaskMatchesCpu) {
  TL_REQUIRE_CUDA();
  const Tensor x = Tensor::randn({3, 5, 7, 9}, 6), gy = Tensor::randn({3, 5, 7, 9}, 7);
  const Tensor y_cpu = dropout_forward(x, 0.3, 77, 5);
  Tensor dx_cpu;
  dropout_backward(gy, 0.3, 77, 5, dx_cpu, false);
  const auto yc = y_cpu.to_doubles();
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    // float32: bit-identical (same mask, same float multiply).
    const Tensor xg = x.to(Device::CUDA, DType::F32, layout), gyg = gy.to(Device::CUDA, DType::F32, layout);
    EXPECT_EQ(dropout_forward(xg, 0.3, 77, 5).to_doubles(), yc) << layout_name(layout);
    Tensor dx;
    dropout_backward(gyg, 0.3, 77, 5, dx, false);
    EXPECT_EQ(dx.to_doubles(), dx_cpu.to_doubles()) << layout_name(layout);
    expect_grad_contract([&](Tensor& g, bool acc) { dropout_backward(gyg, 0.3, 77, 5, g, acc); }, gyg, "cuda dropout");
    // bfloat16: the same zero pattern, values within bf16 rounding.
    const Tensor yb = dropout_forward(x.to(Device::CUDA, DType::BF16, layout), 0.3, 77, 5);
    const auto ybv = yb.to_doubles();
    for (size_t i = 0; i < yc.size(); ++i) ASSERT_EQ(ybv[i] == 0, yc[i] == 0) << i;
    expect_close(yb, y_cpu, kBf16Tol, "bf16 dropout");
  }
  // 2-D (classifier features).
  const Tensor f = Tensor::randn({4, 33}, 8);
  EXPECT_EQ(dropout_forward(f.to(Device::CUDA), 0.5, 3, 0).to_doubles(), dropout_forward(f, 0.5, 3, 0).to_doubles());
}

// ---------------------------------------------------------------- concat

TEST(Concat, GradcheckFloat64) {
  expect_gradcheck([](const std::vector<Variable>& v) { return concat({v[0], v[1], v[2]}, 1); },
                   {Tensor::randn({2, 2, 3, 2}, 1, DType::F64), Tensor::randn({2, 3, 3, 2}, 2, DType::F64),
                    Tensor::randn({2, 1, 3, 2}, 3, DType::F64)},
                   {true, true, true});
  expect_gradcheck([](const std::vector<Variable>& v) { return concat({v[0], v[1]}, 1); },
                   {Tensor::randn({3, 4}, 4, DType::F64), Tensor::randn({3, 2}, 5, DType::F64)}, {true, false});
  // Other dims (batch, last) and the same input twice.
  expect_gradcheck([](const std::vector<Variable>& v) { return concat({v[0], v[1], v[0]}, -1); },
                   {Tensor::randn({2, 2, 2, 3}, 6, DType::F64), Tensor::randn({2, 2, 2, 1}, 7, DType::F64)},
                   {true, true});
  expect_gradcheck([](const std::vector<Variable>& v) { return concat({v[0], v[1]}, 0); },
                   {Tensor::randn({1, 2, 2, 3}, 8, DType::F64), Tensor::randn({2, 2, 2, 3}, 9, DType::F64)},
                   {true, true});
}

TEST(Concat, GradContract) {
  const Tensor dy = Tensor::randn({2, 6, 3, 4}, 11, DType::F64);
  expect_grad_contract([&](Tensor& dx, bool acc) { concat_backward(dy, 1, 2, 3, dx, acc); },
                       Tensor::zeros({2, 3, 3, 4}, DType::F64), "concat dx");
  const Tensor dyn = dy.to_layout(Layout::NHWC);
  expect_grad_contract([&](Tensor& dx, bool acc) { concat_backward(dyn, 1, 2, 3, dx, acc); },
                       Tensor::zeros({2, 3, 3, 4}, DType::F64, Device::CPU, Layout::NHWC), "concat nhwc dx");
}

TEST(Concat, MatchesPyTorch) {
  const auto& f = fixture("concat");
  for (auto [prefix, count] : std::vector<std::pair<std::string, int>>{{"nchw", 3}, {"flat", 2}}) {
    std::vector<Variable> xs;
    for (int i = 0; i < count; ++i) xs.emplace_back(f.at(prefix + ".x" + std::to_string(i)), true);
    Tape tape;
    TapeScope scope(tape);
    Variable y = concat(xs, 1);
    expect_close(y.value(), f.at(prefix + ".y"), kTorchTol, prefix + " y");
    tape.backward(y, f.at(prefix + ".gy"));
    for (int i = 0; i < count; ++i)
      expect_close(xs[static_cast<size_t>(i)].grad(), f.at(prefix + ".gx" + std::to_string(i)), kTorchTol,
                   prefix + " dx" + std::to_string(i));
  }
}

TEST(Concat, NhwcMatchesNchwAndFrozenInputsGetNothing) {
  const Tensor a = Tensor::randn({2, 2, 3, 4}, 21), b = Tensor::randn({2, 5, 3, 4}, 22);
  const Tensor gy = Tensor::randn({2, 7, 3, 4}, 23);
  Tensor y_ref = concat_forward({a, b}, 1);
  Variable an(a.to_layout(Layout::NHWC), true), bn(b.to_layout(Layout::NHWC), false);
  Tape tape;
  TapeScope scope(tape);
  Variable y = concat({an, bn}, 1);
  EXPECT_EQ(y.value().layout(), Layout::NHWC);
  expect_close(y.value(), y_ref, 0, "nhwc concat y");
  EXPECT_EQ(tape.saved_bytes(), 0u);
  tape.backward(y, gy.to_layout(Layout::NHWC));
  ASSERT_EQ(tape.last_backward().size(), 1u);
  EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{true, false}));
  EXPECT_FALSE(bn.grad().defined());
  Tensor ga_ref;
  concat_backward(gy, 1, 0, 2, ga_ref, false);
  EXPECT_EQ(an.grad().layout(), Layout::NHWC);
  expect_close(an.grad(), ga_ref, 0, "nhwc concat da");
  // Nothing needs a gradient: nothing is recorded.
  Variable c(a, false), d(b, false);
  concat({c, d}, 1);
  EXPECT_EQ(tape.size(), 0u);
}

TEST(Concat, BadArgumentsThrow) {
  try {
    concat_forward({Tensor::zeros({2, 3, 4, 4}), Tensor::zeros({3, 3, 4, 4})}, 1);
    FAIL() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3, 4, 4]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 3, 4, 4]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(concat_forward({}, 1), ShapeError);
  EXPECT_THROW(concat_forward({Tensor::zeros({2, 3}), Tensor::zeros({2, 3, 1, 1})}, 1), ShapeError);
  EXPECT_THROW(concat_forward({Tensor::zeros({2, 3}), Tensor::zeros({2, 3})}, 2), ShapeError);
  EXPECT_THROW(concat_forward({Tensor::zeros({2, 3}), Tensor::zeros({2, 3}, DType::F64)}, 1), DTypeError);
  EXPECT_THROW(concat_forward({Tensor::zeros({1, 2, 2, 2}), Tensor::zeros({1, 2, 2, 2}, DType::F32, Device::CPU,
                                                                          Layout::NHWC)},
                              1),
               ShapeError);
  Tensor dx;
  EXPECT_THROW(concat_backward(Tensor::zeros({2, 3}), 1, 2, 2, dx, false), ShapeError);  // slice past the end
}

TEST(ConcatCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  const std::vector<Tensor> xs = {Tensor::randn({2, 3, 5, 4}, 31), Tensor::randn({2, 1, 5, 4}, 32),
                                  Tensor::randn({2, 4, 5, 4}, 33)};
  const Tensor gy = Tensor::randn({2, 8, 5, 4}, 34);
  const Tensor y_cpu = concat_forward(xs, 1);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::BF16}) {
      const double tol = dt == DType::F32 ? 0 : kBf16Tol;  // a copy is exact in float32
      const std::string what = std::string("concat cuda ") + layout_name(layout) + " " + dtype_name(dt);
      std::vector<Variable> vs;
      for (const Tensor& t : xs) vs.emplace_back(t.to(Device::CUDA, dt, layout), true);
      Tape tape;
      TapeScope scope(tape);
      Variable y = concat(vs, 1);
      expect_close(y.value(), y_cpu, tol, what + " y");
      const Tensor gyg = gy.to(Device::CUDA, dt, layout);
      tape.backward(y, gyg);
      int64_t start = 0;
      for (size_t k = 0; k < xs.size(); ++k) {
        Tensor ref;
        concat_backward(gy, 1, start, xs[k].size(1), ref, false);
        expect_close(vs[k].grad(), ref, tol, what + " dx" + std::to_string(k));
        expect_grad_contract([&](Tensor& g, bool acc) { concat_backward(gyg, 1, start, xs[k].size(1), g, acc); },
                             vs[k].value(), what + " contract");
        start += xs[k].size(1);
      }
    }
  }
  const Tensor a = Tensor::randn({3, 5}, 35), b = Tensor::randn({3, 2}, 36);
  expect_close(concat_forward({a.to(Device::CUDA), b.to(Device::CUDA)}, 1), concat_forward({a, b}, 1), 0,
               "concat cuda 2-D");
}
