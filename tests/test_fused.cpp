// Conv + batch-norm folding (layers/fused.h): a folded frozen prefix (--freeze-bn, or eval mode) gives the same
// logits and head gradients as the unfolded ops (float32 1e-5, float64 1e-10) for resnet18, resnet50 and
// vgg16_bn, records nothing on the tape, and folds every pair; with PyTorch's default (batch statistics) nothing
// folds and the running statistics update; a partly frozen model folds exactly its frozen prefix; the cache follows
// weight changes; CUDA matches the CPU.
#include <map>

#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/fused.h"
#include "models/model.h"
#include "models/registry.h"
#include "train/freeze.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

// Folding on or off for one scope (restored afterwards).
using Folding = ConvBnFoldingGuard;

// Non-trivial batch norms (a fresh model has gamma 1, beta 0, mean 0, var 1, which would fold to almost nothing).
void randomize_batch_norms(nn::Module& m, uint64_t seed) {
  for (auto& [name, mod] : m.named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNorm2d*>(mod);
    if (!bn) continue;
    const Shape s = bn->weight.shape();
    bn->weight.mutable_value() = Tensor::uniform(s, 0.5, 1.5, seed++);
    bn->bias.mutable_value() = Tensor::uniform(s, -0.3, 0.3, seed++);
    bn->buffers.running_mean = Tensor::uniform(s, -0.3, 0.3, seed++);
    bn->buffers.running_var = Tensor::uniform(s, 0.5, 2.0, seed++);
  }
  nn::invalidate_derived_state();
}

std::map<std::string, Tensor> take_grads(models::Model& m) {
  std::map<std::string, Tensor> out;
  for (auto& [name, p] : m.named_parameters()) {
    if (p.grad().defined()) out[name] = p.grad().clone();
    p.zero_grad();
  }
  return out;
}

int64_t batches_tracked(models::Model& m) {
  int64_t n = 0;
  for (nn::StateEntry& e : m.state())
    if (e.counter) n += *e.counter;
  return n;
}

struct Pass {
  Tensor logits;
  std::map<std::string, Tensor> grads;
  size_t tape_entries = 0, saved_bytes = 0;
  int64_t folded = 0, pairs = 0;
  std::string first_op;
};

// One forward + backward (seeded upstream gradient) on a fresh tape.
Pass run_pass(models::Model& m, const Tensor& x, bool folding) {
  Folding scope_folding(folding);
  Tape tape;
  TapeScope scope(tape);
  Pass p;
  Variable y = m.forward(Variable(x));
  p.logits = y.value().clone();
  p.tape_entries = tape.size();
  p.saved_bytes = tape.saved_bytes();
  if (tape.size() > 0) p.first_op = tape.entries().front().op;
  p.folded = m.folded_conv_bn();
  p.pairs = m.conv_bn_pairs();
  if (y.requires_grad()) tape.backward(y, Tensor::randn(y.shape(), 77, y.value().dtype(), y.value().device()));
  p.grads = take_grads(m);
  return p;
}

void expect_same_grads(const Pass& a, const Pass& b, double tol, const std::string& what) {
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  ASSERT_FALSE(a.grads.empty()) << what << ": no gradient at all";
  for (const auto& [name, g] : a.grads) {
    ASSERT_TRUE(b.grads.count(name)) << what << ": " << name;
    expect_close(g, b.grads.at(name), tol, what + " grad " + name);
  }
}

int64_t expected_pairs(const std::string& arch) {
  if (arch == "resnet18") return 1 + 8 * 2 + 3;   // stem, 8 basic blocks x 2, 3 downsamples
  if (arch == "resnet50") return 1 + 16 * 3 + 4;  // stem, 16 bottlenecks x 3, 4 downsamples
  return 13;                                      // vgg16_bn
}

std::unique_ptr<models::Model> make(const std::string& arch, DType dt, const train::FreezeOptions& f) {
  auto m = models::create_model(arch, 5, /*seed=*/7);
  m->set_dropout(0.0);  // VGG: the same head in every pass
  randomize_batch_norms(*m, 1000);
  if (dt == DType::F64) m->to_dtype(DType::F64);
  train::apply_freeze(*m, f);
  return m;
}

