// The tape: what is recorded, gradient accumulation and release, aliasing safety, no-grad mode.
#include <algorithm>

#include "core/autograd.h"
#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/module.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

TEST(Autograd, NothingRecordedWithoutGradients) {
  Tape tape;
  TapeScope scope(tape);
  Variable x(Tensor::randn({4}, 1), false);
  Parameter frozen(Tensor::randn({4}, 2), "frozen", /*trainable=*/false);
  Variable y = relu(add(x, frozen));
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(tape.saved_bytes(), 0u);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_THROW(tape.backward(y), ValueError);
}

TEST(Autograd, RecordsOnlyFromFirstTrainable) {
  Tape tape;
  TapeScope scope(tape);
  Variable x(Tensor::randn({4}, 1), false);
  Parameter frozen(Tensor::randn({4}, 2), "frozen", false);
  Parameter trained(Tensor::randn({4}, 3), "trained", true);
  Variable h = relu(add(x, frozen));  // frozen prefix: no entries
  EXPECT_EQ(tape.size(), 0u);
  Variable y = relu(add(h, trained));
  EXPECT_EQ(tape.size(), 2u);
  tape.backward(y);
  EXPECT_FALSE(frozen.grad().defined());
  EXPECT_TRUE(trained.grad().defined());
  ASSERT_EQ(tape.last_backward().size(), 2u);
  EXPECT_EQ(tape.last_backward()[1].op, "add");
  EXPECT_FALSE(tape.last_backward()[1].input_grad_computed[0]);  // no data gradient into the frozen part
  EXPECT_TRUE(tape.last_backward()[1].input_grad_computed[1]);
  EXPECT_EQ(tape.size(), 0u);  // backward consumes the tape
}

TEST(Autograd, ParameterGradientsAccumulateUntilZeroed) {
  Parameter p(Tensor::from_values({1, -2, 3}, {3}), "p");
  Variable x(Tensor::from_values({1, 1, 1}, {3}));
  for (int step = 0; step < 2; ++step) backward(relu(add(p, x)));
  EXPECT_EQ(p.grad().to_doubles(), (std::vector<double>{2, 0, 2}));
  p.zero_grad();
  EXPECT_FALSE(p.grad().defined());
  backward(relu(add(p, x)));
  EXPECT_EQ(p.grad().to_doubles(), (std::vector<double>{1, 0, 1}));
}

TEST(Autograd, FanOutSumsGradientsWithoutCorruptingAliases) {
  // y = (a + a) + a: add's gradient aliases dy, and three contributions reach `a`.
  Parameter a(Tensor::from_values({1, 2}, {2}), "a");
  Variable b = add(a, a);
  Variable y = add(b, a);
  b.retain_grad();
  backward(y);
  EXPECT_EQ(a.grad().to_doubles(), (std::vector<double>{3, 3}));
  EXPECT_EQ(b.grad().to_doubles(), (std::vector<double>{1, 1}));
}

// The leaf-ready callback (data-parallel overlap): each trainable leaf that an entry feeds is reported once, with
// its final gradient, after its LAST accumulation: `a` is fed by the last-recorded entry (walked first) and by the
// first-recorded one, so reporting it at its first accumulation would show [1, 1] instead of [2, 1]. A leaf whose
// only entry gets no gradient (`c`: its output is not on the path to y) is reported with none; frozen and unused
// leaves are not reported.
TEST(Autograd, LeafReadyReportsEachTrainableLeafOnceAfterItsLastAccumulation) {
  Tape tape;
  TapeScope scope(tape);
  Parameter a(Tensor::from_values({1, 2}, {2}), "a"), b(Tensor::from_values({3, -4}, {2}), "b");
  Parameter c(Tensor::from_values({5, 6}, {2}), "c"), unused(Tensor::from_values({7, 8}, {2}), "unused");
  Parameter frozen(Tensor::from_values({0, 0}, {2}), "frozen", false);
  Variable side = relu(c);                 // entry 0: walked last, its output gets no gradient
  Variable h = add(a, frozen);             // entry 1: a's last accumulation
  Variable y = add(relu(add(h, b)), a);    // entries 2, 3 (b) and 4 (a's first accumulation)
  std::vector<std::pair<std::string, std::vector<double>>> reported;
  const std::vector<const Parameter*> params = {&a, &b, &c, &unused, &frozen};
  tape.backward(y, Tensor(), [&](const GradNode& leaf) {
    for (const Parameter* p : params)
      if (p->node().get() == &leaf)
        reported.emplace_back(p->name(), leaf.grad.defined() ? leaf.grad.to_doubles() : std::vector<double>{});
  });
  using Reports = std::vector<std::pair<std::string, std::vector<double>>>;
  EXPECT_EQ(reported, (Reports{{"b", {1, 0}}, {"a", {2, 1}}, {"c", {}}}));
  EXPECT_EQ(a.grad().to_doubles(), (std::vector<double>{2, 1}));
}

