// Fused concat + batch norm + ReLU (layers/concat_bn_relu.h): float64 gradient check; bit-for-bit equality with
// the unfused concat -> batch_norm2d -> relu (outputs, every gradient, running statistics, num_batches_tracked) in
// float32 and float64, NCHW and NHWC, training and eval, partial gradient requests; two layers of one block sharing
// the chunk statistics; densenet121 training steps (standard and memory-efficient) equal to the unfused model's,
// with the memory kept for the backward pass lower by what the shapes say.
#include "layers/concat_bn_relu.h"

#include <cstdio>
#include <map>

#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/conv2d.h"
#include "layers/loss.h"
#include "models/model.h"
#include "models/registry.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

// Chunks of different widths and different statistics (chunk k centred near k - 1, spread 1 + k / 2).
std::vector<Tensor> make_chunks(const std::vector<int64_t>& widths, DType dt, Layout layout, uint64_t seed,
                                int64_t n = 3, int64_t h = 5, int64_t w = 4) {
  std::vector<Tensor> xs;
  for (size_t k = 0; k < widths.size(); ++k) {
    const double lo = static_cast<double>(k) - 2.0, hi = lo + 2.0 + static_cast<double>(k);
    xs.push_back(Tensor::uniform({n, widths[k], h, w}, lo, hi, seed + k, dt, Device::CPU, layout));
  }
  return xs;
}

int64_t total_channels(const std::vector<Tensor>& xs) {
  int64_t c = 0;
  for (const Tensor& x : xs) c += x.size(1);
  return c;
}

BatchNormBuffers random_buffers(int64_t c, DType dt, uint64_t seed) {
  BatchNormBuffers b;
  b.running_mean = Tensor::uniform({c}, -0.5, 0.5, seed, dt);
  b.running_var = Tensor::uniform({c}, 0.5, 2.0, seed + 1, dt);
  b.num_batches_tracked = 7;
  return b;
}

std::vector<double> values(const Tensor& t) { return t.defined() ? t.to_doubles() : std::vector<double>{}; }

// One layer's result: output, the gradients that arrived, the running statistics.
struct Result {
  std::vector<double> y, rm, rv;
  int64_t tracked = 0;
  std::vector<std::vector<double>> grads;  // per chunk, then gamma, then beta (empty: no gradient)
};

struct LayerCase {
  std::vector<Tensor> xs;
  std::vector<bool> chunk_grad;
  bool gamma_grad = true, beta_grad = true;
  BatchNormOptions opt;
};

// y = relu(bn(concat(chunks))) fused or not, then backward with a fixed random seed.
Result run_layer(const LayerCase& s, bool fused) {
  const int64_t c = total_channels(s.xs);
  const DType dt = s.xs[0].dtype();
  std::vector<Variable> chunks;
  for (size_t k = 0; k < s.xs.size(); ++k) chunks.emplace_back(s.xs[k], s.chunk_grad[k]);
  Parameter gamma(Tensor::uniform({c}, 0.5, 1.5, 91, dt), "gamma", s.gamma_grad);
  Parameter beta(Tensor::uniform({c}, -0.5, 0.5, 92, dt), "beta", s.beta_grad);
  BatchNormBuffers buf = random_buffers(c, dt, 93);
  Tape tape;
  TapeScope scope(tape);
  ChunkStatsCache cache;
  const Variable y = fused ? concat_bn_relu(chunks, gamma, beta, buf, s.opt, cache)
                           : relu(batch_norm2d(chunks.size() == 1 ? chunks[0] : concat(chunks, 1), gamma, beta, buf,
                                               s.opt));
  Result r{values(y.value()), values(buf.running_mean), values(buf.running_var), buf.num_batches_tracked, {}};
  if (y.requires_grad()) {
    const Tensor seed = Tensor::randn(y.shape(), 94, dt, Device::CPU, y.value().layout());
    tape.backward(y, seed);
  }
  for (const Variable& v : chunks) r.grads.push_back(values(v.grad()));
  r.grads.push_back(values(gamma.grad()));
  r.grads.push_back(values(beta.grad()));
  return r;
}

