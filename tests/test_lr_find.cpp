// `tlengine lr-find`: fastai's schedule, smoothing and suggestion rules on curves whose answer is known, then the
// search end to end on a small synthetic job (the suggestion lies where the loss falls, divergence stops the search
// early, the weights file is left bit-identical, lr_find.json / lr_find.png are written), and the command line.
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/image.h"
#include "io/synthetic.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tl_testing.h"
#include "tl_training.h"
#include "train/lr_find.h"

using namespace tl;
using namespace tl::testing;

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A 4-class synthetic ImageFolder (small images) and a resnet18 weights file for it.
struct Job {
  std::string data, weights;
};
Job make_job(const std::string& dir, int train_per_class) {
  io::SyntheticOptions s;
  s.num_classes = 4;
  s.train_per_class = train_per_class;
  s.val_per_class = 1;
  s.min_side = 40;
  s.max_side = 56;
  s.format = "png";
  const std::vector<std::string> classes = io::write_synthetic_image_folder(dir + "/data", s);
  auto model = models::create_model("resnet18", 4, 3);
  models::save_weights(*model, dir + "/start.bin", classes);
  return {dir + "/data", dir + "/start.bin"};
}

// The head-only search on 32 px images, quiet, on the CPU.
train::LrFindOptions tiny_search(const Job& job, const std::string& out) {
  train::LrFindOptions o;
  o.train = tiny_training(job.data, out, 32, 1, 16, 2);
  o.train.weights = job.weights;
  o.train.freeze.freeze = "backbone";
  return o;
}
}  // namespace

// fastai's SchedExp and AvgSmoothLoss, by their formulas.
TEST(LrFind, ExponentialScheduleAndBiasCorrectedSmoothing) {
  EXPECT_DOUBLE_EQ(train::lr_find_rate(1e-7, 10, 0, 100), 1e-7);
  EXPECT_NEAR(train::lr_find_rate(1e-7, 10, 50, 100), 1e-7 * std::pow(1e8, 0.5), 1e-15);
  EXPECT_NEAR(train::lr_find_rate(1e-7, 10, 100, 100), 10, 1e-12);
  for (int i = 1; i < 100; ++i)  // a constant ratio from step to step
    EXPECT_NEAR(train::lr_find_rate(1e-7, 10, i, 100) / train::lr_find_rate(1e-7, 10, i - 1, 100),
                std::pow(1e8, 0.01), 1e-12);

  train::SmoothedLoss constant;
  for (int i = 0; i < 50; ++i) EXPECT_NEAR(constant.add(2.5), 2.5, 1e-12) << "step " << i;
  train::SmoothedLoss s;
  EXPECT_DOUBLE_EQ(s.add(1.0), 1.0);                               // the first value is the first loss
  EXPECT_NEAR(s.add(3.0), (0.98 * 1.0 + 3.0) / 1.98, 1e-12);      // weights 0.98 and 1, normalised
  EXPECT_NEAR(s.add(0.0), (0.98 * 0.98 + 0.98 * 3.0) / (1 + 0.98 + 0.98 * 0.98), 1e-12);
}

// A curve with a known answer: flat, then falling fastest between points 50 and 51, lowest at point 60, then
// rising; deep dips among the first num_it/10 and the last 5 points, which fastai leaves out.
TEST(LrFind, SuggestionsAreTheSteepestFallAndATenthOfTheMinimum) {
  const int n = 90, num_it = 100;
  std::vector<double> lrs, loss;
  double l = 2.0;
  for (int i = 0; i < n; ++i) {
    lrs.push_back(train::lr_find_rate(1e-7, 10, i, num_it));
    loss.push_back(l);
    if (i >= 40 && i < 60) l -= 0.01 * (11 - std::abs(i - 50));  // the largest drop from 50 to 51
    if (i >= 60) l += 0.05;
  }
  loss[3] = -100;      // in the first num_it/10: ignored
  loss[n - 2] = -100;  // in the last 5: ignored
  const train::LrSuggestions s = train::suggest_lrs(lrs, loss, num_it);
  EXPECT_EQ(s.steep_index, 50);
  EXPECT_DOUBLE_EQ(s.steep, lrs[50]);
  EXPECT_EQ(s.min_index, 60);
  EXPECT_DOUBLE_EQ(s.minimum, lrs[60] / 10);

  // Too few points once the ends are left out: no suggestion.
  const train::LrSuggestions none =
      train::suggest_lrs({1e-3, 1e-2, 1e-1, 1, 2, 3, 4, 5}, {1, 1, 1, 1, 1, 1, 1, 1}, 100);
  EXPECT_EQ(none.steep_index, -1);
  EXPECT_TRUE(std::isnan(none.steep) && std::isnan(none.minimum));

  // The plot of a search that ran no step, or too few for a suggestion (a NaN loss at once, an early Ctrl-C).
  train::LrFindResult empty;
  EXPECT_EQ(train::render_lr_find(empty).width, 1200);
  train::LrFindResult short_run;
  short_run.lrs = {1e-3, 1e-2};
  short_run.losses = short_run.smoothed = {1.0, 0.9};
  short_run.suggestions = train::suggest_lrs(short_run.lrs, short_run.smoothed, 100);
  EXPECT_EQ(train::render_lr_find(short_run).height, 600);
}