// A parameter used inside checkpoint() gets its gradient in the recomputation's backward: it is reported after
// the checkpoint entry (here its last accumulation; `w` also feeds an entry recorded after it), once, with its final
// gradient; the checkpoint's own input `x` too.
TEST(Autograd, LeafReadyReportsParametersUsedInsideACheckpoint) {
  Tape tape;
  TapeScope scope(tape);
  Parameter w(Tensor::from_values({1, -3}, {2}), "w");
  Variable x(Tensor::from_values({2, 2}, {2}), true);
  Variable h = checkpoint([&](const std::vector<Variable>& in) { return relu(add(in[0], w)); }, {x});
  Variable y = add(h, w);
  std::vector<std::pair<std::string, std::vector<double>>> reported;
  tape.backward(y, Tensor(), [&](const GradNode& leaf) {
    const std::string name = &leaf == w.node().get() ? "w" : &leaf == x.node().get() ? "x" : "?";
    reported.emplace_back(name, leaf.grad.to_doubles());
  });
  std::sort(reported.begin(), reported.end());  // both after the same entry: in no particular order
  using Reports = std::vector<std::pair<std::string, std::vector<double>>>;
  EXPECT_EQ(reported, (Reports{{"w", {2, 1}}, {"x", {1, 0}}}));
}

TEST(Autograd, NonLeafGradientsAndSavedTensorsAreReleased) {
  Tape tape;
  TapeScope scope(tape);
  Parameter p(Tensor::randn({256}, 1), "p");
  Variable h = relu(p);
  Variable y = relu(h);
  EXPECT_EQ(tape.saved_bytes(), 2u * 256 * 4);  // each relu saves its output only
  tape.backward(y);
  EXPECT_FALSE(h.grad().defined());
  EXPECT_TRUE(p.grad().defined());
}

TEST(Autograd, NoGradGuardAndDeadEntriesArePruned) {
  Tape tape;
  TapeScope scope(tape);
  Parameter p(Tensor::randn({8}, 1), "p");
  {
    NoGradGuard guard;
    EXPECT_FALSE(relu(p).requires_grad());
  }
  EXPECT_EQ(tape.size(), 0u);
  for (int i = 0; i < 1000; ++i) relu(p);  // outputs dropped at once: the tape must not grow without bound
  EXPECT_LT(tape.size(), 200u);
}

TEST(Autograd, SetTrainableFalseDropsGradient) {
  Parameter p(Tensor::randn({3}, 1), "p");
  backward(relu(p));
  EXPECT_TRUE(p.grad().defined());
  p.set_trainable(false);
  EXPECT_FALSE(p.trainable());
  EXPECT_FALSE(p.grad().defined());
  EXPECT_EQ(p.name(), "p");
}

// Activation checkpointing: conv -> batch norm (training) -> relu, run through checkpoint() or directly, gives the
// same output, the same gradients for the input and every parameter, and updates the running statistics once; the
// checkpointed run keeps only its input. Nothing is recorded when nothing needs a gradient.
TEST(Autograd, CheckpointGivesTheSameGradientsAndUpdatesRunningStatsOnce) {
  struct Net {
    nn::Generator gen{5};
    nn::Conv2d conv{3, 4, 3, 1, 1, true, gen};
    nn::BatchNorm2d bn{4};
    Net() {
      conv.to_dtype(DType::F64);
      bn.to_dtype(DType::F64);
    }
    Variable operator()(const Variable& x) { return relu(bn(conv(x))); }
  };
  const Tensor x0 = Tensor::randn({2, 3, 6, 5}, 7, DType::F64);
  const Tensor r = Tensor::randn({2, 4, 6, 5}, 8, DType::F64);
  std::vector<double> outputs[2], grads_x[2], grads_w[2], grads_gamma[2], running_mean[2];
  size_t saved[2] = {0, 0};
  for (int use_checkpoint = 0; use_checkpoint < 2; ++use_checkpoint) {
    Net net;
    Tape tape;
    TapeScope scope(tape);
    Variable x(x0, true);
    Variable y = use_checkpoint ? checkpoint([&](const std::vector<Variable>& in) { return net(in[0]); }, {x})
                                : net(x);
    saved[use_checkpoint] = tape.saved_bytes();
    tape.backward(y, r);  // the gradient of sum(y * r)
    outputs[use_checkpoint] = y.value().to_doubles();
    grads_x[use_checkpoint] = x.grad().to_doubles();
    grads_w[use_checkpoint] = net.conv.weight.grad().to_doubles();
    grads_gamma[use_checkpoint] = net.bn.weight.grad().to_doubles();
    running_mean[use_checkpoint] = net.bn.buffers.running_mean.to_doubles();
    EXPECT_EQ(net.bn.buffers.num_batches_tracked, 1);
  }
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_EQ(grads_x[0], grads_x[1]);
  EXPECT_EQ(grads_w[0], grads_w[1]);
  EXPECT_EQ(grads_gamma[0], grads_gamma[1]);
  EXPECT_EQ(running_mean[0], running_mean[1]) << "the recomputation updated the running statistics again";
  EXPECT_LT(saved[1], saved[0]);
  EXPECT_EQ(saved[1], x0.nbytes()) << "checkpoint keeps its input only";

  // Nothing needs a gradient: a plain result, nothing recorded.
  Tape tape;
  TapeScope scope(tape);
  Variable frozen_in(x0, false);
  Variable y = checkpoint([](const std::vector<Variable>& in) { return relu(in[0]); }, {frozen_in});
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_FALSE(y.requires_grad());
}
