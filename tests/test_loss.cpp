// Losses: gradient checks for every cross-entropy variant and log_softmax + nll, gradient contracts, PyTorch
// parity (loss and logits gradient), CUDA vs CPU, and bad shapes / labels.
#include "layers/loss.h"

#include <cmath>
#include <utility>

#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {
Tensor labels(const std::vector<double>& v) { return Tensor::from_values(v, {static_cast<int64_t>(v.size())}, DType::I32); }


struct Variant {
  const char* name;
  double smoothing;
  bool weighted;
  int ignore_index;
};
// Targets below: {2, 0, 4, 1, 4}; the ignore variants drop row 1 (class 0) or every class-4 row.
const Variant kVariants[] = {{"plain", 0.0, false, -100},  {"smoothing", 0.1, false, -100},
                             {"weights", 0.0, true, -100}, {"both", 0.1, true, -100},
                             {"ignore0", 0.1, true, 0},    {"ignore4", 0.0, false, 4}};
}  // namespace

TEST(CrossEntropy, GradcheckFloat64AllVariants) {
  const Tensor x = Tensor::randn({5, 6}, 1, DType::F64), t = labels({2, 0, 4, 1, 4});
  const Tensor w = Tensor::uniform({6}, 0.5, 1.5, 2, DType::F64);
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    CrossEntropyOptions opt;
    opt.label_smoothing = v.smoothing;
    opt.ignore_index = v.ignore_index;
    if (v.weighted) opt.class_weights = w;
    expect_gradcheck([&](const std::vector<Variable>& in) { return cross_entropy(in[0], t, opt); }, {x}, {true});
  }
  // One row, one class-weighted and smoothed; float32 weights with float64 logits are accepted too.
  CrossEntropyOptions opt;
  opt.label_smoothing = 0.2;
  opt.class_weights = Tensor::uniform({3}, 0.5, 1.5, 3);
  expect_gradcheck([&](const std::vector<Variable>& in) { return cross_entropy(in[0], labels({1}), opt); },
                   {Tensor::randn({1, 3}, 4, DType::F64)}, {true});
}

TEST(LogSoftmaxNll, GradcheckFloat64) {
  const Tensor x = Tensor::randn({4, 5}, 1, DType::F64), t = labels({3, -100, 0, 3});
  const Tensor w = Tensor::uniform({5}, 0.5, 1.5, 2, DType::F64);
  expect_gradcheck([](const std::vector<Variable>& in) { return log_softmax(in[0]); }, {x}, {true});
  expect_gradcheck([&](const std::vector<Variable>& in) { return nll_loss(in[0], t, w); }, {x}, {true});
  expect_gradcheck([&](const std::vector<Variable>& in) { return nll_loss(log_softmax(in[0]), t); }, {x}, {true});
  expect_gradcheck([&](const std::vector<Variable>& in) { return nll_loss(log_softmax(in[0]), labels({3, 1, 0, 3}), w, 3); },
                   {x}, {true});
}

TEST(Loss, GradContracts) {
  for (DType dt : {DType::F64, DType::F32}) {
    const Tensor x = Tensor::randn({4, 5}, 1, dt), t = labels({3, -100, 0, 2});
    const Tensor dloss = Tensor::full({1}, 1.3, loss_dtype(dt));
    for (const Variant& v : kVariants) {
      CrossEntropyOptions opt;
      opt.label_smoothing = v.smoothing;
      opt.ignore_index = v.ignore_index;
      if (v.weighted) opt.class_weights = Tensor::uniform({5}, 0.5, 1.5, 2);
      // Rows labelled 0, 4 or -100 are ignored by the variants that name them.
      const Tensor tv = v.ignore_index == -100 ? t : labels({3, 4, 0, 2});
      Tensor lse, stats;
      cross_entropy_forward(x, tv, opt, &lse, &stats);
      expect_grad_contract([&](Tensor& g, bool acc) { cross_entropy_backward(dloss, x, tv, lse, stats, opt, g, acc); },
                           x, std::string("cross_entropy dlogits ") + v.name);
    }
    const Tensor y = log_softmax_forward(x), dy = Tensor::randn({4, 5}, 3, dt);
    expect_grad_contract([&](Tensor& g, bool acc) { log_softmax_backward(y, dy, g, acc); }, x, "log_softmax dx");
    Tensor stats;
    const Tensor w = Tensor::uniform({5}, 0.5, 1.5, 4);
    nll_loss_forward(y, t, w, -100, &stats);
    expect_grad_contract([&](Tensor& g, bool acc) { nll_loss_backward(dloss, t, w, -100, stats, 5, dt, g, acc); }, x,
                         "nll dlogp");
  }
}

