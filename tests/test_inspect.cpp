// `tlengine inspect`: the module tree against torchvision's (tests/torch_ref/module_tree.py: forward hooks and
// parameter counts), what a weights file holds, and the freeze costs: FLOPs equal to bench's counter, the memory
// prediction within 15% of the allocator's measured peak (resnet18, batch 8, CPU), the table, JSON and PNG.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/image.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tl_testing.h"
#include "train/bench.h"
#include "train/freeze.h"
#include "train/inspect.h"

namespace tl {
namespace {
using nlohmann::json;

json torchvision_tree(const std::string& arch) {
  const std::string out = testing::scratch_dir("inspect_" + arch) + "/tree.json";
  testing::run_torch_script("module_tree.py", arch + " 224 " + out);
  std::ifstream in(out);
  return json::parse(in);
}

// Every module of tlengine's tree is torchvision's module of that name, with its parameter count and output shape
// (with `all_shapes`: every shape, marked inexact or not; else the shapes not marked inexact, and some are marked);
// every torchvision module with parameters is in tlengine's tree.
void expect_tree_matches(const std::string& arch, bool all_shapes = true) {
  auto model = models::create_model(arch);
  const train::ModelTree tree = train::inspect_model(*model);
  const json tv = torchvision_tree(arch);
  ASSERT_FALSE(tree.modules.empty());
  int inexact = 0;
  EXPECT_EQ(tree.total_params, tv[""]["params"].get<int64_t>()) << arch;
  for (const train::ModuleInfo& m : tree.modules) {
    ASSERT_TRUE(tv.contains(m.name)) << arch << ": torchvision has no module '" << m.name << "'";
    EXPECT_EQ(m.params, tv[m.name]["params"].get<int64_t>()) << arch << " " << m.name;
    ASSERT_FALSE(m.output.empty()) << arch << " " << m.name << ": no output shape";
    if (all_shapes || m.output_exact) {
      EXPECT_EQ(m.output, tv[m.name]["shape"].get<Shape>()) << arch << " " << m.name;
    }
    inexact += m.output_exact ? 0 : 1;
  }
  std::set<std::string> ours;
  for (const train::ModuleInfo& m : tree.modules) ours.insert(m.name);
  for (const auto& [name, v] : tv.items())
    if (v["params"].get<int64_t>() > 0) {
      EXPECT_TRUE(ours.count(name)) << arch << ": module '" << name << "' missing";
    }
  if (!all_shapes) {
    EXPECT_GT(inexact, 0) << arch << ": expected some containers ending in a pooling or concatenation";
  }
}

const train::ModuleInfo& module_named(const train::ModelTree& t, const std::string& name) {
  for (const train::ModuleInfo& m : t.modules)
    if (m.name == name) return m;
  throw std::runtime_error("no module " + name);
}

TEST(Inspect, ResNet18TreeMatchesTorchvision) { expect_tree_matches("resnet18"); }
TEST(Inspect, DenseNet169TreeMatchesTorchvision) { expect_tree_matches("densenet169"); }
// Containers that end in a pooling or concatenation (SqueezeNet's Fire modules and classifier; MobileNet V2's
// features end in a convolution) are marked, and the shapes not marked are torchvision's.
TEST(Inspect, ShapesNotMarkedInexactAreTorchvisions) {
  expect_tree_matches("squeezenet1_0", false);
  expect_tree_matches("mobilenet_v2", false);
}

TEST(Inspect, HeadsAndBlocksAreMarked) {
  auto resnet = models::create_model("resnet18");
  const train::ModelTree r = train::inspect_model(*resnet);
  EXPECT_TRUE(module_named(r, "fc").head);
  EXPECT_FALSE(module_named(r, "layer4").head);
  for (const char* b : {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}) EXPECT_TRUE(module_named(r, b).block) << b;
  EXPECT_FALSE(module_named(r, "layer4.0").block);
  const std::string text = r.to_text();
  EXPECT_TRUE(testing::contains(text, "(fc): Linear(in_features=512, out_features=1000, bias=True)")) << text;
  EXPECT_TRUE(testing::contains(text, "<- head")) << text;
  EXPECT_TRUE(testing::contains(text, "[block]")) << text;
  EXPECT_TRUE(testing::contains(text, "(conv1): Conv2d(3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)"))
      << text;
  // --depth 1: the children of the model only.
  const std::string shallow = r.to_text(1);
  EXPECT_TRUE(testing::contains(shallow, "(layer4): Sequential")) << shallow;
  EXPECT_FALSE(testing::contains(shallow, "layer4.0") || testing::contains(shallow, "(0): Block")) << shallow;

  auto densenet = models::create_model("densenet169");
  const train::ModelTree d = train::inspect_model(*densenet);
  EXPECT_TRUE(module_named(d, "classifier").head);
  for (int i = 1; i <= 4; ++i) EXPECT_TRUE(module_named(d, "features.denseblock" + std::to_string(i)).block) << i;
  EXPECT_EQ(d.heads, std::vector<std::string>{"classifier"});
  const json j = d.to_json();
  EXPECT_EQ(j["modules"][0]["output_shape"], json({1, 1000}));
}

TEST(Inspect, WeightsFileShowsArchitectureClassesAndMetadata) {
  auto model = models::create_model("resnet18", 3);
  const std::string path = testing::scratch_dir("inspect_weights") + "/w.bin";
  models::save_weights(*model, path, {"ants", "bees", "wasps"}, {{"epoch", "7"}});
  const train::WeightsInfo w = train::inspect_weights(path);
  EXPECT_EQ(w.arch, "resnet18");
  EXPECT_EQ(w.format, "tlengine");
  EXPECT_EQ(w.num_classes, 3);
  EXPECT_EQ(w.classes, (std::vector<std::string>{"ants", "bees", "wasps"}));
  EXPECT_EQ(w.metadata.at("epoch"), "7");
  EXPECT_TRUE(testing::contains(w.to_text(), "ants, bees, wasps")) << w.to_text();
}

TEST(Inspect, FreezePointsOfResNet18) {
  auto model = models::create_model("resnet18");
  EXPECT_EQ(train::freeze_points(*model),
            (std::vector<std::string>{"none", "until=conv1", "until=bn1", "until=layer1", "until=layer2",
                                      "until=layer3", "backbone"}));
  for (auto& [n, p] : model->named_parameters()) EXPECT_TRUE(p.trainable()) << n;  // left all trainable
}

// Bench's FLOP counter with bench's freeze settings for its modes: full = none, last_block = until=layer3 (layer4
// and fc train), head = backbone.
TEST(Inspect, FreezeCostFlopsEqualBenchCounter) {
  auto model = models::create_model("resnet18", 10);
  train::FreezeCostOptions o;
  o.batch = 8;
  std::ostringstream log;
  const train::FreezeCosts fc = train::freeze_costs(*model, o, log);
  const std::pair<const char*, const char*> same[] = {{"none", "full"}, {"until=layer3", "last_block"},
                                                      {"backbone", "head"}};
  for (const auto& [point, mode] : same) {
    auto fresh = models::create_model("resnet18", 10);
    const train::ModeFreeze mf = train::mode_freeze(*fresh, mode);
    train::FreezeOptions fo;
    fo.freeze = mf.freeze;
    fo.trainable = mf.trainable;
    const train::FreezePlan plan = train::apply_freeze(*fresh, fo);
    const train::StepFlops f = train::count_step_flops(*fresh, 8, 224, 224);
    bool found = false;
    for (const train::FreezePointCost& c : fc.points) {
      if (c.freeze != point) continue;
      found = true;
      EXPECT_EQ(c.trainable_params, plan.trainable_params) << point;
      EXPECT_DOUBLE_EQ(c.flops_forward, f.forward) << point;
      EXPECT_DOUBLE_EQ(c.flops_backward_data, f.backward_data) << point;
      EXPECT_DOUBLE_EQ(c.flops_backward_weight, f.backward_weight) << point;
    }
    EXPECT_TRUE(found) << point;
  }
  // Freezing more never costs more.
  for (size_t i = 1; i < fc.points.size(); ++i) {
    EXPECT_LE(fc.points[i].flops(), fc.points[i - 1].flops()) << fc.points[i].freeze;
    EXPECT_LE(fc.points[i].predicted_peak_bytes(), fc.points[i - 1].predicted_peak_bytes()) << fc.points[i].freeze;
  }
}

TEST(Inspect, MemoryPredictionWithin15PercentOfMeasuredPeak) {
  auto model = models::create_model("resnet18", 10);
  train::FreezeCostOptions o;
  o.batch = 8;
  o.measure = true;
  o.device = "cpu";
  o.warmup = 1;
  o.steps = 1;
  std::ostringstream log;
  const train::FreezeCosts fc = train::freeze_costs(*model, o, log);
  ASSERT_EQ(fc.points.size(), 7u);
  for (const train::FreezePointCost& c : fc.points) {
    ASSERT_TRUE(c.measured);
    const double err = (c.predicted_peak_bytes() - c.peak_bytes) / c.peak_bytes;
    std::printf("%-14s predicted %8.1f MB measured %8.1f MB error %+5.1f%%\n", c.freeze.c_str(),
                c.predicted_peak_bytes() / 1e6, c.peak_bytes / 1e6, 100 * err);
    EXPECT_LT(std::abs(err), 0.15) << c.freeze << ": predicted " << c.predicted_peak_bytes() << " measured "
                                   << c.peak_bytes;
  }
  const std::string table = fc.to_table();
  EXPECT_TRUE(testing::contains(table, "meas MB")) << table;
  EXPECT_TRUE(testing::contains(table, "until=layer3")) << table;
}

TEST(Inspect, CliTreeJsonAndFreezeCostsPng) {
  const std::string dir = testing::scratch_dir("inspect_cli");
  std::string out;
  ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " inspect --arch resnet18 --json > " + dir + "/tree.json", &out), 0)
      << out;
  std::ifstream in(dir + "/tree.json");
  const json j = json::parse(in);
  EXPECT_EQ(j["tree"]["heads"], json({"fc"}));
  ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " inspect --arch resnet18 --depth 1", &out), 0) << out;
  EXPECT_TRUE(testing::contains(out, "(fc): Linear")) << out;
  ASSERT_EQ(testing::run_command(std::string(TL_CLI) + " inspect --arch resnet18 --freeze-costs -b 4 --image-size 64 --out " +
                                     dir,
                                 &out),
            0)
      << out;
  EXPECT_TRUE(testing::contains(out, "backbone")) << out;
  const io::Image png = io::decode_image(dir + "/freeze_costs.png");
  EXPECT_EQ(png.width, 1200);
  EXPECT_TRUE(std::filesystem::exists(dir + "/freeze_costs.json"));
  EXPECT_NE(testing::run_command(std::string(TL_CLI) + " inspect", &out), 0);
  EXPECT_TRUE(testing::contains(out, "--arch or --weights")) << out;
  EXPECT_NE(testing::run_command(std::string(TL_CLI) + " inspect --arch resnet18 --png " + dir + "/x.png", &out), 0);
  EXPECT_TRUE(testing::contains(out, "go with --freeze-costs")) << out;
}

}  // namespace
}  // namespace tl