// Frozen backbone: --freeze-bn in train mode, and eval mode with batch-statistics semantics: every pair folds,
// nothing but the head is on the tape, logits and head gradients match the unfolded ops, statistics untouched.
// Then PyTorch's default (--freeze-bn off) in train mode: nothing folds and every batch norm counts a batch.
// One model (VGG's constructor is slow on the CPU), float32 first, then converted to float64.
void check_frozen_backbone(const std::string& arch) {
  const int64_t pairs = expected_pairs(arch);
  train::FreezeOptions f;
  f.freeze = "backbone";
  auto m = make(arch, DType::F32, f);
  for (DType dt : {DType::F32, DType::F64}) {
    const double tol = dt == DType::F64 ? 1e-10 : 1e-5;
    if (dt == DType::F64) m->to_dtype(DType::F64);
    f.freeze_bn = true;
    train::apply_freeze(*m, f);
    const int64_t tracked = batches_tracked(*m);
    const Tensor x = Tensor::randn({2, 3, 32, 32}, 3, dt);
    for (bool eval_mode : {false, true}) {
      const std::string what = arch + (dt == DType::F64 ? " float64" : " float32") +
                               (eval_mode ? " eval" : " train --freeze-bn");
      if (eval_mode) {
        f.freeze_bn = false;
        train::apply_freeze(*m, f);
        m->eval();
      } else {
        m->train();
      }
      const Pass folded = run_pass(*m, x, true);
      const Pass plain = run_pass(*m, x, false);
      EXPECT_EQ(folded.folded, pairs) << what;
      EXPECT_EQ(folded.pairs, pairs) << what;
      EXPECT_EQ(plain.folded, 0) << what;
      EXPECT_EQ(plain.pairs, pairs) << what;
      // Only the head (one linear) is recorded, and it saves the same features either way.
      EXPECT_EQ(folded.tape_entries, 1u) << what;
      EXPECT_EQ(folded.first_op, plain.first_op) << what;
      EXPECT_EQ(folded.tape_entries, plain.tape_entries) << what;
      EXPECT_EQ(folded.saved_bytes, plain.saved_bytes) << what;
      expect_close(folded.logits, plain.logits, tol, what + " logits");
      expect_same_grads(folded, plain, tol, what);
      EXPECT_EQ(folded.grads.size(), 2u) << what << ": only the head's weight and bias train";
      EXPECT_EQ(batches_tracked(*m), tracked) << what << ": running statistics must not update";
    }
    f.freeze_bn = false;
    train::apply_freeze(*m, f);
    m->train();
    const Pass batch_stats = run_pass(*m, x, true);
    EXPECT_EQ(batch_stats.folded, 0) << arch << " batch statistics";
    EXPECT_EQ(batch_stats.pairs, pairs) << arch << " batch statistics";
    EXPECT_EQ(batches_tracked(*m), tracked + pairs) << arch << ": every batch norm counts one batch";
  }
}

}  // namespace

TEST(FusedConvBn, Resnet18FrozenBackboneFoldsAndMatches) { check_frozen_backbone("resnet18"); }
TEST(FusedConvBn, Resnet50FrozenBackboneFoldsAndMatches) { check_frozen_backbone("resnet50"); }
TEST(FusedConvBn, Vgg16BnFrozenBackboneFoldsAndMatches) { check_frozen_backbone("vgg16_bn"); }

// PyTorch's default (frozen batch norm keeps batch statistics in train()): nothing folds, the running statistics
// update, and the result is bit for bit the unfolded ops'. Trainable layers in eval mode do not fold either.
TEST(FusedConvBn, BatchStatisticsAndTrainableLayersAreNotFolded) {
  for (const std::string arch : {"resnet18"}) {
    train::FreezeOptions f;
    f.freeze = "backbone";
    f.freeze_bn = false;
    auto a = make(arch, DType::F32, f), b = make(arch, DType::F32, f);
    a->train();
    b->train();
    Tensor mean_before;
    for (nn::StateEntry& e : a->state())
      if (e.buffer && e.name.find("running_mean") != std::string::npos) {
        mean_before = e.buffer->clone();
        break;
      }
    const Tensor x = Tensor::randn({2, 3, 32, 32}, 4);
    const Pass on = run_pass(*a, x, true), off = run_pass(*b, x, false);
    EXPECT_EQ(on.folded, 0) << arch;
    EXPECT_EQ(on.pairs, expected_pairs(arch)) << arch;
    EXPECT_EQ(on.logits.to_doubles(), off.logits.to_doubles()) << arch;
    EXPECT_EQ(batches_tracked(*a), expected_pairs(arch)) << arch << ": every batch norm counts one batch";
    for (nn::StateEntry& e : a->state())
      if (e.buffer && e.name.find("running_mean") != std::string::npos) {
        EXPECT_GT(rel_error(*e.buffer, mean_before), 0.0) << arch << ": running mean did not update";
        break;
      }
  }
  // Everything trainable, eval mode: running statistics, but the weights train -> unfolded.
  auto m = models::create_model("resnet18", 5, 7);
  m->eval();
  const Pass p = run_pass(*m, Tensor::randn({2, 3, 32, 32}, 4), true);
  EXPECT_EQ(p.folded, 0);
  EXPECT_EQ(p.pairs, expected_pairs("resnet18"));
}