TEST(CrossEntropy, MatchesPyTorch) {
  const auto& f = fixture("loss");
  for (const std::string name : {"plain", "smooth", "weighted", "both", "ignore", "ignore_class", "batch1", "c1000"}) {
    const std::string p = "ce." + name + ".";
    CrossEntropyOptions opt;
    opt.label_smoothing = f.at(p + "eps").item();
    opt.ignore_index = static_cast<int>(f.at(p + "ignore").item());
    if (f.has(p + "w")) opt.class_weights = f.at(p + "w");
    Variable x(f.at(p + "x"), true);
    Tape tape;
    TapeScope scope(tape);
    Variable loss = cross_entropy(x, f.at(p + "t"), opt);
    ASSERT_EQ(loss.value().dtype(), DType::F32);
    expect_close(loss.value(), f.at(p + "loss"), kTorchTol, p + "loss");
    tape.backward(loss, f.at(p + "gy"));
    expect_close(x.grad(), f.at(p + "gx"), kTorchTol, p + "gx");
  }
}

TEST(LogSoftmaxNll, MatchesPyTorch) {
  const auto& f = fixture("loss");
  {
    Variable x(f.at("logsm.x"), true);
    Tape tape;
    TapeScope scope(tape);
    Variable y = log_softmax(x);
    expect_close(y.value(), f.at("logsm.y"), kTorchTol, "log_softmax y");
    tape.backward(y, f.at("logsm.gy"));
    expect_close(x.grad(), f.at("logsm.gx"), kTorchTol, "log_softmax dx");
  }
  Variable x(f.at("nll.x"), true);
  Tape tape;
  TapeScope scope(tape);
  Variable logp = log_softmax(x);
  logp.retain_grad();
  Variable loss = nll_loss(logp, f.at("nll.t"), f.at("nll.w"));
  expect_close(logp.value(), f.at("nll.logp"), kTorchTol, "nll logp");
  expect_close(loss.value(), f.at("nll.loss"), kTorchTol, "nll loss");
  tape.backward(loss, f.at("nll.gy"));
  expect_close(logp.grad(), f.at("nll.glogp"), kTorchTol, "nll dlogp");
  expect_close(x.grad(), f.at("nll.gx"), kTorchTol, "nll dx");
}

TEST(CrossEntropy, SavesNothingWhenFrozenAndNaNWhenAllIgnored) {
  Tape tape;
  TapeScope scope(tape);
  Variable loss = cross_entropy(Variable(Tensor::randn({3, 4}, 1)), labels({0, 1, 2}));
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_EQ(loss.shape(), Shape({1}));
  // Like PyTorch, a batch whose targets are all ignored has a NaN mean.
  EXPECT_TRUE(std::isnan(cross_entropy_forward(Tensor::randn({2, 4}, 2), labels({-100, -100})).item()));
  // Agreement of the fused op with log_softmax + nll (no smoothing).
  const Tensor x = Tensor::randn({5, 7}, 3), t = labels({6, 0, 3, 3, 1}), w = Tensor::uniform({7}, 0.5, 2.0, 4);
  CrossEntropyOptions opt;
  opt.class_weights = w;
  expect_close(cross_entropy_forward(x, t, opt), nll_loss_forward(log_softmax_forward(x), t, w, -100), 1e-6,
               "cross_entropy vs log_softmax + nll");
}

