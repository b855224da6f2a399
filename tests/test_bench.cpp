// Benchmark plumbing: the FLOP counter against the GFLOP/step column of ANCHORS.md and against what the tape
// actually computes, `tlengine bench` on the CPU in every mode (library and CLI), `tlengine make-data`, and
// tools/bench_pytorch.py on the CPU.
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/image.h"
#include "io/synthetic.h"
#include "layers/loss.h"
#include "models/registry.h"
#include "tl_testing.h"
#include "train/bench.h"
#include "train/freeze.h"

namespace tl {
namespace {
using nlohmann::json;
using train::count_step_flops;

void set_mode(models::Model& model, const std::string& mode) {
  const train::ModeFreeze mf = train::mode_freeze(model, mode);
  train::FreezeOptions fo;
  fo.freeze = mf.freeze;
  fo.trainable = mf.trainable;
  train::apply_freeze(model, fo);
}

// Forward multiply-adds per image at 224 with 1000 classes (`torchvision_macs`, from torchvision 1.13 with forward
// hooks on every Conv2d and Linear: out.numel() * in/groups * kh * kw; in * out), then the GFLOP per step at
// batch 64, 224x224, 10 classes of ANCHORS.md (rounded to integers there).
std::unique_ptr<models::Model> expect_flops(const std::string& arch, double torchvision_macs, double full,
                                            double last_block, double head) {
  auto model = models::create_model(arch, 1000);
  EXPECT_DOUBLE_EQ(count_step_flops(*model, 1, 224, 224).forward / 2, torchvision_macs) << arch;
  model->reset_head(10, 0);
  const std::pair<const char*, double> cases[] = {{"full", full}, {"last_block", last_block}, {"head", head}};
  for (const auto& [mode, expected] : cases) {
    set_mode(*model, mode);
    const double gflop = count_step_flops(*model, 64, 224, 224).total() / 1e9;
    EXPECT_NEAR(gflop, expected, 0.005 * expected) << arch << " " << mode;
  }
  return model;
}

TEST(Bench, FlopCountMatchesAnchorsAndTorchvision) {
  auto r18 = expect_flops("resnet18", 1814073344.0, 681, 329, 232);
  expect_flops("resnet50", 4089184256.0, 1554, 704, 523);
  expect_flops("densenet121", 2834161664.0, 1073, 389, 363);
  expect_flops("densenet169", 3359843328.0, 1274, 503, 430);

  // The parts: full = 3 x forward less conv1's data gradient (its input is the image); head = forward plus the
  // head's weight gradient, and no data gradient anywhere.
  set_mode(*r18, "full");
  const train::StepFlops full = count_step_flops(*r18, 64, 224, 224);
  ASSERT_EQ(full.layers.front().name, "conv1");
  EXPECT_DOUBLE_EQ(full.backward_weight, full.forward);
  EXPECT_DOUBLE_EQ(full.backward_data, full.forward - full.layers.front().forward);
  set_mode(*r18, "head");
  const train::StepFlops head = count_step_flops(*r18, 64, 224, 224);
  EXPECT_EQ(head.backward_data, 0.0);
  EXPECT_DOUBLE_EQ(head.backward_weight, 2.0 * 64 * 512 * 10);
  EXPECT_EQ(head.layers.back().name, "fc");
}

// The newer architectures: forward multiply-adds per image at 224 with 1000 classes, from torchvision 0.14 with the
// same hooks (the count comes from tlengine's own forward pass: depthwise, grouped and folded convolutions alike).
TEST(Bench, FlopCountOfTheRecipesOtherModels) {
  const std::pair<const char*, double> cases[] = {{"mobilenet_v2", 300774272.0},
                                                  {"shufflenet_v2_x1_0", 144907992.0},
                                                  {"squeezenet1_0", 818924576.0},
                                                  {"alexnet", 714188480.0},
                                                  {"mnasnet1_0", 314415872.0}};
  for (const auto& [arch, macs] : cases) {
    auto model = models::create_model(arch, 1000);
    EXPECT_DOUBLE_EQ(count_step_flops(*model, 1, 224, 224).forward / 2, macs) << arch;
  }
}

// VGG16 forward multiply-adds per image (13 convolutions + 3 linear layers; torchvision as above). Building VGG16
// takes seconds.
TEST(Bench, FlopCountVgg) {
  auto vgg = models::create_model("vgg16", 1000);
  EXPECT_DOUBLE_EQ(count_step_flops(*vgg, 1, 224, 224).forward / 2, 15470264320.0);
  // last_block: the convolutions after the fourth pool (Keras's "block5") and the two hidden linear layers.
  EXPECT_EQ(train::mode_freeze(*vgg, "last_block").trainable,
            (std::vector<std::string>{"features.24.*", "features.26.*", "features.28.*", "classifier.0.*",
                                      "classifier.3.*"}));
  EXPECT_THROW(train::mode_freeze(*vgg, "everything"), ValueError);
}

// The counter's decisions (which layers compute a data / weight gradient) are those of the tape's backward.
TEST(Bench, FlopCountAgreesWithTheTape) {
  for (const std::string arch : {"resnet18", "densenet121"}) {
    auto model = models::create_model(arch, 3);
    model->train();
    for (const std::string mode : {"full", "last_block", "head"}) {
      set_mode(*model, mode);
      const train::StepFlops f = count_step_flops(*model, 2, 32, 32);
      int counted_data = 0, counted_weight = 0;
      for (const train::LayerFlops& l : f.layers) {
        counted_data += l.backward_data > 0;
        counted_weight += l.backward_weight > 0;
      }
      Tape tape;
      TapeScope scope(tape);
      Variable logits = model->forward(Variable(Tensor::randn({2, 3, 32, 32}, 1)));
      tape.backward(cross_entropy(logits, Tensor::from_values({0, 2}, {2}, DType::I32)));
      int tape_data = 0, tape_weight = 0;
      for (const BackwardRecord& r : tape.last_backward()) {
        if (r.op != "conv2d" && r.op != "linear") continue;
        tape_data += r.input_grad_computed.at(0);
        tape_weight += r.input_grad_computed.at(1);
      }
      EXPECT_EQ(counted_data, tape_data) << arch << " " << mode;
      EXPECT_EQ(counted_weight, tape_weight) << arch << " " << mode;
      EXPECT_GT(counted_weight, 0) << arch << " " << mode;
    }
  }
}

TEST(Bench, RunsOnTheCpuInEveryMode) {
  std::map<std::string, train::BenchResult> results;
  for (const std::string mode : {"full", "last_block", "head"}) {
    train::BenchOptions o;
    o.model = "resnet18";
    o.mode = mode;
    o.batch = 2;
    o.image_size = 32;
    o.warmup = 2;
    o.steps = 3;
    o.device = "cpu";
    std::ostringstream log;
    const train::BenchResult r = train::run_bench(o, log);
    ASSERT_EQ(r.step_ms.size(), 3u) << mode;
    for (double ms : r.step_ms) EXPECT_GT(ms, 0) << mode;
    EXPECT_GE(r.median_ms, r.min_ms);
    EXPECT_LE(r.median_ms, r.max_ms);
    EXPECT_NEAR(r.images_per_s, 2 / (r.median_ms / 1000), 1e-9 * r.images_per_s);
    EXPECT_GT(r.tflops, 0);
    EXPECT_GT(r.peak_bytes, 0u);
    EXPECT_GT(r.first_step_s, 0);
    EXPECT_GE(r.startup_s, r.build_s + r.first_step_s - 1e-6);
    EXPECT_EQ(r.device, "cpu");
    EXPECT_NE(log.str().find("bench resnet18 " + mode), std::string::npos) << log.str();
    const json j = r.to_json();
    EXPECT_EQ(j.at("mode"), mode);
    EXPECT_EQ(j.at("step_ms").size(), 3u);
    EXPECT_DOUBLE_EQ(j.at("gflop_per_step").get<double>(), r.flops.total() / 1e9);
    EXPECT_EQ(r.table_line().substr(0, 8), "resnet18");
    results[mode] = r;
  }
  EXPECT_EQ(results["head"].trainable_params, 512 * 10 + 10);
  EXPECT_EQ(results["full"].trainable_params, results["full"].total_params);
  EXPECT_GT(results["last_block"].trainable_params, results["head"].trainable_params);
  EXPECT_LT(results["last_block"].trainable_params, results["full"].trainable_params);
  // Gradients and momentum of 11M parameters in full mode, of 5k in head mode.
  EXPECT_GT(results["full"].peak_bytes, results["head"].peak_bytes + 2 * 11000000 * 4);
  EXPECT_LT(results["head"].flops.total(), results["last_block"].flops.total());
  EXPECT_LT(results["last_block"].flops.total(), results["full"].flops.total());

  train::BenchOptions bad;
  bad.device = "cpu";
  bad.precision = "bf16";
  std::ostringstream log;
  EXPECT_THROW(train::run_bench(bad, log), ValueError);  // bf16 needs CUDA
  bad.precision = "fp16";
  EXPECT_THROW(train::run_bench(bad, log), ValueError);
  bad.precision = "fp32";
  bad.mode = "body";
  bad.batch = 1;
  bad.image_size = 32;
  EXPECT_THROW(train::run_bench(bad, log), ValueError);
}

TEST(Bench, CliWritesJsonAndMakeDataWritesJpegs) {
  const std::string d = testing::test_dir("bench_cli");
  std::string out;
  ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " bench --model resnet18 --mode last_block --batch 2 "
                                 "--image-size 32 --warmup 1 --steps 2 --device cpu --json " + d + "/r.json 2>&1", &out),
            0)
      << out;
  EXPECT_NE(out.find("ms/step"), std::string::npos) << out;
  std::ifstream f(d + "/r.json");
  const json j = json::parse(f);
  EXPECT_EQ(j.at("engine"), "tlengine");
  EXPECT_EQ(j.at("model"), "resnet18");
  EXPECT_EQ(j.at("step_ms").size(), 2u);
  EXPECT_GT(j.at("median_ms").get<double>(), 0);
  EXPECT_GT(j.at("startup_s").get<double>(), 0);
  EXPECT_NE(testing::run_command(std::string(TL_CLI) + " bench --mode sideways --device cpu 2>&1", &out), 0);
  EXPECT_NE(out.find("--mode must be full, last_block or head"), std::string::npos) << out;

