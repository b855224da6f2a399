// --cuda-graphs (train/cuda_graph.h): the host-side policy (which steps warm up, capture, replay, run eagerly, drop
// the graphs), the counters a replay advances, the in-place zero_grad that keeps gradient addresses, the options
// refused on the CPU, and, on a GPU, a training job with graphs against the same job without them.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/synthetic.h"
#include "layers/batchnorm.h"
#include "layers/linear.h"
#include "train/cuda_graph.h"
#include "train/optimizer.h"
#include "tl_testing.h"
#include "tl_training.h"

using namespace tl;
using namespace tl::testing;
using namespace tl::train;

namespace {
const Shape kFull = {8, 3, 32, 32}, kLast = {3, 3, 32, 32};
const std::vector<int64_t> kSig = {1, 2, 3};
}  // namespace

TEST(CudaGraphPolicy, WarmsUpThenCapturesOnceThenReplays) {
  GraphPolicy p(2);
  std::vector<GraphAction> got;
  for (int s = 0; s < 6; ++s) {
    const GraphPolicy::Decision d = p.next(kFull, true, kSig);
    EXPECT_FALSE(d.drop_graphs) << s;
    got.push_back(d.action);
  }
  const std::vector<GraphAction> want = {GraphAction::Eager,   GraphAction::Eager,  GraphAction::Capture,
                                         GraphAction::Replay,  GraphAction::Replay, GraphAction::Replay};
  EXPECT_EQ(got, want);
  EXPECT_EQ(p.captures(), 1);
  EXPECT_EQ(p.replays(), 3);
  EXPECT_THROW(GraphPolicy(0), ValueError);
}

TEST(CudaGraphPolicy, TheSmallerLastBatchRunsEagerlyAndIsNoWarmUp) {
  GraphPolicy p(2);
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Eager);
  EXPECT_EQ(p.next(kLast, false, kSig).action, GraphAction::Eager);  // not a second warm-up of kFull
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Eager);
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Capture);
  EXPECT_EQ(p.next(kLast, false, kSig).action, GraphAction::Eager);  // never captured
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Replay);  // the eager batch did not drop the graph
  EXPECT_EQ(p.invalidations(), 0);
}

TEST(CudaGraphPolicy, ASignatureChangeDropsTheGraphsAndWarmsUpAgain) {
  GraphPolicy p(2);
  for (int s = 0; s < 4; ++s) p.next(kFull, true, kSig);  // eager, eager, capture, replay
  // An unfreeze (or a new optimizer table, a grown workspace) changes the signature.
  const std::vector<int64_t> unfrozen = {1, 2, 4};
  GraphPolicy::Decision d = p.next(kFull, true, unfrozen);
  EXPECT_TRUE(d.drop_graphs);
  EXPECT_EQ(d.action, GraphAction::Eager);
  d = p.next(kFull, true, unfrozen);
  EXPECT_FALSE(d.drop_graphs);
  EXPECT_EQ(d.action, GraphAction::Eager);
  EXPECT_EQ(p.next(kFull, true, unfrozen).action, GraphAction::Capture);
  EXPECT_EQ(p.next(kFull, true, unfrozen).action, GraphAction::Replay);
  EXPECT_EQ(p.invalidations(), 1);
  EXPECT_EQ(p.captures(), 2);
  // A change before anything was captured drops nothing (there is no graph), but restarts the warm-up.
  GraphPolicy q(2);
  q.next(kFull, true, kSig);
  d = q.next(kFull, true, unfrozen);
  EXPECT_FALSE(d.drop_graphs);
  EXPECT_EQ(d.action, GraphAction::Eager);
  EXPECT_EQ(q.next(kFull, true, unfrozen).action, GraphAction::Eager);
  EXPECT_EQ(q.next(kFull, true, unfrozen).action, GraphAction::Capture);
}

TEST(CudaGraphPolicy, AForgottenShapeWarmsUpAgain) {
  GraphPolicy p(1);
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Eager);
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Capture);
  p.forget(kFull);  // the capture threw
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Eager);
  EXPECT_EQ(p.next(kFull, true, kSig).action, GraphAction::Capture);
}