// --freeze until=layer2 --freeze-bn on resnet18: exactly the prefix folds (stem 1 + layer1 4 + layer2 5), the
// trainable part (layer3, layer4, fc, with batch statistics) gets the same gradients, and the tape starts there.
TEST(FusedConvBn, PartlyFrozenResnetFoldsOnlyItsPrefix) {
  for (DType dt : {DType::F32, DType::F64}) {
    const double tol = dt == DType::F64 ? 1e-10 : 1e-5;
    train::FreezeOptions f;
    f.freeze = "until=layer2";
    f.freeze_bn = true;
    auto m = make("resnet18", dt, f);
    m->train();
    // 64x64: layer4's train-mode batch norm then sees 8 values per channel (2 at 32x32, too ill-conditioned to
    // compare two float32 summation orders).
    const Tensor x = Tensor::randn({2, 3, 64, 64}, 5, dt);
    // The trainable batch norms update their statistics in each pass: run the two paths on identical models.
    auto m2 = make("resnet18", dt, f);
    m2->train();
    const Pass folded = run_pass(*m, x, true), plain = run_pass(*m2, x, false);
    EXPECT_EQ(folded.folded, 10);
    EXPECT_EQ(folded.pairs, 20);
    EXPECT_EQ(folded.tape_entries, plain.tape_entries);
    EXPECT_EQ(folded.saved_bytes, plain.saved_bytes);
    EXPECT_EQ(folded.first_op, "conv2d");  // layer3.0.conv1
    expect_close(folded.logits, plain.logits, tol, "until=layer2 logits");
    if (dt == DType::F64) {
      // float32 gradients below the head cross ReLU masks that rounding can flip (see test_models.cpp):
      // compare every trainable gradient in float64, the head in float32.
      expect_same_grads(folded, plain, tol, "until=layer2 float64");
    } else {
      for (const char* name : {"fc.weight", "fc.bias"})
        expect_close(folded.grads.at(name), plain.grads.at(name), tol, std::string("until=layer2 float32 ") + name);
    }
    for (const auto& [name, g] : folded.grads)
      EXPECT_TRUE(name.rfind("layer3", 0) == 0 || name.rfind("layer4", 0) == 0 || name.rfind("fc", 0) == 0) << name;
  }
}

namespace {
// A single frozen conv + batch norm pair (optionally with a conv bias, groups, stride) on `dev`.
struct Pair {
  nn::Generator gen{11};
  nn::Conv2d conv;
  nn::BatchNorm2d bn;
  nn::ConvBn unit;
  Pair(int64_t cin, int64_t cout, int stride, bool bias, int groups, DType dt, Device dev, Layout layout)
      : conv(cin, cout, 3, stride, 1, bias, gen, groups), bn(cout), unit(conv, bn) {
    randomize_batch_norms(bn, 50);
    if (dt == DType::F64) {
      conv.to_dtype(dt);
      bn.to_dtype(dt);
    }
    conv.to(dev, layout);
    bn.to(dev);
    nn::set_trainable(conv, false);
    nn::set_trainable(bn, false);
    bn.eval();
  }
  Variable unfolded(const Variable& x, const Variable* residual, bool relu) {
    Folding off(false);
    return unit(x, relu, residual);
  }
};

// The reference: the plain ops spelled out.
Variable reference(Pair& p, const Variable& x, const Variable* residual, bool relu) {
  Variable h = p.bn(p.conv(x));
  if (residual) h = add(h, *residual);
  return relu ? tl::relu(h) : h;
}
}  // namespace

