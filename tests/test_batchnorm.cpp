// BatchNorm2d: float64 gradient checks (train and eval), gradient contract, PyTorch parity over two training
// steps (momentum 0.1, 0.3, None) and eval, frozen behaviour and saved bytes, bad arguments, CUDA vs CPU.
#include "layers/batchnorm.h"

#include <tuple>

#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

Tensor positive(const Shape& shape, uint64_t seed, DType dt = DType::F64) {
  return Tensor::uniform(shape, 0.5, 2.0, seed, dt);
}

Variable bn_fn(const std::vector<Variable>& v, bool training, DType dt = DType::F64) {
  const int64_t c = v[0].size(1);
  BatchNormBuffers buf;
  buf.running_mean = Tensor::uniform({c}, -0.5, 0.5, 11, dt);
  buf.running_var = positive({c}, 12, dt);
  BatchNormOptions opt;
  opt.training = training;
  return batch_norm2d(v[0], v[1], v[2], buf, opt);
}

// All three gradients of one backward call (assigned).
struct Grads {
  Tensor dx, dgamma, dbeta;
};
Grads all_grads(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& invstd,
                bool training) {
  Grads r;
  BatchNormGrads g;
  g.dx = &r.dx;
  g.dgamma = &r.dgamma;
  g.dbeta = &r.dbeta;
  batchnorm_backward(x, dy, gamma, mean, invstd, training, 1e-5, g);
  return r;
}