TEST(CudaGraphPolicy, SignatureHashSeesEveryValueAndItsOrder) {
  EXPECT_EQ(signature_hash({1, 0, 1}), signature_hash({1, 0, 1}));
  EXPECT_NE(signature_hash({1, 0, 1}), signature_hash({1, 1, 1}));
  EXPECT_NE(signature_hash({1, 0}), signature_hash({0, 1}));
  EXPECT_NE(signature_hash({}), signature_hash({0}));
}

TEST(CounterReplay, AddsWhatTheCapturedStepAddedForEachReplay) {
  int64_t a = 5, b = 0, untouched = 9;
  CounterReplay r;
  r.snapshot({&a, &b, &untouched});
  a += 1;  // the captured step's host code: one forward of layer a, two of layer b (a layer called twice)
  b += 2;
  r.record();
  EXPECT_FALSE(r.empty());
  r.apply();
  r.apply();
  EXPECT_EQ(a, 8);
  EXPECT_EQ(b, 6);
  EXPECT_EQ(untouched, 9);
  CounterReplay none;
  none.snapshot({&untouched});
  none.record();
  EXPECT_TRUE(none.empty());
}

TEST(Optim, ZeroGradInPlaceKeepsTheGradientStorage) {
  Tape tape;
  TapeScope scope(tape);
  Parameter w(Tensor::randn({4, 3}, 1), "w"), b(Tensor::randn({4}, 2), "b");
  Optimizer opt(OptimizerKind::SGD, {ParamGroup("all", {w, b})}, HyperParams::sgd(0.1, 0.9));
  const Tensor x = Tensor::randn({5, 3}, 3);
  auto backward = [&] {
    Variable y = linear(Variable(x), w, b);
    tape.backward(y, Tensor::full({5, 4}, 1.0));
  };
  backward();
  const Tensor first = w.grad().clone();
  void* const storage = w.grad().data();
  opt.step();
  opt.zero_grad(false);
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().data(), storage);
  for (double v : w.grad().to_doubles()) EXPECT_EQ(v, 0.0);
  backward();  // adds into the zeroed storage: the same gradient, at the same address
  EXPECT_EQ(w.grad().data(), storage);
  EXPECT_EQ(w.grad().to_doubles(), first.to_doubles());
  // A gradient that shares its storage with another tensor is replaced, never zeroed under that tensor.
  const Tensor shared = Tensor::full({4}, 2.0);
  b.set_grad(shared);
  opt.zero_grad(false);
  EXPECT_NE(b.grad().data(), shared.data());
  for (double v : b.grad().to_doubles()) EXPECT_EQ(v, 0.0);
  for (double v : shared.to_doubles()) EXPECT_EQ(v, 2.0);
  opt.zero_grad();  // set to none, as before
  EXPECT_FALSE(w.grad().defined());
}

TEST(TrainCudaGraphs, RefusedOnTheCpuBeforeAnyWork) {
  train::TrainOptions o = tiny_training("/nonexistent/data", scratch_dir("cuda_graphs_cpu") + "/out", 32, 1, 4, 1);
  o.cuda_graphs = true;
  try {
    std::ostringstream log;
    train::run_training(o, log);
    FAIL() << "--cuda-graphs on the CPU was accepted";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("--cuda-graphs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("CPU"), std::string::npos) << e.what();
  }
}

namespace {
std::vector<double> train_losses(const std::string& metrics_path) {
  std::ifstream f(metrics_path);
  std::vector<double> l;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) l.push_back(nlohmann::json::parse(line)["train"]["loss"].get<double>());
  return l;
}
}  // namespace

