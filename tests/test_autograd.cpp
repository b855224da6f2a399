// The tape: what is recorded, gradient accumulation and release, aliasing safety, no-grad mode.
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