void expect_throws_naming(const std::function<void()>& f, const std::vector<std::string>& parts, bool shape_error) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_TRUE(shape_error) << "unexpected ShapeError: " << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  } catch (const DTypeError& e) {
    EXPECT_FALSE(shape_error) << "unexpected DTypeError: " << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

// ---------------------------------------------------------------- gradient checks (float64, CPU)

TEST(BatchNorm, GradcheckTrainFloat64) {
  const std::vector<Tensor> in = {Tensor::randn({3, 2, 2, 3}, 1, DType::F64),
                                  Tensor::uniform({2}, 0.5, 1.5, 2, DType::F64), Tensor::randn({2}, 3, DType::F64)};
  auto fn = [](const std::vector<Variable>& v) { return bn_fn(v, true); };
  expect_gradcheck(fn, in, {true, true, true});
  // Partial requests take the frozen-aware paths (fewer saved tensors).
  expect_gradcheck(fn, in, {true, false, false});
  expect_gradcheck(fn, in, {false, true, false});
  expect_gradcheck(fn, in, {false, false, true});
}

TEST(BatchNorm, GradcheckEvalFloat64) {
  const std::vector<Tensor> in = {Tensor::randn({2, 3, 2, 2}, 4, DType::F64),
                                  Tensor::uniform({3}, 0.5, 1.5, 5, DType::F64), Tensor::randn({3}, 6, DType::F64)};
  auto fn = [](const std::vector<Variable>& v) { return bn_fn(v, false); };
  expect_gradcheck(fn, in, {true, true, true});
  expect_gradcheck(fn, in, {true, false, false});
  expect_gradcheck(fn, in, {false, true, false});
}

// ---------------------------------------------------------------- gradient contract

TEST(BatchNorm, GradContract) {
  Tensor x = Tensor::randn({2, 3, 3, 2}, 7, DType::F64), dy = Tensor::randn({2, 3, 3, 2}, 8, DType::F64);
  Tensor gamma = positive({3}, 9), beta = Tensor::randn({3}, 10, DType::F64);
  BatchNormBuffers buf = batchnorm_buffers(3, DType::F64);
  Tensor sm, si;
  batchnorm_forward_train(x, gamma, beta, buf, BatchNormOptions{}, sm, si);
  Tensor rm = Tensor::randn({3}, 11, DType::F64), ri = batchnorm_invstd(positive({3}, 12), 1e-5);
  for (bool training : {true, false}) {
    const Tensor& mean = training ? sm : rm;
    const Tensor& inv = training ? si : ri;
    const std::string mode = training ? " (train)" : " (eval)";
    expect_grad_contract([&](Tensor& g, bool acc) {
      BatchNormGrads r; r.dx = &g; r.dx_accumulate = acc;
      batchnorm_backward(x, dy, gamma, mean, inv, training, 1e-5, r);
    }, x, "bn dx" + mode);
    expect_grad_contract([&](Tensor& g, bool acc) {
      BatchNormGrads r; r.dgamma = &g; r.dgamma_accumulate = acc;
      batchnorm_backward(x, dy, gamma, mean, inv, training, 1e-5, r);
    }, gamma, "bn dgamma" + mode);
    expect_grad_contract([&](Tensor& g, bool acc) {
      BatchNormGrads r; r.dbeta = &g; r.dbeta_accumulate = acc;
      batchnorm_backward(Tensor(), dy, Tensor(), Tensor(), Tensor(), training, 1e-5, r);
    }, gamma, "bn dbeta" + mode);
  }
}

// Each output follows its own accumulate flag when all three are requested together.
TEST(BatchNorm, MixedAccumulateFlags) {
  Tensor x = Tensor::randn({2, 3, 2, 2}, 13, DType::F64), dy = Tensor::randn({2, 3, 2, 2}, 14, DType::F64);
  Tensor gamma = positive({3}, 15), beta = Tensor::randn({3}, 16, DType::F64);
  BatchNormBuffers buf = batchnorm_buffers(3, DType::F64);
  Tensor sm, si;
  batchnorm_forward_train(x, gamma, beta, buf, BatchNormOptions{}, sm, si);
  Grads fresh = all_grads(x, dy, gamma, sm, si, true);
  Tensor dx = Tensor::randn(x.shape(), 17, DType::F64), dg = Tensor::randn({3}, 18, DType::F64),
         db = Tensor::randn({3}, 19, DType::F64);
  Tensor dx0 = dx.clone(), dg0 = dg.clone();
  BatchNormGrads g;
  g.dx = &dx, g.dx_accumulate = true;
  g.dgamma = &dg, g.dgamma_accumulate = true;
  g.dbeta = &db, g.dbeta_accumulate = false;
  batchnorm_backward(x, dy, gamma, sm, si, true, 1e-5, g);
  dx0.add_(fresh.dx);
  dg0.add_(fresh.dgamma);
  expect_close(dx, dx0, 1e-12, "dx accumulated");
  expect_close(dg, dg0, 1e-12, "dgamma accumulated");
  expect_close(db, fresh.dbeta, 1e-12, "dbeta assigned");
}

// ---------------------------------------------------------------- PyTorch parity (float32)

namespace {
void check_pytorch(const std::string& key, double momentum, bool cma, Layout layout) {
  SCOPED_TRACE(key + (layout == Layout::NHWC ? " NHWC" : " NCHW"));
  const auto& f = fixture("batchnorm");
  Parameter gamma(f.at(key + ".gamma").clone(), "gamma"), beta(f.at(key + ".beta").clone(), "beta");
  BatchNormBuffers buf = batchnorm_buffers(gamma.size(0));
  BatchNormOptions opt;
  opt.momentum = momentum;
  opt.cumulative_average = cma;
  for (const std::string step : {"s1", "s2", "eval"}) {
    const std::string p = key + "." + step;
    opt.training = step != "eval";
    gamma.zero_grad();
    beta.zero_grad();
    Tape tape;
    TapeScope scope(tape);
    Variable x(f.at(p + ".x").to_layout(layout), true);
    Variable y = batch_norm2d(x, gamma, beta, buf, opt);
    EXPECT_EQ(y.value().layout(), layout);
    expect_close(y.value(), f.at(p + ".y"), kTorchTol, p + " y");
    tape.backward(y, f.at(p + ".gy").to_layout(layout));
    expect_close(x.grad(), f.at(p + ".gx"), kTorchTol, p + " dx");
    expect_close(gamma.grad(), f.at(p + ".ggamma"), kTorchTol, p + " dgamma");
    expect_close(beta.grad(), f.at(p + ".gbeta"), kTorchTol, p + " dbeta");
    if (opt.training) {
      expect_close(buf.running_mean, f.at(p + ".running_mean"), kTorchTol, p + " running_mean");
      expect_close(buf.running_var, f.at(p + ".running_var"), kTorchTol, p + " running_var");
    }
  }
  EXPECT_EQ(buf.num_batches_tracked, 2);
}
}  // namespace

TEST(BatchNorm, MatchesPyTorchMomentum01) {
  check_pytorch("mom01", 0.1, false, Layout::NCHW);
  check_pytorch("mom01", 0.1, false, Layout::NHWC);
}
TEST(BatchNorm, MatchesPyTorchMomentum03) { check_pytorch("mom03", 0.3, false, Layout::NCHW); }
TEST(BatchNorm, MatchesPyTorchCumulativeAverage) {
  // The momentum value must be ignored with cumulative_average (PyTorch momentum=None).
  check_pytorch("cma", 0.7, true, Layout::NCHW);
}

// ---------------------------------------------------------------- frozen behaviour and saved tensors

TEST(BatchNorm, FrozenRecordsNothingButUpdatesRunningStats) {
  const auto& f = fixture("batchnorm");
  Parameter gamma(f.at("mom01.gamma").clone(), "gamma", false), beta(f.at("mom01.beta").clone(), "beta", false);
  BatchNormBuffers buf = batchnorm_buffers(gamma.size(0));
  BatchNormOptions opt;
  Tape tape;
  TapeScope scope(tape);
  for (const std::string step : {"s1", "s2"}) {
    Variable y = batch_norm2d(Variable(f.at("mom01." + step + ".x")), gamma, beta, buf, opt);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(tape.size(), 0u);
    expect_close(y.value(), f.at("mom01." + step + ".y"), kTorchTol, step + " y");
  }
  expect_close(buf.running_mean, f.at("mom01.s2.running_mean"), kTorchTol, "running_mean");
  expect_close(buf.running_var, f.at("mom01.s2.running_var"), kTorchTol, "running_var");
  EXPECT_EQ(buf.num_batches_tracked, 2);
  // Eval: nothing recorded, nothing updated.
  opt.training = false;
  Tensor rm = buf.running_mean.clone(), rv = buf.running_var.clone();
  Variable y = batch_norm2d(Variable(f.at("mom01.eval.x")), gamma, beta, buf, opt);
  EXPECT_EQ(tape.size(), 0u);
  expect_close(y.value(), f.at("mom01.eval.y"), kTorchTol, "eval y");
  expect_close(buf.running_mean, rm, 0.0, "running_mean unchanged in eval");
  expect_close(buf.running_var, rv, 0.0, "running_var unchanged in eval");
  EXPECT_EQ(buf.num_batches_tracked, 2);
  // Under NoGradGuard with trainable parameters: still no tape entry, running stats still update in train mode.
  gamma.set_trainable(true);
  opt.training = true;
  NoGradGuard no_grad;
  batch_norm2d(Variable(f.at("mom01.s1.x")), gamma, beta, buf, opt);
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(buf.num_batches_tracked, 3);
}

TEST(BatchNorm, SavesOnlyWhatTheNeededGradientsUse) {
  const auto& f = fixture("batchnorm");
  const Tensor& xv = f.at("mom01.s1.x");
  const size_t xb = xv.nbytes(), cb = 3 * sizeof(float);
  struct Case {
    bool training, gx, gg, gb;
    size_t bytes;
  };
  const Case cases[] = {
      {true, true, false, false, xb + 3 * cb},   // x, mean, invstd, gamma
      {true, false, true, false, xb + 2 * cb},   // x, mean, invstd
      {true, false, false, true, 0},             // dbeta = sum(dy)
      {false, true, false, false, 2 * cb},       // gamma, invstd
      {false, false, true, false, xb + 2 * cb},  // x, mean, invstd
      {false, false, false, true, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "training=" << c.training << " x/gamma/beta grads " << c.gx << c.gg << c.gb);
    Parameter gamma(f.at("mom01.gamma").clone(), "gamma", c.gg), beta(f.at("mom01.beta").clone(), "beta", c.gb);
    BatchNormBuffers buf = batchnorm_buffers(3);
    BatchNormOptions opt;
    opt.training = c.training;
    Tape tape;
    TapeScope scope(tape);
    Variable x(xv, c.gx);
    Variable y = batch_norm2d(x, gamma, beta, buf, opt);
    ASSERT_EQ(tape.size(), 1u);
    EXPECT_EQ(tape.saved_bytes(), c.bytes);
    tape.backward(y, f.at("mom01.s1.gy"));
    ASSERT_EQ(tape.last_backward().size(), 1u);
    EXPECT_EQ(tape.last_backward()[0].input_grad_computed, (std::vector<bool>{c.gx, c.gg, c.gb}));
    EXPECT_EQ(x.grad().defined(), c.gx);
    EXPECT_EQ(gamma.grad().defined(), c.gg);
    EXPECT_EQ(beta.grad().defined(), c.gb);
    if (c.training) {
      if (c.gx) expect_close(x.grad(), f.at("mom01.s1.gx"), kTorchTol, "dx");
      if (c.gg) expect_close(gamma.grad(), f.at("mom01.s1.ggamma"), kTorchTol, "dgamma");
      if (c.gb) expect_close(beta.grad(), f.at("mom01.s1.gbeta"), kTorchTol, "dbeta");
    }
  }
}

// ---------------------------------------------------------------- bad arguments

TEST(BatchNorm, BadArgumentsThrow) {
  Tensor x = Tensor::randn({2, 3, 4, 4}, 1);
  Tensor g = Tensor::full({3}, 1.0), b = Tensor::zeros({3});
  BatchNormBuffers buf = batchnorm_buffers(3);
  Tensor sm, si;
  BatchNormOptions opt;
  expect_throws_naming([&] { batchnorm_forward_train(x, Tensor::zeros({4}), b, buf, opt, sm, si); },
                       {"gamma", "[4]", "[2, 3, 4, 4]"}, true);
  expect_throws_naming([&] { batchnorm_forward_eval(x, g, Tensor::zeros({3, 1}), buf, 1e-5); },
                       {"beta", "[3, 1]"}, true);
  expect_throws_naming([&] { batchnorm_forward_train(Tensor::randn({2, 3, 4}, 2), g, b, buf, opt, sm, si); },
                       {"[2, 3, 4]"}, true);
  expect_throws_naming([&] { batchnorm_forward_train(x, Tensor::full({3}, 1.0, DType::F64), b, buf, opt, sm, si); },
                       {"gamma", "float64"}, false);
  BatchNormBuffers bad = batchnorm_buffers(5);
  expect_throws_naming([&] { batchnorm_forward_train(x, g, b, bad, opt, sm, si); }, {"running_mean", "[5]"}, true);
  // One value per channel cannot be normalised in training mode (PyTorch raises too); eval is fine.
  Tensor one = Tensor::randn({1, 3, 1, 1}, 3);
  expect_throws_naming([&] { batchnorm_forward_train(one, g, b, buf, opt, sm, si); }, {"[1, 3, 1, 1]"}, true);
  EXPECT_NO_THROW(batchnorm_forward_eval(one, g, b, buf, 1e-5));
  expect_throws_naming([&] { batchnorm_forward_train(x.to(DType::BF16), g, b, buf, opt, sm, si); }, {"bfloat16"},
                       false);
  EXPECT_EQ(buf.num_batches_tracked, 0) << "a rejected call must not count a batch";
  Tensor dy = Tensor::randn({2, 3, 4, 5}, 4), dx;
  BatchNormGrads gr;
  gr.dx = &dx;
  expect_throws_naming([&] { batchnorm_backward(x, dy, g, g, g, true, 1e-5, gr); }, {"[2, 3, 4, 4]", "[2, 3, 4, 5]"},
                       true);
}

// ---------------------------------------------------------------- CUDA vs CPU (run on a GPU machine)

namespace {
struct TrainResult {
  Tensor y, save_mean, save_invstd, running_mean, running_var;
  Grads g;
};
// Two training steps (the second on x2) and the backward of the second, on x's device/dtype/layout.
TrainResult train_two_steps(const Tensor& x1, const Tensor& x2, const Tensor& dy, const Tensor& gamma,
                            const Tensor& beta, const BatchNormOptions& opt) {
  TrainResult r;
  BatchNormBuffers buf = batchnorm_buffers(gamma.size(0), gamma.dtype(), gamma.device());
  batchnorm_forward_train(x1, gamma, beta, buf, opt, r.save_mean, r.save_invstd);
  r.y = batchnorm_forward_train(x2, gamma, beta, buf, opt, r.save_mean, r.save_invstd);
  r.running_mean = buf.running_mean;
  r.running_var = buf.running_var;
  r.g = all_grads(x2, dy, gamma, r.save_mean, r.save_invstd, true);
  return r;
}
}  // namespace

// The float32 CPU path (blocked, multi-threaded passes) against the float64 reference on the same values, in
// both layouts, with enough rows for several blocks and a partial last one; train and eval; accumulation.
TEST(BatchNorm, Float32CpuPathMatchesFloat64Reference) {
  const Shape shape{3, 6, 13, 11};
  const Tensor gamma = Tensor::uniform({6}, 0.5, 1.5, 1), beta = Tensor::randn({6}, 2);
  const Tensor x1 = Tensor::randn(shape, 3), x2 = Tensor::uniform(shape, -1.0, 3.0, 4), dy = Tensor::randn(shape, 5);
  BatchNormOptions opt;
  opt.momentum = 0.3;
  const TrainResult ref = train_two_steps(x1.to(DType::F64), x2.to(DType::F64), dy.to(DType::F64),
                                          gamma.to(DType::F64), beta.to(DType::F64), opt);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    SCOPED_TRACE(layout_name(layout));
    const Tensor x2l = x2.to_layout(layout), dyl = dy.to_layout(layout);
    const TrainResult r = train_two_steps(x1.to_layout(layout), x2l, dyl, gamma, beta, opt);
    EXPECT_EQ(r.y.layout(), layout);
    expect_close(r.y, ref.y, kTorchTol, "y");
    for (auto [a, b, what] : {std::tuple{r.save_mean, ref.save_mean, "save_mean"},
                              std::tuple{r.save_invstd, ref.save_invstd, "save_invstd"},
                              std::tuple{r.running_mean, ref.running_mean, "running_mean"},
                              std::tuple{r.running_var, ref.running_var, "running_var"},
                              std::tuple{r.g.dx, ref.g.dx, "dx"}, std::tuple{r.g.dgamma, ref.g.dgamma, "dgamma"},
                              std::tuple{r.g.dbeta, ref.g.dbeta, "dbeta"}})
      expect_close(a, b, kTorchTol, what);
    // Eval mode, forward and backward (dx = gamma * invstd * dy).
    BatchNormBuffers buf = batchnorm_buffers(6);
    buf.running_mean = Tensor::uniform({6}, -0.5, 0.5, 11);
    buf.running_var = Tensor::uniform({6}, 0.5, 2.0, 12);
    BatchNormBuffers buf64{buf.running_mean.to(DType::F64), buf.running_var.to(DType::F64), 0};
    expect_close(batchnorm_forward_eval(x2l, gamma, beta, buf, 1e-5),
                 batchnorm_forward_eval(x2.to(DType::F64), gamma.to(DType::F64), beta.to(DType::F64), buf64, 1e-5),
                 kTorchTol, "eval y");
    const Tensor inv = batchnorm_invstd(buf.running_var, 1e-5);
    const Grads e = all_grads(x2l, dyl, gamma, buf.running_mean, inv, false);
    const Grads e64 = all_grads(x2.to(DType::F64), dy.to(DType::F64), gamma.to(DType::F64),
                                buf64.running_mean, inv.to(DType::F64), false);
    expect_close(e.dx, e64.dx, kTorchTol, "eval dx");
    expect_close(e.dgamma, e64.dgamma, kTorchTol, "eval dgamma");
    // Accumulation adds the same gradient again.
    Grads acc = r.g;
    BatchNormGrads g;
    g.dx = &acc.dx, g.dx_accumulate = true;
    g.dgamma = &acc.dgamma, g.dgamma_accumulate = true;
    batchnorm_backward(x2l, dyl, gamma, r.save_mean, r.save_invstd, true, 1e-5, g);
    expect_close(acc.dx, ref.g.dx.clone().add_(ref.g.dx), kTorchTol, "dx accumulated");
    expect_close(acc.dgamma, ref.g.dgamma.clone().add_(ref.g.dgamma), kTorchTol, "dgamma accumulated");
    // A mean far larger than the spread (activations around 100 +- 1): the sums run in double and values are
    // centred before scaling, so y and dx keep the float32 bound (float sums of the mean miss it by ~3x). The
    // float32 mean itself limits any float32 batch norm here: half an ulp of 100 over the spread 0.58 is ~7e-6.
    const Tensor far = Tensor::uniform(shape, 99.0, 101.0, 6);
    const TrainResult rf = train_two_steps(far.to_layout(layout), far.to_layout(layout), dyl, gamma, beta, opt);
    const TrainResult ff = train_two_steps(far.to(DType::F64), far.to(DType::F64), dy.to(DType::F64),
                                           gamma.to(DType::F64), beta.to(DType::F64), opt);
    expect_close(rf.y, ff.y, kTorchTol, "y, mean 100");
    expect_close(rf.g.dx, ff.g.dx, kTorchTol, "dx, mean 100");
  }
}