TEST(Loss, BadArgumentsThrow) {
  const Tensor x = Tensor::randn({3, 4}, 1);
  std::string msg = error_of([&] { cross_entropy_forward(x, labels({0, 7, 1})); });
  EXPECT_TRUE(contains(msg, "target[1] = 7") && contains(msg, "[0, 4)")) << msg;
  EXPECT_THROW(cross_entropy_forward(x, labels({0, -1, 1})), ValueError);
  EXPECT_THROW(nll_loss_forward(log_softmax_forward(x), labels({0, 1, 4}), Tensor(), -100), ValueError);
  msg = error_of([&] { cross_entropy_forward(x, labels({0, 1})); });
  EXPECT_TRUE(contains(msg, "[2]") && contains(msg, "[3, 4]")) << msg;
  EXPECT_THROW(cross_entropy_forward(x, labels({0, 1})), ShapeError);
  EXPECT_THROW(cross_entropy_forward(x, Tensor::zeros({3})), DTypeError);  // float targets
  EXPECT_THROW(cross_entropy_forward(Tensor::randn({3, 4, 1, 1}, 2), labels({0, 1, 2})), ShapeError);
  CrossEntropyOptions opt;
  opt.class_weights = Tensor::full({5}, 1.0);
  msg = error_of([&] { cross_entropy_forward(x, labels({0, 1, 2}), opt); });
  EXPECT_TRUE(contains(msg, "class_weights [5]") && contains(msg, "[4]")) << msg;
  opt.class_weights = Tensor();
  opt.label_smoothing = 1.5;
  EXPECT_THROW(cross_entropy_forward(x, labels({0, 1, 2}), opt), ValueError);
  Tensor g;
  EXPECT_THROW(log_softmax_backward(log_softmax_forward(x), Tensor::randn({3, 5}, 2), g, false), ShapeError);
}

// ---- CUDA (skipped without a GPU) ----
TEST(LossCuda, CrossEntropyMatchesCpu) {
  TL_REQUIRE_CUDA();
  // C = 1000 exercises the multi-warp row reductions, N = 600 the single-block mean over many rows.
  for (auto [N, C] : {std::pair<int64_t, int64_t>{6, 5}, {600, 1000}}) {
    std::vector<double> tv(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) tv[static_cast<size_t>(i)] = (i % 7 == 3) ? -100 : static_cast<double>((i * 37) % C);
    const Tensor t = labels(tv), tg = t.to(Device::CUDA), dloss = Tensor::full({1}, 1.3);
    for (const Variant& v : kVariants) {
      CrossEntropyOptions opt;
      opt.label_smoothing = v.smoothing;
      opt.ignore_index = v.ignore_index;
      if (v.weighted) opt.class_weights = Tensor::uniform({C}, 0.5, 1.5, 2);
      CrossEntropyOptions opt_g = opt;
      if (v.weighted) opt_g.class_weights = opt.class_weights.to(Device::CUDA);
      for (DType dt : {DType::F32, DType::BF16}) {
        const std::string what = std::string("cuda ce ") + v.name + " " + dtype_name(dt) + " C=" + std::to_string(C);
        const Tensor x = Tensor::randn({N, C}, 1).to(dt).to(DType::F32);  // CPU sees the rounded values
        Tensor lse, stats, dx;
        const Tensor loss = cross_entropy_forward(x, t, opt, &lse, &stats);
        cross_entropy_backward(dloss, x, t, lse, stats, opt, dx, false);
        const Tensor xg = x.to(Device::CUDA, dt, Layout::NCHW);
        Tensor lse_g, stats_g, dx_g;
        const Tensor loss_g = cross_entropy_forward(xg, tg, opt_g, &lse_g, &stats_g);
        EXPECT_EQ(loss_g.dtype(), DType::F32);
        EXPECT_TRUE(loss_g.is_cuda());
        const Tensor dloss_g = dloss.to(Device::CUDA);
        cross_entropy_backward(dloss_g, xg, tg, lse_g, stats_g, opt_g, dx_g, false);
        const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
        expect_close(loss_g, loss, kCudaTol, what + " loss");  // float32 accumulation in both cases
        expect_close(stats_g, stats, kCudaTol, what + " stats");
        expect_close(dx_g, dx, tol, what + " dx");
        expect_grad_contract(
            [&](Tensor& g, bool acc) { cross_entropy_backward(dloss_g, xg, tg, lse_g, stats_g, opt_g, g, acc); }, xg,
            what + " dx");
      }
    }
  }
}