  const std::string data = d + "/data";
  std::filesystem::remove_all(data);
  ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " make-data --out " + data +
                                 " --classes 2 --train-per-class 3 --val-per-class 1 --width 50 --height 30 2>&1", &out),
            0)
      << out;
  int count = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(data)) {
    if (!e.is_regular_file()) continue;
    ++count;
    const io::ImageInfo info = io::read_image_info(e.path().string());
    EXPECT_EQ(info.format, "jpeg");
    EXPECT_EQ(info.width, 50);
    EXPECT_EQ(info.height, 30);
  }
  EXPECT_EQ(count, 2 * 3 + 2 * 1);
  EXPECT_TRUE(std::filesystem::is_directory(data + "/val/" + io::synthetic_class_name(1)));

  // bench-loader over the train split: every image of every epoch, with and without the decoded-image cache.
  for (const std::string cache : {"off", "auto"}) {
    ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " bench-loader --data " + data + " --image-size 24 " +
                                   "--batch-size 4 --workers 2 --epochs 2 --cache-images " + cache + " --json " + d +
                                   "/loader.json 2>&1", &out),
              0)
        << out;
    std::ifstream lf(d + "/loader.json");
    const json l = json::parse(lf);
    EXPECT_EQ(l.at("images"), 6);
    EXPECT_EQ(l.at("epoch_s").size(), 2u);
    EXPECT_GT(l.at("images_per_s").get<double>(), 0);
    EXPECT_GT(l.at("images_per_s_after_first").get<double>(), 0);
    EXPECT_EQ(l.at("cache_images"), cache);
  }
  EXPECT_NE(testing::run_command(std::string(TL_CLI) + " bench-loader --data " + d + "/nowhere 2>&1", &out), 0);
  EXPECT_NE(out.find("nowhere"), std::string::npos) << out;
}