TEST(BatchNormCuda, TrainMatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const Shape shape{4, 5, 3, 3};
  Tensor gamma = Tensor::uniform({5}, 0.5, 1.5, 1), beta = Tensor::randn({5}, 2);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " " << layout_name(layout));
      BatchNormOptions opt;
      opt.momentum = 0.3;
      Tensor x1g = Tensor::randn(shape, 3, DType::F32, Device::CUDA).to(Device::CUDA, dt, layout);
      Tensor x2g = Tensor::uniform(shape, -1.0, 3.0, 4, DType::F32, Device::CUDA).to(Device::CUDA, dt, layout);
      Tensor dyg = Tensor::randn(shape, 5, DType::F32, Device::CUDA).to(Device::CUDA, dt, layout);
      // The CPU reference sees the same (rounded) values.
      Tensor x1 = x1g.to(Device::CPU, DType::F32, Layout::NCHW), x2 = x2g.to(Device::CPU, DType::F32, Layout::NCHW),
             dy = dyg.to(Device::CPU, DType::F32, Layout::NCHW);
      TrainResult c = train_two_steps(x1, x2, dy, gamma, beta, opt);
      TrainResult g = train_two_steps(x1g, x2g, dyg, gamma.to(Device::CUDA), beta.to(Device::CUDA), opt);
      const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
      EXPECT_EQ(g.y.layout(), layout);
      EXPECT_EQ(g.y.dtype(), dt);
      EXPECT_EQ(g.save_mean.dtype(), DType::F32);
      expect_close(g.y, c.y, tol, "y");
      // Statistics are float32 on both sides: tight even for half inputs.
      expect_close(g.save_mean, c.save_mean, kCudaTol, "save_mean");
      expect_close(g.save_invstd, c.save_invstd, kCudaTol, "save_invstd");
      expect_close(g.running_mean, c.running_mean, kCudaTol, "running_mean");
      expect_close(g.running_var, c.running_var, kCudaTol, "running_var (unbiased)");
      expect_close(g.g.dx, c.g.dx, tol, "dx");
      expect_close(g.g.dgamma, c.g.dgamma, tol, "dgamma");
      expect_close(g.g.dbeta, c.g.dbeta, tol, "dbeta");
      // Partial requests (cuDNN writes the others into scratch; dbeta alone runs the own kernel).
      Tensor gam = gamma.to(Device::CUDA);
      for (int which = 0; which < 3; ++which) {
        Tensor out;
        BatchNormGrads r;
        if (which == 0) r.dx = &out;
        if (which == 1) r.dgamma = &out;
        if (which == 2) r.dbeta = &out;
        batchnorm_backward(x2g, dyg, gam, g.save_mean, g.save_invstd, true, 1e-5, r);
        const Tensor& ref = which == 0 ? c.g.dx : (which == 1 ? c.g.dgamma : c.g.dbeta);
        expect_close(out, ref, tol, "partial request " + std::to_string(which));
      }
      // Mixed accumulate flags on the cuDNN path.
      Tensor dg = Tensor::full({5}, 1.0, DType::F32, Device::CUDA);
      Tensor db = Tensor::full({5}, 7.0, DType::F32, Device::CUDA);
      BatchNormGrads mixed;
      mixed.dgamma = &dg, mixed.dgamma_accumulate = true;
      mixed.dbeta = &db, mixed.dbeta_accumulate = false;
      batchnorm_backward(x2g, dyg, gam, g.save_mean, g.save_invstd, true, 1e-5, mixed);
      Tensor dg_ref = Tensor::full({5}, 1.0);
      dg_ref.add_(c.g.dgamma);
      expect_close(dg, dg_ref, tol, "mixed: dgamma accumulated");
      expect_close(db, c.g.dbeta, tol, "mixed: dbeta assigned");
    }
  }
}