void expect_same(const Result& fused, const Result& plain, const std::string& what) {
  EXPECT_EQ(fused.y, plain.y) << what << ": output";
  EXPECT_EQ(fused.rm, plain.rm) << what << ": running_mean";
  EXPECT_EQ(fused.rv, plain.rv) << what << ": running_var";
  EXPECT_EQ(fused.tracked, plain.tracked) << what << ": num_batches_tracked";
  ASSERT_EQ(fused.grads.size(), plain.grads.size());
  for (size_t i = 0; i < fused.grads.size(); ++i) EXPECT_EQ(fused.grads[i], plain.grads[i]) << what << ": gradient " << i;
}

}  // namespace

// Central differences in float64, training mode, 3 chunks of different widths: chunks, gamma, beta; and partial
// requests. A fresh cache per evaluation (the statistics change with every perturbed input).
TEST(ConcatBnRelu, GradcheckTrainFloat64) {
  const std::vector<Tensor> xs = make_chunks({1, 3, 2}, DType::F64, Layout::NCHW, 5, 2, 3, 2);
  std::vector<Tensor> in = xs;
  in.push_back(Tensor::uniform({6}, 0.5, 1.5, 9, DType::F64));
  in.push_back(Tensor::uniform({6}, -0.3, 0.3, 10, DType::F64));
  auto fn = [](const std::vector<Variable>& v) {
    BatchNormBuffers buf = random_buffers(6, DType::F64, 3);
    ChunkStatsCache cache;
    BatchNormOptions opt;
    EXPECT_TRUE(concat_bn_relu_fused({v[0], v[1], v[2]}, opt));
    return concat_bn_relu({v[0], v[1], v[2]}, v[3], v[4], buf, opt, cache);
  };
  expect_gradcheck(fn, in, {true, true, true, true, true});
  expect_gradcheck(fn, in, {false, true, false, false, true});
  expect_gradcheck(fn, in, {true, false, false, true, false});
  expect_gradcheck(fn, in, {false, false, false, false, true});  // dbeta alone: nothing but y is kept
}

// Fused == unfused, bit for bit, over dtypes, layouts, modes and gradient requests.
TEST(ConcatBnRelu, MatchesConcatBatchNormReluExactly) {
  for (DType dt : {DType::F32, DType::F64})
    for (Layout layout : {Layout::NCHW, Layout::NHWC})
      for (bool training : {true, false})
        for (int grads = 0; grads < 5; ++grads) {
          LayerCase s;
          s.xs = make_chunks({4, 3, 5}, dt, layout, 20 + grads);
          // 0: all; 1: middle chunk without; 2: gamma/beta frozen; 3: only the parameters; 4: only beta
          s.chunk_grad = {grads < 3, grads != 1 && grads < 3, grads < 3};
          s.gamma_grad = grads != 2 && grads != 4;
          s.beta_grad = grads != 2;
          s.opt.training = training;
          s.opt.momentum = 0.3;
          const std::string what = std::string(dtype_name(dt)) + (layout == Layout::NHWC ? " NHWC" : " NCHW") +
                                   (training ? " train" : " eval") + " grads case " + std::to_string(grads);
          expect_same(run_layer(s, true), run_layer(s, false), what);
        }
}

// One chunk (a block's first layer) and a single-channel chunk among wide ones; no gradient at all (running
// statistics still update, nothing is recorded).
TEST(ConcatBnRelu, OneChunkAndNoGradient) {
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    LayerCase s;
    s.xs = make_chunks({6}, DType::F32, layout, 40, 2, 3, 3);
    s.chunk_grad = {true};
    expect_same(run_layer(s, true), run_layer(s, false), "one chunk");
    s.xs = make_chunks({1, 17, 1}, DType::F32, layout, 41, 4, 7, 7);
    s.chunk_grad = {false, false, false};
    s.gamma_grad = s.beta_grad = false;
    expect_same(run_layer(s, true), run_layer(s, false), "no gradient");
  }
}