// The search on a small job: the head of a frozen resnet18 learns the synthetic classes, then diverges. The
// suggestions lie between the lr where the smoothed loss clearly starts falling and the lr where the search
// stopped; divergence stops it before num_it; the weights file is untouched; the outputs say the same as the result.
TEST(LrFind, SuggestsAnLrWhereTheLossFallsAndLeavesTheWeightsAlone) {
  const std::string d = fresh_dir("lr_find_job");
  const Job job = make_job(d, 16);
  const std::string weights_before = slurp(job.weights);
  ASSERT_FALSE(weights_before.empty());
  train::LrFindOptions o = tiny_search(job, d + "/out");
  o.start_lr = 1e-4;  // 20 steps per decade up to 10
  std::ostringstream log;
  const train::LrFindResult r = train::run_lr_find(o, log);

  EXPECT_EQ(slurp(job.weights), weights_before) << "lr-find modified the weights file";
  ASSERT_EQ(r.stopped, "diverged") << log.str();
  const size_t n = r.lrs.size();
  ASSERT_GT(n, 20u);
  EXPECT_LT(n, static_cast<size_t>(o.num_it)) << "divergence did not stop the search early";
  EXPECT_GT(r.smoothed.back(), 4 * *std::min_element(r.smoothed.begin(), r.smoothed.end()));
  ASSERT_EQ(r.losses.size(), n);
  ASSERT_EQ(r.smoothed.size(), n);
  for (size_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(r.lrs[i], train::lr_find_rate(o.start_lr, o.end_lr, i, o.num_it));

  // Where the smoothed loss first falls 5% below its level at num_it/10 (where fastai's suggestions start).
  const size_t first = static_cast<size_t>(o.num_it / 10);
  size_t falls = first;
  while (falls < n && r.smoothed[falls] > 0.95 * r.smoothed[first]) ++falls;
  ASSERT_LT(falls, n) << "the loss never fell: " << log.str();
  const double lr_falls = r.lrs[falls], lr_stop = r.lrs.back();
  for (double lr : {r.suggestions.steep, r.suggestions.minimum}) {
    EXPECT_GE(lr, lr_falls) << log.str();
    EXPECT_LE(lr, lr_stop) << log.str();
  }
  EXPECT_TRUE(contains(log.str(), "suggested lr: ")) << log.str();
  EXPECT_TRUE(contains(log.str(), "tlengine train --data " + job.data)) << log.str();

  const nlohmann::json j = nlohmann::json::parse(slurp(d + "/out/lr_find.json"));
  EXPECT_EQ(j.at("steps"), n);
  EXPECT_EQ(j.at("stopped"), "diverged");
  EXPECT_EQ(j.at("lrs").size(), n);
  EXPECT_EQ(j.at("smoothed").size(), n);
  EXPECT_DOUBLE_EQ(j.at("losses").back().get<double>(), r.losses.back());
  EXPECT_DOUBLE_EQ(j.at("suggestions").at("steep").get<double>(), r.suggestions.steep);
  EXPECT_DOUBLE_EQ(j.at("suggestions").at("minimum").get<double>(), r.suggestions.minimum);
  const io::Image png = io::decode_image(d + "/out/lr_find.png");
  EXPECT_EQ(png.width, 1200);
  EXPECT_EQ(png.height, 600);
}

// Without stop_div the search runs every step (the loss stays finite in this short range); the command line
// runs a search with a body group (at lr x --backbone-lr-mult) and prints the suggestions and a train command
// that repeats the job with the suggested lr; a wrong lr range is refused.
TEST(LrFind, RunsAllStepsWithoutStopDivAndFromTheCommandLine) {
  const std::string d = fresh_dir("lr_find_cli");
  const Job job = make_job(d, 4);
  train::LrFindOptions o = tiny_search(job, d + "/out");
  o.start_lr = 1e-5;
  o.end_lr = 1e-1;
  o.num_it = 20;
  o.stop_div = false;
  std::ostringstream log;
  const train::LrFindResult r = train::run_lr_find(o, log);
  EXPECT_EQ(r.stopped, "num_it") << log.str();
  EXPECT_EQ(r.lrs.size(), 20u);
  EXPECT_GE(r.suggestions.steep_index, 2);  // 20 / 10 = 2 points left out at the start

  std::string out;
  const std::string cmd = std::string(TL_CLI) + " lr-find --data " + job.data + " --weights " + job.weights +
                          " --model resnet18 --freeze backbone --trainable 'layer4.1.*' --backbone-lr-mult 0.1 "
                          "--image-size 32 -b 8 -j 1 --device cpu --no-augment --num-it 20 --out " + d + "/cli";
  ASSERT_EQ(run_command(cmd, &out), 0) << out;
  EXPECT_TRUE(contains(out, "suggested lr: ")) << out;
  EXPECT_TRUE(contains(out, "(steepest)") && contains(out, "(minimum/10)")) << out;
  EXPECT_TRUE(contains(out, "head lr 1e-07, body lr 1e-08")) << "the body's group at lr x mult: " << out;
  EXPECT_TRUE(contains(out, "tlengine train --data " + job.data + " --arch resnet18 --weights " + job.weights +
                                " --freeze backbone --trainable 'layer4.1.*' --batch-size 8 --image-size 32 "
                                "--backbone-lr-mult 0.1 --no-augment --lr "))
      << out;
  EXPECT_EQ(nlohmann::json::parse(slurp(d + "/cli/lr_find.json")).at("num_it"), 20);
  EXPECT_NE(run_command(std::string(TL_CLI) + " lr-find --data " + job.data + " --start-lr 1 --end-lr 0.1 --out " +
                            d + "/bad",
                        &out),
            0);
  EXPECT_TRUE(contains(out, "--start-lr")) << out;
}

// The search against fastai's rules written out with PyTorch (tests/torch_ref/lr_find_parity.py) on the same job:
// the same initial weights, images and order, only the head trains, float64 on both sides. The same lr, loss and
// smoothed loss at every step (to 1e-9 relative, as Train.FinetuneReachesTheSameLossesAsPyTorch), the same step
// where the divergence rule stops it, and the same suggestions.
TEST(LrFind, SameStepsStopAndSuggestionsAsFastaiRulesInPyTorch) {
  const std::string d = fresh_dir("lr_find_parity");
  io::SyntheticOptions s;
  s.train_per_class = 8;
  s.val_per_class = 1;
  s.min_side = 40;
  s.max_side = 56;
  s.format = "png";  // PNG: decoded to PIL's pixels
  io::write_synthetic_image_folder(d + "/data", s);
  run_torch_script("finetune_parity.py", "weights " + d + "/data " + d);
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + d + "/init.pth " + d + "/init.bin", &log), 0) << log;
  train::LrFindOptions o = tiny_search({d + "/data", d + "/init.bin"}, d + "/out");
  o.train.batch_size = 8;
  o.train.shuffle = false;
  o.train.precision = "fp64";
  o.start_lr = 1e-4;
  o.num_it = 60;
  run_torch_script("lr_find_parity.py", d + "/data " + d + " 1e-4 10 60");
  const nlohmann::json ref = nlohmann::json::parse(slurp(d + "/torch_lr_find.json"));
  std::ostringstream out;
  const train::LrFindResult r = train::run_lr_find(o, out);

  EXPECT_EQ(r.stopped, ref.at("stopped").get<std::string>());
  EXPECT_EQ(r.stopped, "diverged") << "the job should reach the divergence rule";
  ASSERT_EQ(r.lrs.size(), ref.at("lrs").size());
  for (size_t i = 0; i < r.lrs.size(); ++i) {
    const double lr = ref.at("lrs")[i], loss = ref.at("losses")[i], smoothed = ref.at("smoothed")[i];
    EXPECT_NEAR(r.lrs[i], lr, 1e-12 * lr) << "step " << i;
    EXPECT_NEAR(r.losses[i], loss, 1e-9 * std::fabs(loss)) << "step " << i;
    EXPECT_NEAR(r.smoothed[i], smoothed, 1e-9 * std::fabs(smoothed)) << "step " << i;
  }
  const double steep = ref.at("suggestions").at("steep"), minimum = ref.at("suggestions").at("minimum");
  // fastai takes the suggestions from float32 tensors of the lrs (rounded at 6e-8); neighbouring lrs differ by 21%.
  EXPECT_NEAR(r.suggestions.steep, steep, 1e-6 * steep);
  EXPECT_NEAR(r.suggestions.minimum, minimum, 1e-6 * minimum);
}
