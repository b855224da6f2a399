// Models against torchvision: the same logits (eval and train mode), parameter gradients and running statistics
// on the same weights, converted from a .pth by tools/convert_pth. Plus the registry, heads and load reports.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "layers/concat.h"
#include "layers/conv2d.h"
#include "layers/loss.h"
#include "models/model.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tl_testing.h"
#include "train/bench.h"
#include "train/flops.h"
#include "train/freeze.h"

using namespace tl;
using namespace tl::testing;

namespace {
constexpr double kModelTol = 1e-4;

struct ParityCase {
  std::string arch;
  int size;
};
std::ostream& operator<<(std::ostream& os, const ParityCase& c) { return os << c.arch << "_" << c.size; }

class ModelParity : public ::testing::TestWithParam<ParityCase> {};

// A strided sample g[::stride] of a flattened tensor (the reference stores large gradients that way).
Tensor strided(const Tensor& t, int64_t stride) {
  if (stride == 1) return t.reshape({t.numel()});
  std::vector<double> v = t.to_doubles(), out;
  for (size_t i = 0; i < v.size(); i += static_cast<size_t>(stride)) out.push_back(v[i]);
  return Tensor::from_values(out, {static_cast<int64_t>(out.size())}, t.dtype());
}
}  // namespace

// What float32 can be held to. Forward values (logits, running statistics) are compared within 1e-4 of PyTorch's
// float64 values wherever PyTorch's own float32 result is within 1e-5 of them (train-mode batch norm over the 8
// values per channel of a 2x2 last stage can make even the forward ill-conditioned). Parameter gradients are
// compared in float32 for the head only: below it, the backward pass crosses ReLU masks, and float32 rounding
// flips the mask of the few pre-activations within ~1e-7 of zero, each flip moving the gradients below it by a
// whole upstream value. Which elements flip depends on the order of float operations, so two correct float32
// implementations differ there by up to ~1e-1 (measured: PyTorch float32 vs float64 on resnet101 at 64x64).
// The float64 model checks every logit, statistic and gradient to 1e-7.
bool float32_meaningful(const io::TensorFile& ref, const std::string& key) { return ref.at("err." + key).item() < 1e-5; }