// The own kernels' two-level reductions (bfloat16 always takes them) on a tensor with several channel tiles (a
// partial last one), several row chunks per channel (a partial last one) and a mean far from zero, in both
// layouts, against the CPU reference on the same rounded values. Also the dgamma/dbeta-only backward, which takes
// the own reduction for every dtype.
TEST(BatchNormCuda, TiledReductionMatchesCpu) {
  TL_REQUIRE_CUDA();
  const Shape shape{6, 80, 23, 21};  // 80 channels: 3 tiles of 32; 2898 rows per channel: 6 chunks of 512
  const Tensor gamma = Tensor::uniform({80}, 0.5, 1.5, 21), beta = Tensor::randn({80}, 22);
  const Tensor gg = gamma.to(Device::CUDA), bg = beta.to(Device::CUDA);
  BatchNormOptions opt;
  opt.momentum = 0.2;
  for (Layout layout : {Layout::NHWC, Layout::NCHW}) {
    for (DType dt : {DType::BF16, DType::F32}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " " << layout_name(layout));
      Tensor x1 = Tensor::uniform(shape, 60.0, 70.0, 23).to(Device::CUDA, dt, layout);
      Tensor x2 = Tensor::randn(shape, 24).to(Device::CUDA, dt, layout);
      Tensor dy = Tensor::randn(shape, 25).to(Device::CUDA, dt, layout);
      auto cpu = [](const Tensor& t) { return t.to(Device::CPU, DType::F32, Layout::NCHW); };
      const TrainResult c = train_two_steps(cpu(x1), cpu(x2), cpu(dy), gamma, beta, opt);
      const TrainResult g = train_two_steps(x1, x2, dy, gg, bg, opt);
      const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
      expect_close(g.y, c.y, tol, "y");
      expect_close(g.save_mean, c.save_mean, kCudaTol, "save_mean");
      expect_close(g.save_invstd, c.save_invstd, kCudaTol, "save_invstd");
      expect_close(g.running_mean, c.running_mean, kCudaTol, "running_mean (first batch: mean 65)");
      expect_close(g.running_var, c.running_var, kCudaTol, "running_var");
      expect_close(g.g.dx, c.g.dx, tol, "dx");
      expect_close(g.g.dgamma, c.g.dgamma, tol, "dgamma");
      expect_close(g.g.dbeta, c.g.dbeta, tol, "dbeta");
      Tensor dgamma, dbeta;
      BatchNormGrads r;
      r.dgamma = &dgamma;
      r.dbeta = &dbeta;
      batchnorm_backward(x2, dy, Tensor(), g.save_mean, g.save_invstd, true, 1e-5, r);
      expect_close(dgamma, c.g.dgamma, tol, "dgamma without dx");
      expect_close(dbeta, c.g.dbeta, tol, "dbeta without dx");
    }
  }
}