TEST(LossCuda, LogSoftmaxNllMatchCpu) {
  TL_REQUIRE_CUDA();
  const Tensor t = labels({3, -100, 0, 2, 4, 4}), tg = t.to(Device::CUDA);
  const Tensor w = Tensor::uniform({300}, 0.5, 1.5, 2), wg = w.to(Device::CUDA);
  const Tensor dloss = Tensor::full({1}, 0.7), dloss_g = dloss.to(Device::CUDA);
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
    const std::string what = std::string("cuda ") + dtype_name(dt);
    const DType ref_dt = dt == DType::F64 ? DType::F64 : DType::F32;
    const Tensor x = Tensor::randn({6, 300}, 1).to(dt).to(ref_dt), dy = Tensor::randn({6, 300}, 3).to(dt).to(ref_dt);
    const Tensor xg = x.to(Device::CUDA, dt, Layout::NCHW), dyg = dy.to(Device::CUDA, dt, Layout::NCHW);
    const double tol = (dt == DType::F32 || dt == DType::F64) ? kCudaTol : kBf16Tol;
    const Tensor y = log_softmax_forward(x), yg = log_softmax_forward(xg);
    expect_close(yg, y, tol, what + " log_softmax y");
    Tensor dx, dxg;
    log_softmax_backward(y, dy, dx, false);
    log_softmax_backward(yg, dyg, dxg, false);
    expect_close(dxg, dx, tol, what + " log_softmax dx");
    expect_grad_contract([&](Tensor& g, bool acc) { log_softmax_backward(yg, dyg, g, acc); }, xg,
                         what + " log_softmax dx");
    Tensor stats, stats_g, dl, dlg;
    const Tensor loss = nll_loss_forward(y, t, w, -100, &stats), loss_g = nll_loss_forward(yg, tg, wg, -100, &stats_g);
    expect_close(loss_g, loss, tol, what + " nll loss");
    const Tensor dl_ref = dloss.to(loss_dtype(dt)), dl_g = dloss_g.to(loss_dtype(dt));
    nll_loss_backward(dl_ref, t, w, -100, stats, 300, ref_dt, dl, false);
    nll_loss_backward(dl_g, tg, wg, -100, stats_g, 300, dt, dlg, false);
    expect_close(dlg, dl, tol, what + " nll dlogp");
    expect_grad_contract([&](Tensor& g, bool acc) { nll_loss_backward(dl_g, tg, wg, -100, stats_g, 300, dt, g, acc); },
                         xg, what + " nll dlogp");
  }
}

TEST(LossCuda, AutogradOnDeviceAndBadLabelGivesNaN) {
  TL_REQUIRE_CUDA();
  const Tensor xv = Tensor::randn({8, 10}, 1), t = labels({1, 2, 3, 4, 5, 6, 7, -100});
  CrossEntropyOptions opt;
  opt.label_smoothing = 0.1;
  Tensor grads[2];
  for (int dev = 0; dev < 2; ++dev) {
    const Device d = dev ? Device::CUDA : Device::CPU;
    Tape tape;
    TapeScope scope(tape);
    Variable x(xv.to(d), true);
    Variable loss = cross_entropy(x, t.to(d), opt);
    EXPECT_EQ(loss.value().device(), d);
    tape.backward(loss);
    grads[dev] = x.grad();
  }
  expect_close(grads[1], grads[0], kCudaTol, "cuda ce autograd dx");
  // An out-of-range label cannot be checked on the device without a sync: the loss becomes NaN instead.
  const Tensor bad = labels({1, 2, 3, 4, 5, 6, 7, 10}).to(Device::CUDA);
  EXPECT_TRUE(std::isnan(cross_entropy_forward(xv.to(Device::CUDA), bad).item()));
}