TEST_P(ModelParity, MatchesTorchvision) {
  const ParityCase& c = GetParam();
  // One folder per case: ctest runs cases in parallel, and two sizes of one architecture write the same file names.
  const std::string dir = scratch_dir("models/" + c.arch + "_" + std::to_string(c.size));
  run_torch_script("model_parity.py", c.arch + " " + std::to_string(c.size) + " " + dir);
  const std::string bin = dir + "/" + c.arch + ".bin";
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + dir + "/" + c.arch + ".pth " + bin, &log), 0) << log;
  const io::TensorFile ref = io::read_safetensors(dir + "/" + c.arch + "_ref.safetensors");

  for (DType dt : {DType::F32, DType::F64}) {
    const bool f64 = dt == DType::F64;
    const std::string tag = c.arch + (f64 ? " float64 " : " float32 ");
    auto model = models::create_model(c.arch, 10, /*seed=*/123);
    if (f64) model->to_dtype(DType::F64);
    models::LoadReport report = models::load_weights(*model, bin);
    EXPECT_TRUE(report.missing.empty() && report.skipped.empty() && report.unexpected.empty()) << report.summary();
    model->set_dropout(0.0);  // the reference VGG is built with dropout=0 so train mode is deterministic
    int checked = 0, total = 0;
    auto check = [&](const Tensor& ours, const std::string& key, bool float32_comparable) {
      ++total;
      double ref_max = 0, ours_max = 0;
      for (double v : ref.at(key).to_doubles()) ref_max = std::max(ref_max, std::fabs(v));
      if (ref_max < 1e-12) {  // exactly zero up to rounding: e.g. a convolution bias right before batch norm
        // In float32 the cancellation leaves rounding noise: bounded by 1e-4 or 10x what PyTorch's own float32
        // left (its relative error against the float64 zero, times that zero's size).
        const double torch32 = ref.at("err." + key).item() * ref_max;
        for (double v : ours.to_doubles()) ours_max = std::max(ours_max, std::fabs(v));
        EXPECT_LT(ours_max, f64 ? 1e-9 : std::max(1e-4, 10 * torch32))
            << tag << key << " should be zero (PyTorch float64: " << ref_max << ", float32: " << torch32 << ")";
      } else if (f64) {
        expect_close(ours, ref.at(key), 1e-7, tag + key);
      } else if (float32_comparable && float32_meaningful(ref, key)) {
        expect_close(ours, ref.at(key), kModelTol, tag + key);
        ++checked;
      }
    };
    Variable x(ref.at("x").to(dt));
    model->eval();
    {
      NoGradGuard no_grad;
      Tensor y_eval = model->forward(x).value();
      if (!f64) expect_close(y_eval, ref.at("y_eval"), kModelTol, tag + "eval logits");  // always well-conditioned
      check(y_eval, "y_eval", true);
    }
    model->train();
    Tape tape;
    TapeScope scope(tape);
    Variable y = model->forward(x);
    check(y.value(), "y_train", true);
    // Auxiliary classifiers (GoogLeNet, Inception v3): their logits, and their gradients through one backward of
    // all outputs side by side (names in sorted order, as the reference draws their gradients).
    std::vector<models::Model::AuxLogits> aux = model->take_aux_logits();
    std::sort(aux.begin(), aux.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    std::vector<Variable> outs{y};
    std::vector<Tensor> grads{ref.at("gy").to(dt)};
    for (const auto& a : aux) {
      check(a.logits.value(), "aux." + a.name, true);
      outs.push_back(a.logits);
      grads.push_back(ref.at("gy_aux." + a.name).to(dt));
    }
    ASSERT_EQ(aux.size(), model->has_aux() ? model->aux_modules().size() : 0u);
    if (aux.empty())
      tape.backward(y, grads[0]);
    else
      tape.backward(concat(outs, 1), concat_forward(grads, 1));
    for (nn::StateEntry& e : model->state())
      if (e.buffer) check(*e.buffer, "after." + e.name, true);
    for (auto& [name, p] : model->named_parameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
      const int64_t stride = static_cast<int64_t>(ref.at("gradstride." + name).item());
      check(strided(p.grad(), stride), "grad." + name, model->in_head(name));
    }
    if (!f64) {
      std::printf("%s: %d of %d values also compared in float32\n", c.arch.c_str(), checked, total);
      EXPECT_GE(checked, 3) << "the float32 comparison covered almost nothing";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Torchvision, ModelParity,
    ::testing::Values(ParityCase{"resnet18", 224}, ParityCase{"resnet34", 64}, ParityCase{"resnet50", 64},
                      ParityCase{"resnet101", 64}, ParityCase{"resnet152", 64}, ParityCase{"resnext50_32x4d", 64},
                      ParityCase{"wide_resnet50_2", 64}, ParityCase{"densenet121", 224},
                      ParityCase{"densenet161", 64}, ParityCase{"densenet169", 64}, ParityCase{"densenet201", 64},
                      ParityCase{"vgg16", 64}, ParityCase{"vgg16_bn", 64}, ParityCase{"vgg11", 64},
                      ParityCase{"vgg19_bn", 64}, ParityCase{"alexnet", 64},
                      ParityCase{"squeezenet1_0", 64}, ParityCase{"squeezenet1_1", 64}, ParityCase{"googlenet", 64},
                      ParityCase{"inception_v3", 75}, ParityCase{"inception_v3", 299}, ParityCase{"mobilenet_v2", 64},
                      ParityCase{"mobilenet_v2", 224}, ParityCase{"mnasnet0_5", 64}, ParityCase{"mnasnet1_3", 64},
                      ParityCase{"shufflenet_v2_x0_5", 64}, ParityCase{"shufflenet_v2_x1_0", 64},
                      ParityCase{"shufflenet_v2_x1_5", 64}, ParityCase{"shufflenet_v2_x2_0", 64},
                      ParityCase{"mnasnet0_75", 64}, ParityCase{"mnasnet1_0", 64}, ParityCase{"vgg11_bn", 64},
                      ParityCase{"vgg13", 64}, ParityCase{"vgg13_bn", 64}, ParityCase{"vgg19", 64}),
    [](const ::testing::TestParamInfo<ParityCase>& info) { return info.param.arch + "_" + std::to_string(info.param.size); });

TEST(Models, RegistryHeadsAndBlocks) {
  EXPECT_THROW(models::create_model("resnet19"), ValueError);
  auto r = models::create_model("resnet50", 1000, 0);
  EXPECT_EQ(r->head_name(), "fc");
  EXPECT_EQ(r->head_in_features(), 2048);
  EXPECT_EQ(r->blocks().front(), "conv1");
  auto d = models::create_model("densenet169", 5, 0);
  EXPECT_EQ(d->head_name(), "classifier");
  EXPECT_EQ(d->head_in_features(), 1664);
  auto v = models::create_model("vgg16_bn", 5, 0);
  EXPECT_EQ(v->head_name(), "classifier.6");
  EXPECT_EQ(v->head_in_features(), 4096);
  // Parameter names are torchvision's state_dict keys.
  auto params = r->named_parameters();
  EXPECT_EQ(params.front().first, "conv1.weight");
  EXPECT_EQ(params.back().first, "fc.bias");
  int64_t count = 0;
  for (auto& [n, p] : params) count += p.value().numel();
  EXPECT_EQ(count, 25557032);  // torchvision resnet50
  int64_t dcount = 0;
  for (auto& [n, p] : models::create_model("densenet121", 1000, 0)->named_parameters()) dcount += p.value().numel();
  EXPECT_EQ(dcount, 7978856);  // torchvision densenet121
}

// Every registered architecture answers what the rest of the code asks of it: its name, heads that exist and are
// Linear or 1x1 Conv2d layers, blocks that are state-dict prefixes in forward order and contain the heads, a
// last block, a new head for another class count that the forward uses, and a detectable state dict.
TEST(Models, EveryRegisteredArchitectureIsComplete) {
  const std::vector<std::string> names = models::model_names();
  for (const char* required : {"resnet18", "resnet152", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
                               "densenet201", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
                               "vgg19_bn", "alexnet", "squeezenet1_0", "squeezenet1_1", "googlenet", "inception_v3",
                               "mobilenet_v2", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
                               "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"})
    EXPECT_TRUE(std::find(names.begin(), names.end(), required) != names.end()) << required;
  for (const models::ArchSpec& spec : models::arch_specs()) {
    SCOPED_TRACE(spec.name);
    EXPECT_FALSE(spec.family.empty());
    EXPECT_GE(spec.input_size, 64);
    EXPECT_GE(spec.resize_size, spec.input_size);
    auto m = models::create_model(spec.name, 7, 1);
    EXPECT_EQ(m->arch(), spec.name);
    std::set<std::string> modules;
    for (auto& [n, mod] : m->named_modules()) modules.insert(n);
    const std::vector<std::string> blocks = m->blocks();
    for (const std::string& h : m->head_names()) {
      EXPECT_TRUE(modules.count(h)) << "head " << h;
      EXPECT_TRUE(std::find(blocks.begin(), blocks.end(), h) != blocks.end() ||
                  std::any_of(blocks.begin(), blocks.end(), [&](const std::string& b) { return h.rfind(b + ".", 0) == 0; }))
          << "head " << h << " in no block";
    }
    for (const std::string& b : blocks) EXPECT_TRUE(modules.count(b)) << "block " << b;
    for (const std::string& b : m->last_block()) EXPECT_TRUE(modules.count(b)) << "last block " << b;
    // The freeze plans train, bench and the CLI build: backbone trains the heads only, the last block adds more,
    // until=<a middle block> more again, none everything.
    train::FreezeOptions f;
    f.freeze = "backbone";
    const train::FreezePlan head = train::apply_freeze(*m, f);
    EXPECT_TRUE(m->in_head(head.first_trainable)) << head.first_trainable;
    const train::ModeFreeze last = train::mode_freeze(*m, "last_block");
    f.trainable = last.trainable;
    const int64_t last_params = train::apply_freeze(*m, f).trainable_params;
    EXPECT_GT(last_params, head.trainable_params);
    f.trainable.clear();
    f.freeze = "until=" + blocks[blocks.size() / 2];
    const int64_t until_params = train::apply_freeze(*m, f).trainable_params;
    EXPECT_GT(until_params, head.trainable_params);
    f.freeze = "none";
    EXPECT_GT(train::apply_freeze(*m, f).trainable_params, std::max(last_params, until_params));
    std::map<std::string, Shape> shapes;
    for (nn::StateEntry& e : m->state()) shapes[e.name] = e.shape();
    ASSERT_TRUE(shapes.count(spec.head_weight)) << spec.head_weight;
    EXPECT_EQ(shapes[spec.head_weight][0], 7) << "the class count is read from " << spec.head_weight;
    EXPECT_TRUE(spec.matches(shapes));
  }
}

// GoogLeNet's auxiliary classifiers: heads too (replaced for the class count), run only in training, dropped with
// --no-aux or when the weights have none (torchvision's pretrained GoogLeNet as users usually save it).
TEST(Models, AuxiliaryClassifiers) {
  auto m = models::create_model("googlenet", 4, 1);
  EXPECT_EQ(m->head_names(), (std::vector<std::string>{"fc", "aux1.fc2", "aux2.fc2"}));
  m->train();
  Tape tape;
  TapeScope scope(tape);
  Variable x(Tensor::randn({2, 3, 64, 64}, 3));
  m->forward(x);
  std::vector<models::Model::AuxLogits> aux = m->take_aux_logits();
  ASSERT_EQ(aux.size(), 2u);
  EXPECT_EQ(aux[0].logits.shape(), (Shape{2, 4}));
  EXPECT_DOUBLE_EQ(aux[0].weight, 0.3);
  EXPECT_TRUE(m->take_aux_logits().empty()) << "handed over once";
  m->eval();
  m->forward(x);
  EXPECT_TRUE(m->take_aux_logits().empty()) << "eval runs no auxiliary classifier";

  // Weights without aux1/aux2: the model drops them, and everything else loads strictly.
  const std::string path = test_dir("weights") + "/googlenet_noaux.bin";
  {
    std::vector<std::pair<std::string, Tensor>> kept;
    for (auto& [name, t] : models::state_dict(*m))
      if (name.rfind("aux", 0) != 0) kept.emplace_back(name, t);
    io::write_safetensors(path, kept, {{"arch", "googlenet"}});
  }
  auto fresh = models::create_model("googlenet", 4, 2);
  models::LoadReport rep = models::load_weights(*fresh, path);
  EXPECT_TRUE(rep.dropped_aux);
  EXPECT_TRUE(rep.missing.empty()) << rep.summary();
  EXPECT_FALSE(fresh->has_aux());
  EXPECT_EQ(fresh->head_names(), (std::vector<std::string>{"fc"}));
  fresh->train();
  fresh->forward(x);
  EXPECT_TRUE(fresh->take_aux_logits().empty());
}

TEST(Models, NewHeadLoadsEverythingElseAndReports) {
  auto src = models::create_model("resnet18", 1000, 1);
  const std::string path = test_dir("weights") + "/r18_1000.bin";
  models::save_weights(*src, path, {}, {});
  auto dst = models::create_model("resnet18", 7, 2);
  models::LoadReport rep = models::load_weights(*dst, path);
  EXPECT_EQ(rep.skipped.size(), 2u) << rep.summary();  // fc.weight and fc.bias: 1000 vs 7 classes
  EXPECT_TRUE(rep.missing.empty());
  EXPECT_TRUE(rep.unexpected.empty());
  EXPECT_EQ(dst->num_classes(), 7);
  EXPECT_EQ(dst->named_parameters()[0].second.value().to_doubles(), src->named_parameters()[0].second.value().to_doubles());
  // A file of another architecture is an error naming the problem, unless explicitly allowed.
  auto other = models::create_model("resnet34", 7, 3);
  try {
    models::load_weights(*other, path);
    FAIL() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("missing layer1.2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("arch=resnet18"), std::string::npos) << e.what();
  }
  models::LoadOptions allow;
  allow.allow_mismatch = true;
  EXPECT_FALSE(models::load_weights(*other, path, allow).missing.empty());
}

TEST(Models, ResetHeadKeepsBodyAndInitialisesLikeNnLinear) {
  auto m = models::create_model("densenet121", 1000, 1);
  m->reset_head(3, 42);
  EXPECT_EQ(m->num_classes(), 3);
  auto params = m->named_parameters();
  const Tensor& w = params[params.size() - 2].second.value();
  EXPECT_EQ(w.shape(), (Shape{3, 1024}));
  const double bound = 1.0 / std::sqrt(1024.0);
  double max_abs = 0;
  for (double v : w.to_doubles()) max_abs = std::max(max_abs, std::fabs(v));
  EXPECT_LE(max_abs, bound);
  EXPECT_GT(max_abs, 0.9 * bound);
  // Every family: the forward uses the new head (ResNet's fc, VGG's classifier.6), under the same state name.
  for (const char* arch : {"resnet18", "vgg16"}) {
    auto r = models::create_model(arch, 1000, 1);
    const std::string head = r->head_name();
    r->reset_head(5, 3);
    r->eval();
    NoGradGuard no_grad;
    EXPECT_EQ(r->forward(Variable(Tensor::randn({1, 3, 32, 32}, 2))).shape(), (Shape{1, 5})) << arch;
    EXPECT_EQ(r->named_parameters().back().first, head + ".bias") << arch;
    EXPECT_EQ(r->named_parameters().back().second.shape(), (Shape{5})) << arch;
  }
}

// DenseNet's memory-efficient mode (--memory-efficient; torchvision's memory_efficient=True): one training step of
// densenet121 (float32, the CPU's layout) gives the same loss, parameter gradients and running statistics as the
// standard mode, and its activation memory (allocator peak above what was held before the forward) is lower: the
// standard mode keeps each dense layer's normalised and rectified input (norm1 fused with the concatenation,
// layers/concat_bn_relu.h: one tensor of the layer's C0 + l·k input channels, kept by the fused op and conv1), whose
// size grows with the layer's depth (O(L^2) per block); the memory-efficient one keeps its 128-channel bottleneck
// output (O(L)); both keep the chunks the layers read. So what the forward keeps differs by exactly the sum of those
// inputs (4 x C x H x W float32 per layer; blocks at 16, 8, 4, 2 px). Measured: what the forward keeps, and the
// step's peak less the parameters' gradients (the same in both). The FLOP count (bench's counter) is that of the
// standard step.
TEST(DenseNet, MemoryEfficientGivesTheSameStepWithLessMemory) {
  const Tensor x = Tensor::randn({4, 3, 64, 64}, 3);
  const Tensor labels = Tensor::from_values({0, 1, 2, 1}, {4}, DType::I32);
  struct Step {
    double loss = 0;
    size_t activation_peak = 0, kept = 0;
    std::map<std::string, std::vector<double>> grads, buffers;
    double flops = 0;
  };
  auto step = [&](bool efficient) {
    auto m = models::create_model("densenet121", 3, 0);
    EXPECT_TRUE(m->set_memory_efficient(efficient));
    m->to(Device::CPU, conv2d_cpu_float32_layout());
    m->train();
    Step s;
    s.flops = train::count_step_flops(*m, 4, 64, 64).total();
    Tape tape;
    TapeScope scope(tape);
    const Tensor input = x.to(Device::CPU, DType::F32, conv2d_cpu_float32_layout());
    reset_peak_memory(Device::CPU);
    const size_t before = memory_stats(Device::CPU).current_bytes;
    Variable loss = cross_entropy(m->forward(Variable(input)), labels);
    s.kept = memory_stats(Device::CPU).current_bytes - before;  // what the forward keeps for the backward pass
    tape.backward(loss);
    size_t grad_bytes = 0;  // the parameters' gradients, the same in both modes
    for (auto& [name, p] : m->named_parameters()) grad_bytes += p.grad().nbytes();
    s.activation_peak = memory_stats(Device::CPU).peak_bytes - before - grad_bytes;
    s.loss = loss.value().item();
    for (auto& [name, p] : m->named_parameters()) s.grads[name] = p.grad().to_doubles();
    for (const nn::StateEntry& e : m->state())
      if (e.buffer) s.buffers[e.name] = e.buffer->to_doubles();
    return s;
  };
  const Step standard = step(false), efficient = step(true);
  EXPECT_EQ(standard.loss, efficient.loss);
  EXPECT_EQ(standard.flops, efficient.flops);
  for (const auto& [name, g] : standard.grads) {
    const std::vector<double>& h = efficient.grads.at(name);
    double scale = 0, diff = 0;
    for (size_t i = 0; i < g.size(); ++i) scale = std::max(scale, std::abs(g[i])), diff = std::max(diff, std::abs(g[i] - h[i]));
    EXPECT_LE(diff, 1e-6 * scale) << name;
  }
  EXPECT_EQ(standard.buffers, efficient.buffers) << "running statistics updated twice, or not at all";
  int64_t rectified_inputs = 0;  // bytes of every dense layer's normalised and rectified input
  const int layers[] = {6, 12, 24, 16};
  const int64_t sides[] = {16, 8, 4, 2};
  for (int b = 0, c0 = 64; b < 4; c0 = (c0 + layers[b] * 32) / 2, ++b)
    for (int l = 0; l < layers[b]; ++l) rectified_inputs += 4 * (c0 + 32 * l) * sides[b] * sides[b] * 4;
  EXPECT_EQ(static_cast<int64_t>(standard.kept) - static_cast<int64_t>(efficient.kept), rectified_inputs)
      << "kept for backward: standard " << standard.kept << " bytes, memory-efficient " << efficient.kept;
  EXPECT_LT(efficient.activation_peak, 0.7 * standard.activation_peak)
      << "peak: standard " << standard.activation_peak << " bytes, memory-efficient " << efficient.activation_peak;
  std::printf("densenet121 64 px batch 4, kept for backward / peak without the gradients: standard %.1f / %.1f MB, "
              "memory-efficient %.1f / %.1f MB\n",
              standard.kept / 1e6, standard.activation_peak / 1e6, efficient.kept / 1e6, efficient.activation_peak / 1e6);
  EXPECT_FALSE(models::create_model("resnet18", 3, 0)->set_memory_efficient(true));
}