// Layers i and i + 1 of one block: the second reads the first's chunks and one more, through one statistics cache
// (each chunk's statistics computed once), and its chunk gradients add up on the tape. The same as two independent
// unfused layers.
TEST(ConcatBnRelu, TwoLayersShareTheChunkStatistics) {
  for (DType dt : {DType::F32, DType::F64})
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      const std::vector<Tensor> xs = make_chunks({3, 2, 2}, dt, layout, 60);
      auto run = [&](bool fused) {
        std::vector<Variable> chunks;
        for (const Tensor& x : xs) chunks.emplace_back(x, true);
        std::vector<Parameter> params;
        std::vector<BatchNormBuffers> bufs;
        for (int64_t c : {5, 7}) {
          params.emplace_back(Tensor::uniform({c}, 0.5, 1.5, 70 + c, dt), "gamma", true);
          params.emplace_back(Tensor::uniform({c}, -0.5, 0.5, 80 + c, dt), "beta", true);
          bufs.push_back(random_buffers(c, dt, 90 + c));
        }
        Tape tape;
        TapeScope scope(tape);
        ChunkStatsCache cache;
        BatchNormOptions opt;
        std::vector<Variable> outs;
        for (size_t layer = 0; layer < 2; ++layer) {
          const std::vector<Variable> in(chunks.begin(), chunks.begin() + static_cast<std::ptrdiff_t>(layer + 2));
          outs.push_back(fused ? concat_bn_relu(in, params[2 * layer], params[2 * layer + 1], bufs[layer], opt, cache)
                               : relu(batch_norm2d(concat(in, 1), params[2 * layer], params[2 * layer + 1],
                                                   bufs[layer], opt)));
        }
        if (fused) {
          EXPECT_EQ(cache.computed(), 3u) << "each chunk's statistics once";
        }
        const Variable both = concat(outs, 1);
        tape.backward(both, Tensor::randn(both.shape(), 99, dt, Device::CPU, layout));
        std::vector<std::vector<double>> r{values(both.value())};
        for (const Variable& v : chunks) r.push_back(values(v.grad()));
        for (const Parameter& p : params) r.push_back(values(p.grad()));
        for (const BatchNormBuffers& b : bufs) r.push_back(values(b.running_mean)), r.push_back(values(b.running_var));
        return r;
      };
      const auto fused = run(true), plain = run(false);
      ASSERT_EQ(fused.size(), plain.size());
      for (size_t i = 0; i < fused.size(); ++i) EXPECT_EQ(fused[i], plain[i]) << dtype_name(dt) << " item " << i;
    }
}

// Under checkpoint() (--memory-efficient): the recomputation in the backward pass reads the same cached chunk
// statistics and does not update the running statistics again; outputs, gradients and buffers are those of the
// plain fused run.
TEST(ConcatBnRelu, UnderCheckpointUpdatesTheRunningStatisticsOnce) {
  for (DType dt : {DType::F32, DType::F64}) {
    const std::vector<Tensor> xs = make_chunks({2, 3}, dt, Layout::NHWC, 30);
    auto run = [&](bool checkpointed) {
      std::vector<Variable> chunks;
      for (const Tensor& x : xs) chunks.emplace_back(x, true);
      Parameter gamma(Tensor::uniform({5}, 0.5, 1.5, 31, dt), "gamma", true);
      Parameter beta(Tensor::uniform({5}, -0.5, 0.5, 32, dt), "beta", true);
      BatchNormBuffers buf = random_buffers(5, dt, 33);
      Tape tape;
      TapeScope scope(tape);
      auto cache = std::make_shared<ChunkStatsCache>();
      auto fn = [&, cache](const std::vector<Variable>& in) {
        return concat_bn_relu(in, gamma, beta, buf, BatchNormOptions(), *cache);
      };
      const Variable y = checkpointed ? checkpoint(fn, chunks) : fn(chunks);
      tape.backward(y, Tensor::randn(y.shape(), 34, dt, Device::CPU, Layout::NHWC));
      EXPECT_EQ(cache->computed(), 2u);
      std::vector<std::vector<double>> r{values(y.value()), values(buf.running_mean), values(buf.running_var),
                                         {static_cast<double>(buf.num_batches_tracked)}};
      for (const Variable& v : chunks) r.push_back(values(v.grad()));
      r.push_back(values(gamma.grad()));
      r.push_back(values(beta.grad()));
      return r;
    };
    EXPECT_EQ(run(true), run(false)) << dtype_name(dt);
  }
}