TEST(BatchNormCuda, CumulativeAverageMatchesCpu) {
  TL_REQUIRE_CUDA();
  Tensor gamma = Tensor::uniform({3}, 0.5, 1.5, 1), beta = Tensor::randn({3}, 2);
  Tensor x1 = Tensor::randn({2, 3, 4, 4}, 3), x2 = Tensor::randn({2, 3, 4, 4}, 4), dy = Tensor::randn({2, 3, 4, 4}, 5);
  BatchNormOptions opt;
  opt.cumulative_average = true;
  TrainResult c = train_two_steps(x1, x2, dy, gamma, beta, opt);
  TrainResult g = train_two_steps(x1.to(Device::CUDA), x2.to(Device::CUDA), dy.to(Device::CUDA),
                                  gamma.to(Device::CUDA), beta.to(Device::CUDA), opt);
  expect_close(g.running_mean, c.running_mean, kCudaTol, "running_mean");
  expect_close(g.running_var, c.running_var, kCudaTol, "running_var");
}

TEST(BatchNormCuda, EvalMatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const Shape shape{3, 4, 5, 2};
  BatchNormBuffers buf;
  buf.running_mean = Tensor::randn({4}, 1);
  buf.running_var = positive({4}, 2, DType::F32);
  BatchNormBuffers bufg{buf.running_mean.to(Device::CUDA), buf.running_var.to(Device::CUDA), 0};
  Tensor gamma = Tensor::uniform({4}, 0.5, 1.5, 3), beta = Tensor::randn({4}, 4);
  Tensor gam = gamma.to(Device::CUDA), bet = beta.to(Device::CUDA);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " " << layout_name(layout));
      Tensor xg = Tensor::randn(shape, 5).to(Device::CUDA, dt, layout);
      Tensor dyg = Tensor::randn(shape, 6).to(Device::CUDA, dt, layout);
      Tensor x = xg.to(Device::CPU, DType::F32, Layout::NCHW), dy = dyg.to(Device::CPU, DType::F32, Layout::NCHW);
      const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
      expect_close(batchnorm_forward_eval(xg, gam, bet, bufg, 1e-5), batchnorm_forward_eval(x, gamma, beta, buf, 1e-5),
                   tol, "eval y");
      Tensor inv = batchnorm_invstd(buf.running_var, 1e-5), invg = batchnorm_invstd(bufg.running_var, 1e-5);
      expect_close(invg, inv, kCudaTol, "invstd");
      Grads c = all_grads(x, dy, gamma, buf.running_mean, inv, false);
      Grads g = all_grads(xg, dyg, gam, bufg.running_mean, invg, false);
      expect_close(g.dx, c.dx, tol, "eval dx");
      expect_close(g.dgamma, c.dgamma, tol, "eval dgamma");
      expect_close(g.dbeta, c.dbeta, tol, "eval dbeta");
    }
  }
}