// The op itself: conv bias, groups, stride, residual, with and without ReLU, NHWC, float32 and float64, against
// the plain ops; the folded weight formula against hand values; the cache follows changes; bad residual throws.
TEST(FusedConvBn, ConvBnActMatchesThePlainOpsAndTracksChanges) {
  for (DType dt : {DType::F32, DType::F64}) {
    const double tol = dt == DType::F64 ? 1e-12 : 1e-5;
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      for (int cfg = 0; cfg < 4; ++cfg) {
        const bool bias = cfg & 1, grouped = cfg & 2;
        const int stride = grouped ? 2 : 1;
        Pair p(4, 6, stride, bias, grouped ? 2 : 1, dt, Device::CPU, layout);
        const Variable x(Tensor::randn({2, 4, 7, 7}, 9, dt).to_layout(layout));
        const int64_t ho = stride == 2 ? 4 : 7;
        const Variable r(Tensor::randn({2, 6, ho, ho}, 10, dt).to_layout(layout));
        for (bool relu : {false, true})
          for (const Variable* res : {static_cast<const Variable*>(nullptr), &r}) {
            const std::string what = std::string(dt == DType::F64 ? "f64" : "f32") +
                                      (layout == Layout::NHWC ? " NHWC" : " NCHW") + " cfg " + std::to_string(cfg) +
                                      (relu ? " relu" : "") + (res ? " residual" : "");
            ASSERT_TRUE(p.unit.can_fold(x, res)) << what;
            Tape tape;
            TapeScope scope(tape);
            const Variable y = p.unit(x, relu, res);
            EXPECT_EQ(tape.size(), 0u) << what;
            EXPECT_EQ(y.value().layout(), layout) << what;
            expect_close(y.value(), reference(p, x, res, relu).value(), tol, what);
          }
      }
    }
  }
  // Folded weight and bias by hand: w' = w * g / sqrt(v + eps), b' = beta + (b - mean) * g / sqrt(v + eps).
  {
    Pair p(1, 2, 1, true, 1, DType::F64, Device::CPU, Layout::NCHW);
    const auto& f = p.unit.folded(DType::F64);
    const std::vector<double> w = p.conv.weight.value().to_doubles(), b = p.conv.bias.value().to_doubles(),
                              g = p.bn.weight.value().to_doubles(), beta = p.bn.bias.value().to_doubles(),
                              mean = p.bn.buffers.running_mean.to_doubles(),
                              var = p.bn.buffers.running_var.to_doubles();
    const std::vector<double> fw = f.weight.to_doubles(), fb = f.bias.to_doubles();
    for (int k = 0; k < 2; ++k) {
      const double s = g[k] / std::sqrt(var[k] + 1e-5);
      for (int j = 0; j < 9; ++j) EXPECT_NEAR(fw[k * 9 + j], w[k * 9 + j] * s, 1e-15);
      EXPECT_NEAR(fb[k], beta[k] + (b[k] - mean[k]) * s, 1e-15);
    }
  }
  // The cache is reused while nothing changed, and follows: writes through state() (as load_weights does), direct
  // writes with invalidate_derived_state(), and an unfreeze / update / refreeze cycle that bumps nothing itself.
  // Each change comes right after a folded call, so a stale cache would be used.
  {
    Pair p(3, 4, 1, false, 1, DType::F64, Device::CPU, Layout::NCHW);
    const Variable x(Tensor::randn({1, 3, 5, 5}, 12, DType::F64));
    auto folded = [&]() { return p.unit(x, true, nullptr).value(); };
    auto check = [&](const std::string& what) {
      expect_close(folded(), reference(p, x, nullptr, true).value(), 1e-12, what);
      EXPECT_TRUE(p.unit.cache().valid()) << what;
    };
    check("initial");
    const void* cached = p.unit.cache().weight.data();
    const Tensor y0 = folded().clone();
    EXPECT_EQ(p.unit.cache().weight.data(), cached) << "the cache was not reused";
    for (nn::StateEntry& e : p.bn.state())
      if (e.name == "running_var") e.buffer->copy_(Tensor::uniform({4}, 2.0, 3.0, 13, DType::F64));
    check("after a running_var write through state()");
    EXPECT_GT(rel_error(folded(), y0), 1e-3) << "stale fold";
    p.conv.weight.mutable_value().fill_(0.01);
    nn::invalidate_derived_state();
    check("after a direct weight write + invalidate_derived_state()");
    // Unfreeze: the next call is unfolded (drops the cache); an "optimizer step"; refreeze via the Parameter.
    p.conv.weight.set_trainable(true);
    EXPECT_FALSE(p.unit.can_fold(x, nullptr));
    p.unit(x, true, nullptr);
    EXPECT_FALSE(p.unit.cache().valid());
    p.conv.weight.mutable_value().fill_(-0.02);
    p.conv.weight.set_trainable(false);
    check("after unfreeze, update, refreeze");
    // Eval -> train with frozen_uses_running_stats keeps folding; the stamp changes, so it refolds (same values).
    p.bn.frozen_uses_running_stats = true;
    p.bn.train();
    check("train mode, --freeze-bn");
  }
  // Fallbacks: x needing a gradient, batch statistics, folding off. Bad residual: ShapeError.
  {
    Pair p(3, 4, 1, false, 1, DType::F32, Device::CPU, Layout::NCHW);
    const Variable xg(Tensor::randn({1, 3, 5, 5}, 14), true), x(Tensor::randn({1, 3, 5, 5}, 14));
    EXPECT_FALSE(p.unit.can_fold(xg, nullptr));
    {
      NoGradGuard no_grad;
      EXPECT_TRUE(p.unit.can_fold(xg, nullptr));
    }
    const Variable rg(Tensor::randn({1, 4, 5, 5}, 15), true);
    EXPECT_FALSE(p.unit.can_fold(x, &rg));
    p.bn.train();
    EXPECT_FALSE(p.unit.can_fold(x, nullptr));
    p.bn.frozen_uses_running_stats = true;
    EXPECT_TRUE(p.unit.can_fold(x, nullptr));
    {
      Folding off(false);
      EXPECT_FALSE(p.unit.can_fold(x, nullptr));
    }
    const Variable bad(Tensor::randn({1, 4, 4, 4}, 16));
    EXPECT_THROW(p.unit(x, true, &bad), ShapeError);
  }
}

