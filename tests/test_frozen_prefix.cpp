// A conv / batch-norm / ReLU stack with a frozen prefix: the frozen part records no tape entries and saves no
// tensors, no data gradient is computed below the first trainable layer, and frozen parameters get no gradient.
#include "layers/activation.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {
struct Block {
  Parameter w, gamma, beta;
  BatchNormBuffers buffers;
  Block(int64_t cin, int64_t cout, uint64_t seed, const std::string& name, Device dev)
      : w(Tensor::randn({cout, cin, 3, 3}, seed, DType::F32, dev), name + ".conv.weight"),
        gamma(Tensor::uniform({cout}, 0.5, 1.5, seed + 1, DType::F32, dev), name + ".bn.weight"),
        beta(Tensor::randn({cout}, seed + 2, DType::F32, dev), name + ".bn.bias") {
    buffers.running_mean = Tensor::zeros({cout}, DType::F32, dev);
    buffers.running_var = Tensor::full({cout}, 1.0, DType::F32, dev);
  }
  Variable operator()(const Variable& x) {
    Conv2dOptions o;
    o.pad_h = o.pad_w = 1;
    return relu(batch_norm2d(conv2d(x, w, Variable(), o), gamma, beta, buffers, BatchNormOptions{}));
  }
  void set_trainable(bool t) {
    w.set_trainable(t);
    gamma.set_trainable(t);
    beta.set_trainable(t);
  }
};

void run_frozen_prefix(Device dev) {
  Block b1(3, 4, 10, "b1", dev), b2(4, 4, 20, "b2", dev), b3(4, 5, 30, "b3", dev);
  b1.set_trainable(false);
  b2.set_trainable(false);
  Variable x(Tensor::randn({2, 3, 6, 6}, 1, DType::F32, dev));
  Tape tape;
  TapeScope scope(tape);
  const Tensor mean_before = b1.buffers.running_mean.clone();
  Variable h = b2(b1(x));
  // 1. The frozen prefix records nothing and saves nothing; its batch norms still update running stats.
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(tape.saved_bytes(), 0u);
  EXPECT_FALSE(h.requires_grad());
  EXPECT_GT(rel_error(b1.buffers.running_mean, mean_before), 0.0) << "frozen BN in train mode must update stats";
  EXPECT_EQ(b1.buffers.num_batches_tracked, 1);
  // 2. From the first trainable layer on: conv, bn, relu are recorded.
  Variable y = b3(h);
  ASSERT_EQ(tape.size(), 3u);
  EXPECT_EQ(tape.entries()[0].op, "conv2d");
  // The first trainable conv saves its input (for the weight gradient) but not its weight (no data gradient).
  EXPECT_EQ(tape.entries()[0].saved_bytes, h.value().nbytes());
  tape.backward(y, Tensor::randn(y.shape(), 5, DType::F32, dev));
  // 3. No data gradient below the first trainable layer; frozen parameters have none.
  const auto& rec = tape.last_backward();
  ASSERT_EQ(rec.size(), 3u);
  EXPECT_EQ(rec.back().op, "conv2d");
  EXPECT_FALSE(rec.back().input_grad_computed[0]) << "data gradient computed into the frozen prefix";
  EXPECT_TRUE(rec.back().input_grad_computed[1]);
  for (Parameter* p : {&b1.w, &b1.gamma, &b1.beta, &b2.w, &b2.gamma, &b2.beta})
    EXPECT_FALSE(p->grad().defined()) << p->name();
  for (Parameter* p : {&b3.w, &b3.gamma, &b3.beta}) EXPECT_TRUE(p->grad().defined()) << p->name();
}
}  // namespace

TEST(FrozenPrefix, ConvBnReluStackCpu) { run_frozen_prefix(Device::CPU); }

TEST(FrozenPrefix, ConvBnReluStackCuda) {
  TL_REQUIRE_CUDA();
  run_frozen_prefix(Device::CUDA);
}