TEST(BatchNormCuda, GradContract) {
  TL_REQUIRE_CUDA();
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    Tensor x = Tensor::randn({2, 3, 3, 2}, 7).to(Device::CUDA, DType::F32, layout);
    Tensor dy = Tensor::randn({2, 3, 3, 2}, 8).to(Device::CUDA, DType::F32, layout);
    Tensor gamma = Tensor::uniform({3}, 0.5, 1.5, 9, DType::F32, Device::CUDA);
    Tensor beta = Tensor::zeros({3}, DType::F32, Device::CUDA);
    BatchNormBuffers buf = batchnorm_buffers(3, DType::F32, Device::CUDA);
    Tensor sm, si;
    batchnorm_forward_train(x, gamma, beta, buf, BatchNormOptions{}, sm, si);
    Tensor ri = batchnorm_invstd(buf.running_var, 1e-5);
    for (bool training : {true, false}) {
      const Tensor& mean = training ? sm : buf.running_mean;
      const Tensor& inv = training ? si : ri;
      const std::string mode = training ? " cuda (train)" : " cuda (eval)";
      expect_grad_contract([&](Tensor& g, bool acc) {
        BatchNormGrads r; r.dx = &g; r.dx_accumulate = acc;
        batchnorm_backward(x, dy, gamma, mean, inv, training, 1e-5, r);
      }, x, "bn dx" + mode);
      expect_grad_contract([&](Tensor& g, bool acc) {
        BatchNormGrads r; r.dgamma = &g; r.dgamma_accumulate = acc;
        batchnorm_backward(x, dy, gamma, mean, inv, training, 1e-5, r);
      }, gamma, "bn dgamma" + mode);
      expect_grad_contract([&](Tensor& g, bool acc) {
        BatchNormGrads r; r.dbeta = &g; r.dbeta_accumulate = acc;
        batchnorm_backward(Tensor(), dy, Tensor(), Tensor(), Tensor(), training, 1e-5, r);
      }, gamma, "bn dbeta" + mode);
    }
  }
}