// The cache refuses a different tensor at a position it has statistics for (a cache reused across forwards).
TEST(ConcatBnRelu, CacheRefusesAnotherTensor) {
  const std::vector<Tensor> a = make_chunks({2}, DType::F32, Layout::NCHW, 1), b = make_chunks({2}, DType::F32, Layout::NCHW, 2);
  ChunkStatsCache cache;
  cache.at(0, a[0]);
  EXPECT_NO_THROW(cache.at(0, a[0]));
  EXPECT_TRUE(contains(error_of([&] { cache.at(0, b[0]); }), "not the tensor"));
  EXPECT_EQ(cache.computed(), 1u);
}

// What does not run fused: eval mode, CUDA, other dtypes; mixed layouts go to concat, which names the problem.
TEST(ConcatBnRelu, FallsBackToTheComposition) {
  const std::vector<Tensor> xs = make_chunks({2, 2}, DType::F32, Layout::NCHW, 3);
  std::vector<Variable> v{Variable(xs[0]), Variable(xs[1])};
  BatchNormOptions opt;
  EXPECT_TRUE(concat_bn_relu_fused(v, opt));
  opt.training = false;
  EXPECT_FALSE(concat_bn_relu_fused(v, opt));
  opt.training = true;
  std::vector<Variable> mixed{Variable(xs[0]), Variable(xs[1].to_layout(Layout::NHWC))};
  EXPECT_FALSE(concat_bn_relu_fused(mixed, opt));
  BatchNormBuffers buf = random_buffers(4, DType::F32, 5);
  ChunkStatsCache cache;
  EXPECT_TRUE(contains(error_of([&] {
                         concat_bn_relu(mixed, Variable(Tensor::full({4}, 1.0)), Variable(Tensor::zeros({4})), buf,
                                        opt, cache);
                       }),
                       "layout"));
}