TEST(FusedConvBn, CudaMatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  // The op: float32 (kCudaTol) and bfloat16 (kBf16Tol), NCHW and NHWC, with and without residual.
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (int cfg = 0; cfg < 4; ++cfg) {
      const bool bias = cfg & 1, grouped = cfg & 2;
      Pair cpu(4, 6, grouped ? 2 : 1, bias, grouped ? 2 : 1, DType::F32, Device::CPU, Layout::NCHW);
      Pair gpu(4, 6, grouped ? 2 : 1, bias, grouped ? 2 : 1, DType::F32, Device::CUDA, layout);
      const Tensor xh = Tensor::randn({2, 4, 7, 7}, 9);
      const int64_t ho = grouped ? 4 : 7;
      const Tensor rh = Tensor::randn({2, 6, ho, ho}, 10);
      for (const bool with_res : {false, true}) {
        const Variable xc(xh), rc(rh);
        const Tensor want = cpu.unit(xc, true, with_res ? &rc : nullptr).value();
        for (DType dt : {DType::F32, DType::BF16}) {
          const Variable xg(xh.to(Device::CUDA, dt, layout)), rg(rh.to(Device::CUDA, dt, layout));
          ASSERT_TRUE(gpu.unit.can_fold(xg, with_res ? &rg : nullptr));
          const Tensor got = gpu.unit(xg, true, with_res ? &rg : nullptr).value();
          EXPECT_EQ(got.layout(), layout);
          const Tensor unf = gpu.unfolded(xg, with_res ? &rg : nullptr, true).value();
          const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
          const std::string what = std::string(dt == DType::F32 ? "f32" : "bf16") +
                                   (layout == Layout::NHWC ? " NHWC" : " NCHW") + " cfg " + std::to_string(cfg) +
                                   (with_res ? " residual" : "");
          expect_close(got.to(Device::CPU, DType::F32, Layout::NCHW), want, tol, what + " vs CPU");
          expect_close(got.to(Device::CPU, DType::F32, Layout::NCHW), unf.to(Device::CPU, DType::F32, Layout::NCHW),
                       tol, what + " vs CUDA unfolded");
        }
      }
    }
  }
  // resnet18 with a frozen backbone under --freeze-bn: CUDA folded vs CPU folded, and vs CUDA unfolded.
  train::FreezeOptions f;
  f.freeze = "backbone";
  f.freeze_bn = true;
  auto cpu = make("resnet18", DType::F32, f);
  const Tensor x = Tensor::randn({2, 3, 32, 32}, 3);
  const Pass want = run_pass(*cpu, x, true);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    auto gpu = make("resnet18", DType::F32, f);
    gpu->to(Device::CUDA, layout);
    const Tensor xg = x.to(Device::CUDA, DType::F32, layout);
    const Pass folded = run_pass(*gpu, xg, true), plain = run_pass(*gpu, xg, false);
    EXPECT_EQ(folded.folded, 20);
    EXPECT_EQ(folded.tape_entries, 1u);
    expect_close(folded.logits.to(Device::CPU), want.logits, kCudaTol, "resnet18 CUDA vs CPU");
    expect_close(folded.logits, plain.logits, kCudaTol, "resnet18 CUDA folded vs unfolded");
    expect_close(folded.grads.at("fc.weight").to(Device::CPU), want.grads.at("fc.weight"), kCudaTol, "fc.weight grad");
  }
}