TEST(BatchNormCuda, AutogradMatchesPyTorch) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const auto& f = fixture("batchnorm");
  Parameter gamma(f.at("mom03.gamma").to(Device::CUDA), "gamma"), beta(f.at("mom03.beta").to(Device::CUDA), "beta");
  BatchNormBuffers buf = batchnorm_buffers(3, DType::F32, Device::CUDA);
  BatchNormOptions opt;
  opt.momentum = 0.3;
  for (const std::string step : {"s1", "s2", "eval"}) {
    const std::string p = "mom03." + step;
    opt.training = step != "eval";
    gamma.zero_grad();
    beta.zero_grad();
    Tape tape;
    TapeScope scope(tape);
    Variable x(f.at(p + ".x").to(Device::CUDA, DType::F32, Layout::NHWC), true);
    Variable y = batch_norm2d(x, gamma, beta, buf, opt);
    expect_close(y.value(), f.at(p + ".y"), kCudaTol, p + " y");
    tape.backward(y, f.at(p + ".gy").to(Device::CUDA, DType::F32, Layout::NHWC));
    expect_close(x.grad(), f.at(p + ".gx"), kCudaTol, p + " dx");
    expect_close(gamma.grad(), f.at(p + ".ggamma"), kCudaTol, p + " dgamma");
    expect_close(beta.grad(), f.at(p + ".gbeta"), kCudaTol, p + " dbeta");
    if (opt.training) {
      expect_close(buf.running_mean, f.at(p + ".running_mean"), kCudaTol, p + " running_mean");
      expect_close(buf.running_var, f.at(p + ".running_var"), kCudaTol, p + " running_var");
    }
  }
}