namespace {
// One densenet121 training step (batch 4, 64 px, float32 CPU in `layout`): loss, parameter gradients, buffers, and
// the memory the forward keeps for the backward pass.
struct Step {
  double loss = 0;
  size_t kept = 0, peak = 0;
  std::map<std::string, std::vector<double>> grads, buffers;
};
Step densenet_step(bool fused, bool efficient, Layout layout) {
  const Tensor x = Tensor::randn({4, 3, 64, 64}, 3);
  const Tensor labels = Tensor::from_values({0, 1, 2, 1}, {4}, DType::I32);
  auto m = models::create_model("densenet121", 3, 0);
  EXPECT_TRUE(m->set_fused_concat_norm(fused));
  EXPECT_TRUE(m->set_memory_efficient(efficient));
  m->to(Device::CPU, layout);
  m->train();
  Step s;
  Tape tape;
  TapeScope scope(tape);
  const Tensor input = x.to(Device::CPU, DType::F32, layout);
  reset_peak_memory(Device::CPU);
  const size_t before = memory_stats(Device::CPU).current_bytes;
  Variable loss = cross_entropy(m->forward(Variable(input)), labels);
  s.kept = memory_stats(Device::CPU).current_bytes - before;
  tape.backward(loss);
  s.peak = memory_stats(Device::CPU).peak_bytes - before;
  s.loss = loss.value().item();
  for (auto& [name, p] : m->named_parameters()) s.grads[name] = p.grad().to_doubles();
  for (const nn::StateEntry& e : m->state())
    if (e.buffer) s.buffers[e.name] = e.buffer->to_doubles();
  return s;
}

// What the unfused forward keeps and the fused one does not, from densenet121's shapes (batch 4, 64 px: blocks at
// 16, 8, 4, 2 px): each dense layer's concatenation (layers with 2 or more chunks) and norm1's saved mean and invstd
// tensors (2 C float32); less what the fused op keeps that the unfused one frees: the layer outputs that later
// layers read (every layer's but the block's last), which the fused backward reads in place.
int64_t expected_saving() {
  const int64_t n = 4, growth = 32, f = 4;
  const int layers[] = {6, 12, 24, 16};
  const int64_t sides[] = {16, 8, 4, 2};
  int64_t c0 = 64, saving = 0;
  for (int b = 0; b < 4; ++b) {
    const int64_t hw = sides[b] * sides[b];
    for (int l = 0; l < layers[b]; ++l) {
      const int64_t c = c0 + l * growth;
      if (l >= 1) saving += n * c * hw * f;
      saving += 2 * c * f;
      if (l + 1 < layers[b]) saving -= n * growth * hw * f;
    }
    c0 = (c0 + layers[b] * growth) / 2;
  }
  return saving;
}

void expect_same_step(const Step& a, const Step& b, const std::string& what) {
  EXPECT_EQ(a.loss, b.loss) << what;
  EXPECT_EQ(a.buffers, b.buffers) << what << ": running statistics";
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (const auto& [name, g] : a.grads) EXPECT_EQ(g, b.grads.at(name)) << what << ": " << name;
}
}  // namespace

// densenet121, one training step: the fused norm1 gives the unfused model's loss, gradients and running statistics
// bit for bit (standard and memory-efficient), and the standard step keeps exactly expected_saving() bytes less
// for the backward pass (the memory-efficient one keeps the same: the recomputed bottleneck keeps nothing anyway).
TEST(DenseNet, FusedConcatNormGivesTheSameStepWithLessMemory) {
  const Layout layout = conv2d_cpu_float32_layout();
  const Step plain = densenet_step(false, false, layout), fused = densenet_step(true, false, layout);
  expect_same_step(fused, plain, "standard");
  EXPECT_EQ(static_cast<int64_t>(plain.kept) - static_cast<int64_t>(fused.kept), expected_saving())
      << "kept for backward: unfused " << plain.kept << ", fused " << fused.kept;
  EXPECT_LT(fused.peak, plain.peak);
  const Step plain_me = densenet_step(false, true, layout), fused_me = densenet_step(true, true, layout);
  expect_same_step(fused_me, plain_me, "memory-efficient");
  EXPECT_EQ(fused_me.kept, plain_me.kept);
  std::printf("densenet121 64 px batch 4, kept for backward / step peak (MB): unfused %.2f / %.2f, fused %.2f / %.2f, "
              "memory-efficient unfused %.2f / %.2f, fused %.2f / %.2f\n",
              plain.kept / 1e6, plain.peak / 1e6, fused.kept / 1e6, fused.peak / 1e6, plain_me.kept / 1e6,
              plain_me.peak / 1e6, fused_me.kept / 1e6, fused_me.peak / 1e6);
}

// The other layout (NCHW when the CPU default is NHWC, and the reverse): the same step, fused or not.
TEST(DenseNet, FusedConcatNormGivesTheSameStepInTheOtherLayout) {
  const Layout other = conv2d_cpu_float32_layout() == Layout::NHWC ? Layout::NCHW : Layout::NHWC;
  expect_same_step(densenet_step(true, false, other), densenet_step(false, false, other), "other layout");
}