TEST(Bench, PytorchScriptRunsOnTheCpu) {
  const std::string d = testing::test_dir("bench_pytorch");
  std::filesystem::remove(d + "/r.json");
  std::string out;
  ASSERT_EQ(testing::run_command(std::string(TL_PYTHON_EXE) + " " + TL_SOURCE_DIR + "/tools/bench_pytorch.py "
                                 "--model resnet18 --mode last_block --batch 2 --image-size 32 --warmup 1 --steps 2 "
                                 "--device cpu --json " + d + "/r.json 2>&1", &out),
            0)
      << out;
  std::ifstream f(d + "/r.json");
  const json j = json::parse(f);
  EXPECT_EQ(j.at("engine"), "pytorch-eager");
  EXPECT_EQ(j.at("mode"), "last_block");
  EXPECT_EQ(j.at("step_ms").size(), 2u);
  EXPECT_GT(j.at("median_ms").get<double>(), 0);
  EXPECT_GT(j.at("images_per_s").get<double>(), 0);
  // The same trainable parameters as tlengine's last_block: layer4 and fc.
  auto model = models::create_model("resnet18", 10);
  set_mode(*model, "last_block");
  int64_t trainable = 0;
  for (auto& [name, p] : model->named_parameters()) trainable += p.trainable() ? p.value().numel() : 0;
  EXPECT_EQ(j.at("trainable_params").get<int64_t>(), trainable);
}

}  // namespace
}  // namespace tl