// On a GPU: resnet18, 32 images in batches of 6 (5 full batches and a last one of 2 per epoch), Adam with a
// cosine schedule (the lr and the bias corrections change every step, so a replay that reused the captured
// step's coefficients would move the loss), 4 epochs: eager warm-up steps, a capture, replays, and an eager
// last batch every epoch. The same job without graphs runs the same kernels in the same order; the tolerance
// only allows for cuDNN picking another algorithm in the other run (TF32 off: ~1e-6 relative per layer).
TEST(TrainCudaGraphs, GraphStepsMatchEagerSteps) {
  TL_REQUIRE_CUDA();
  const std::string d = scratch_dir("cuda_graphs_train");
  io::SyntheticOptions s;
  s.num_classes = 4;
  s.train_per_class = 8;
  s.val_per_class = 1;
  s.min_side = 48;
  s.max_side = 56;
  s.format = "png";
  io::write_synthetic_image_folder(d + "/data", s);
  std::vector<double> eager, graphed;
  for (const bool graphs : {false, true}) {
    const std::string out = d + (graphs ? "/graphs" : "/eager");
    train::TrainOptions o = tiny_training(d + "/data", out, 48, 4, 6, 2);
    o.device = "cuda";
    o.optimizer = "adam";
    o.lr = 1e-3;
    o.schedule = "cosine";
    o.cuda_graphs = graphs;
    NoTF32 no_tf32;
    std::ostringstream log;
    train::run_training(o, log);
    (graphs ? graphed : eager) = train_losses(out + "/metrics.jsonl");
    if (graphs) {  // the graphs were used: "cuda graphs: <c> captured, <r> steps replayed, ..."
      const std::string text = log.str();
      const size_t at = text.find("cuda graphs: ");
      ASSERT_NE(at, std::string::npos) << text;
      long captured = 0, replayed = 0;
      ASSERT_EQ(std::sscanf(text.c_str() + at, "cuda graphs: %ld captured, %ld steps replayed", &captured, &replayed),
                2);
      EXPECT_GE(captured, 1);
      EXPECT_GE(replayed, 8) << text;
    }
  }
  ASSERT_EQ(eager.size(), 4u);
  ASSERT_EQ(graphed.size(), 4u);
  EXPECT_GT(std::fabs(eager.back() - eager.front()), 1e-3) << "the job must train, or a missed update would pass";
  for (size_t e = 0; e < eager.size(); ++e)
    EXPECT_NEAR(graphed[e], eager[e], 1e-5 * std::fabs(eager[e])) << "epoch " << e + 1;
}

// On a GPU: the persistent (NHWC float32) batch norm keeps one reserve per layer from step to step (a captured
// graph holds its address, and steps allocate nothing), and takes a fresh one while a forward not yet
// back-propagated still holds it (a layer called twice in one forward).
TEST(BatchNormCuda, PersistentReserveIsReusedAcrossSteps) {
  TL_REQUIRE_CUDA();
  Tape tape;
  TapeScope scope(tape);
  const Tensor x = Tensor::randn({4, 8, 6, 6}, 5).to(Device::CUDA, DType::F32, Layout::NHWC);
  Parameter xv(x, "x"), gamma(Tensor::full({8}, 1.0).to(Device::CUDA), "gamma"),
      beta(Tensor::zeros({8}).to(Device::CUDA), "beta");
  BatchNormBuffers buf = batchnorm_buffers(8, DType::F32, Device::CUDA);
  auto step = [&] {
    Variable y = batch_norm2d(xv, gamma, beta, buf, BatchNormOptions{});
    tape.backward(y, Tensor::full(x.shape(), 1.0, DType::F32, Device::CUDA, Layout::NHWC));
  };
  step();
  if (!buf.cudnn_reserve.defined()) GTEST_SKIP() << "cuDNN did not take the persistent path for this input";
  const void* reserve = buf.cudnn_reserve.data();
  step();
  step();
  EXPECT_EQ(buf.cudnn_reserve.data(), reserve);
  EXPECT_EQ(buf.num_batches_tracked, 3);
  Variable y1 = batch_norm2d(xv, gamma, beta, buf, BatchNormOptions{});  // holds the reserve until its backward
  Variable y2 = batch_norm2d(xv, gamma, beta, buf, BatchNormOptions{});
  EXPECT_NE(buf.cudnn_reserve.data(), reserve);
  tape.clear();
}
