// `tlengine train` end to end on small generated data (CPU): parity with PyTorch doing the same job, exact resume,
// freeze plans, the NaN guard, bad inputs, atomic checkpoints under SIGKILL, Ctrl-C, and `predict`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "io/files.h"
#include "io/image.h"
#include "io/transforms.h"
#include "io/loader.h"
#include "io/dataset.h"
#include "io/npy.h"
#include "io/synthetic.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "models/weights.h"
#include "train/error_analysis.h"
#include "train/feature_cache.h"
#include "train/freeze.h"
#include "train/predict.h"
#include "train/report.h"
#include "train/state_dict.h"
#include "train/trainer.h"
#include "tl_testing.h"
#include "layers/conv2d.h"
#include "tl_training.h"

using namespace tl;
using namespace tl::testing;
namespace fs = std::filesystem;

namespace {
std::string make_data(const std::string& dir, int train_per_class = 8, int val_per_class = 4,
                      const std::string& format = "png") {
  io::SyntheticOptions s;
  s.num_classes = 4;
  s.train_per_class = train_per_class;
  s.val_per_class = val_per_class;
  s.min_side = 40;
  s.max_side = 56;
  s.format = format;
  io::write_synthetic_image_folder(dir, s);
  return dir;
}
train::TrainOptions tiny(const std::string& data, const std::string& out) {
  return tiny_training(data, out, 32, 2, 8, 2);
}
std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}
// A resumed run's metrics.jsonl against a straight run's: the same epochs, counts and accuracies, and losses equal
// up to the order of summation (a resumed epoch adds the loss sum saved at the stop to its own).
void expect_same_metrics(const std::string& straight, const std::string& resumed) {
  const std::vector<nlohmann::json> a = read_jsonl(straight), b = read_jsonl(resumed);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* phase : {"train", "val"}) {
      if (!a[i].contains(phase)) continue;
      nlohmann::json x = a[i][phase], y = b[i][phase];
      EXPECT_NEAR(x["loss"].get<double>(), y["loss"].get<double>(), 1e-12 * std::abs(x["loss"].get<double>()))
          << phase << " loss of epoch " << i + 1;
      x.erase("loss");
      y.erase("loss");
      EXPECT_EQ(x.dump(), y.dump()) << phase << " metrics of epoch " << i + 1 << " after the resume";
    }
  for (size_t i = 0; i < a.size(); ++i) {  // the rest of the line: epoch, lr, trainable_params, unfrozen
    nlohmann::json x = a[i], y = b[i];
    for (nlohmann::json* j : {&x, &y}) j->erase("train"), j->erase("val");
    EXPECT_EQ(x.dump(), y.dump()) << "epoch " << i + 1 << " after the resume";
  }
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
}  // namespace

// tlengine and PyTorch 1.13 doing the same job: same initial weights (converted from PyTorch's .pth), same PNG
// images (decoded identically), same order, no augmentation, SGD with momentum and weight decay. Full fine-tuning
// is compared over one epoch, feature extraction (frozen backbone) over three.
// Two comparisons, with bounds that follow from the arithmetic rather than from one machine:
//  - float64 on both sides (--precision fp64 and model.double()): the same trajectory without float32 rounding.
//    Summation order still differs (BLAS kernels, thread splits), but at 1e-16 per operation; even amplified by
//    a chaotic epoch it stays far below 1e-9 relative, while any real defect (a wrong momentum, a missing weight
//    decay term, a wrong gradient) moves the losses by far more. This is the tight check.
//  - float32 (the user's run): its distance from PyTorch's float64 losses is bounded by a multiple of the
//    distance PyTorch's own float32 run shows from its float64 run on the same job, on the same machine: how far
//    float32 rounding can carry this trajectory. PyTorch's float32 run uses the memory format tlengine's CPU
//    float32 uses (channels_last when built with oneDNN): this job's synthetic images have flat regions whose
//    exact ties (max pooling) NCHW kernels keep and NHWC kernels break by rounding, which moves the epoch's loss
//    by ~3e-3 relative in PyTorch's own channels_last run as in ours, against ~3e-7 for its NCHW run. OpenBLAS picks other kernels on other processors (and for other
//    OPENBLAS_CORETYPE values), so no fixed float32 bound holds everywhere for a chaotic full fine-tune; this one
//    scales with what float32 does there. A floor of 1e-5 relative (about 84 float32 ulps) covers epochs where PyTorch's
//    float32 run happens to land almost exactly on its float64 one.
TEST(Train, FinetuneReachesTheSameLossesAsPyTorch) {
  const std::string d = fresh_dir("train_parity");
  // JPEG and PNG files: both decode to PIL's pixels (JPEG only with libjpeg-turbo; stb_image is a few levels off).
  const bool jpeg_like_pil = std::string(io::jpeg_decoder_name()) == "libjpeg-turbo";
  const std::string data = make_data(d + "/data", 8, 4, jpeg_like_pil ? "mixed" : "png");
  run_torch_script("finetune_parity.py", "weights " + data + " " + d);
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + d + "/init.pth " + d + "/init.bin", &log), 0) << log;
  struct Case {
    std::string mode;
    int epochs;
    double lr, weight_decay;
  };
  auto read_json = [](const std::string& path) {
    std::ifstream f(path);
    return nlohmann::json::parse(f);
  };
  for (const Case& c : {Case{"full", 1, 0.001, 5e-4}, Case{"head", 3, 0.01, 1e-4}}) {
    std::map<std::string, std::vector<nlohmann::json>> ours;
    std::map<std::string, nlohmann::json> ref;
    for (const std::string precision : {"fp64", "fp32"}) {
      // PyTorch's float32 run uses the memory format tlengine's CPU float32 runs in (channels_last with oneDNN).
      const std::string torch_precision =
          precision == "fp32" && conv2d_cpu_float32_layout() == Layout::NHWC ? "fp32_nhwc" : precision;
      run_torch_script("finetune_parity.py", "train " + data + " " + d + " " + c.mode + " " + std::to_string(c.epochs) +
                                                 " " + std::to_string(c.lr) + " " + std::to_string(c.weight_decay) +
                                                 " " + torch_precision);
      ref[precision] = read_json(d + "/torch_" + c.mode + "_" + torch_precision + ".json");
      train::TrainOptions o = tiny(data, d + "/run_" + c.mode + "_" + precision);
      o.weights = d + "/init.bin";
      o.shuffle = false;
      o.epochs = c.epochs;
      o.lr = c.lr;
      o.weight_decay = c.weight_decay;
      o.precision = precision;
      if (c.mode == "head") o.freeze.freeze = "backbone";
      std::ostringstream out;
      train::run_training(o, out);
      ours[precision] = read_jsonl(o.out + "/metrics.jsonl");
      ASSERT_EQ(ours[precision].size(), static_cast<size_t>(c.epochs));
    }
    for (size_t e = 0; e < static_cast<size_t>(c.epochs); ++e) {
      for (const char* phase : {"train", "val"}) {
        const std::string what = c.mode + " epoch " + std::to_string(e + 1) + " " + phase + " loss";
        const double t64 = ref["fp64"][std::string(phase) + "_loss"][e], t32 = ref["fp32"][std::string(phase) + "_loss"][e];
        const double o64 = ours["fp64"][e][phase]["loss"], o32 = ours["fp32"][e][phase]["loss"];
        EXPECT_NEAR(o64, t64, 1e-9 * std::fabs(t64)) << what << " (float64)";
        const double spread = std::fabs(t32 - t64);
        const double bound = std::max(10 * spread, 1e-5 * std::fabs(t64));
        EXPECT_NEAR(o32, t64, bound) << what << " (float32; PyTorch's float32 run is " << spread
                                     << " from its float64 run)";
        std::printf("[parity] %s: float64 |ours-torch| %.3g; float32 |ours-torch64| %.3g, |torch32-torch64| %.3g\n",
                    what.c_str(), std::fabs(o64 - t64), std::fabs(o32 - t64), spread);
      }
    }
  }
}

// The new architectures doing the same full fine-tune as PyTorch, in float64 on both sides (the tight check above:
// 1e-9 relative): mobilenet_v2 (ReLU6, depthwise, linear bottlenecks) and shufflenet_v2_x1_0 (split, channel
// shuffle) at 32 px, googlenet at 64 px and inception_v3 at 299 px (its auxiliary classifier needs that) with their
// auxiliary classifiers in the loss (main + 0.3 (aux1 + aux2), main + 0.4 aux). Dropout off on both sides.
TEST(Train, NewArchitecturesFinetuneLikePyTorch) {
  struct Case {
    std::string arch;
    int size;
  };
  for (const Case& c : {Case{"mobilenet_v2", 32}, Case{"shufflenet_v2_x1_0", 32}, Case{"googlenet", 64},
                        Case{"inception_v3", 299}}) {
    const std::string d = fresh_dir("train_parity_" + c.arch);
    const bool large = c.size > 100;  // one batch of 8 train images and 4 val images keeps 299 px quick
    const std::string data = make_data(d + "/data", large ? 2 : 8, large ? 1 : 4);
    run_torch_script("finetune_parity.py", "weights " + data + " " + d + " " + c.arch);
    std::string log;
    ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + d + "/init.pth " + d + "/init.bin", &log), 0) << log;
    run_torch_script("finetune_parity.py", "train " + data + " " + d + " full 1 0.001 0.0005 fp64 " + c.arch + " " +
                                               std::to_string(c.size));
    std::ifstream f(d + "/torch_full_fp64.json");
    const nlohmann::json ref = nlohmann::json::parse(f);
    train::TrainOptions o = tiny(data, d + "/run");
    o.arch = c.arch;
    o.image_size = c.size;
    o.weights = d + "/init.bin";
    o.shuffle = false;
    o.epochs = 1;
    o.lr = 0.001;
    o.weight_decay = 5e-4;
    o.precision = "fp64";
    o.dropout = 0;
    std::ostringstream out;
    train::run_training(o, out);
    const std::vector<nlohmann::json> ours = read_jsonl(o.out + "/metrics.jsonl");
    ASSERT_EQ(ours.size(), 1u) << out.str();
    for (const char* phase : {"train", "val"}) {
      const double t = ref[std::string(phase) + "_loss"][0], mine = ours[0][phase]["loss"];
      EXPECT_NEAR(mine, t, 1e-9 * std::fabs(t)) << c.arch << " " << phase << " loss (float64)";
      std::printf("[parity] %s %s loss: ours %.12g, PyTorch %.12g\n", c.arch.c_str(), phase, mine, t);
    }
  }
}

// --no-aux: GoogLeNet trains without its auxiliary classifiers, and the weights it writes have none.
TEST(Train, NoAuxDropsTheAuxiliaryClassifiers) {
  const std::string d = fresh_dir("train_noaux");
  const std::string data = make_data(d + "/data", 2, 1);
  train::TrainOptions o = tiny(data, d + "/run");
  o.arch = "googlenet";
  o.epochs = 1;
  o.aux = false;
  std::ostringstream out;
  train::run_training(o, out);
  EXPECT_NE(out.str().find("auxiliary classifiers dropped"), std::string::npos) << out.str();
  const io::TensorFile saved = io::read_safetensors(o.out + "/best.bin");
  EXPECT_TRUE(saved.has("fc.weight"));
  for (const std::string& name : saved.names) EXPECT_NE(name.rfind("aux", 0), 0u) << name;
}

TEST(Train, ResumeAfterAStopGivesTheSameWeightsAsOneRun) {
  const std::string d = fresh_dir("train_resume");
  const std::string data = make_data(d + "/data");
  // resnet18, and mobilenet_v2 whose classifier dropout must draw after the resume the masks it would have drawn.
  for (const std::string arch : {"resnet18", "mobilenet_v2"}) {
    train::TrainOptions a = tiny(data, d + "/straight_" + arch);
    a.arch = arch;
    a.augment = true;  // random crops and flips, shuffling: all must resume exactly
    a.optimizer = "adamw";
    a.schedule = "cosine";
    a.warmup_epochs = 1;
    std::ostringstream log;
    train::run_training(a, log);
    train::TrainOptions b = a;
    b.out = d + "/resumed_" + arch;
    b.stop_after_steps = 3;  // mid-epoch 1 (4 steps per epoch)
    EXPECT_TRUE(train::run_training(b, log).interrupted);
    b.stop_after_steps = 0;
    b.resume = true;
    train::TrainResult r = train::run_training(b, log);
    EXPECT_FALSE(r.interrupted);
    EXPECT_EQ(r.epochs_done, 2);
    train::StateDict x = train::load_state_dict(a.out + "/last.ckpt"), y = train::load_state_dict(b.out + "/last.ckpt");
    int compared = 0;
    for (const auto& [k, t] : x.tensors) {
      ASSERT_TRUE(y.has_tensor(k)) << k;
      EXPECT_EQ(t.to_doubles(), y.get_tensor(k).to_doubles()) << arch << " " << k << " differs after resume";
      ++compared;
    }
    EXPECT_GT(compared, 100);
    expect_same_metrics(a.out + "/metrics.jsonl", b.out + "/metrics.jsonl");
  }
}

TEST(Train, FreezePlansAndTheirErrors) {
  auto m = models::create_model("resnet18", 3, 0);
  train::FreezeOptions f;
  f.freeze = "backbone";
  train::FreezePlan p = train::apply_freeze(*m, f);
  EXPECT_EQ(p.trainable_params, 512 * 3 + 3);
  EXPECT_EQ(p.first_trainable, "fc.weight");
  f.freeze = "until=layer3";
  p = train::apply_freeze(*m, f);
  EXPECT_EQ(p.first_trainable, "layer4.0.conv1.weight");
  f.freeze = "backbone";
  f.trainable = {"layer4.1.*"};
  f.freeze_bn = true;
  p = train::apply_freeze(*m, f);
  EXPECT_EQ(p.first_trainable, "layer4.1.conv1.weight");
  EXPECT_NE(p.summary().find("running statistics"), std::string::npos);
  f.trainable = {"nothing.*"};
  EXPECT_THROW(train::apply_freeze(*m, f), ValueError);
  f.trainable.clear();
  f.freeze = "until=layer9";
  try {
    train::apply_freeze(*m, f);
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("layer4"), std::string::npos) << "lists the blocks: " << e.what();
  }
  f.freeze = "until=fc";
  EXPECT_THROW(train::apply_freeze(*m, f), ValueError);  // nothing would train
}

TEST(Train, DivergedLossStopsAndKeepsTheLastGoodCheckpoint) {
  const std::string d = fresh_dir("train_nan");
  const std::string data = make_data(d + "/data");
  train::TrainOptions o = tiny(data, d + "/run");
  o.epochs = 1;
  std::ostringstream log;
  train::run_training(o, log);
  const std::string good = slurp(d + "/run/last.ckpt");
  o.optimizer = "adam";  // steps of size lr whatever the gradient: the logits overflow float32 at once
  o.lr = 3e38;
  o.epochs = 2;
  try {
    train::run_training(o, log);
    FAIL() << "no error for a diverged loss";
  } catch (const train::DivergedError& e) {
    EXPECT_NE(std::string(e.what()).find("--lr"), std::string::npos) << e.what();
  }
  EXPECT_EQ(slurp(d + "/run/last.ckpt"), good) << "the last good checkpoint was overwritten";
  train::load_state_dict(d + "/run/last.ckpt");  // and it still loads
}

TEST(Train, ResumeRefusesAnotherArchitectureOrClassCount) {
  const std::string d = fresh_dir("train_wrong_ckpt");
  const std::string data = make_data(d + "/data");
  train::TrainOptions o = tiny(data, d + "/run");
  o.epochs = 1;
  std::ostringstream log;
  train::run_training(o, log);
  o.resume = true;
  o.epochs = 2;
  o.arch = "resnet34";
  try {
    train::run_training(o, log);
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint of resnet18"), std::string::npos) << e.what();
  }
  io::SyntheticOptions s;
  s.num_classes = 3;
  s.train_per_class = 4;
  s.val_per_class = 2;
  s.min_side = 40;
  s.max_side = 48;
  io::write_synthetic_image_folder(d + "/data3", s);
  o.arch = "resnet18";
  o.data = d + "/data3";
  EXPECT_THROW(train::run_training(o, log), ValueError);
}

TEST(Train, BadImagesFailNamingTheFileOrAreSkipped) {
  const std::string d = fresh_dir("train_bad");
  const std::string data = make_data(d + "/data");
  const std::string cls = data + "/train/" + io::synthetic_class_name(1);
  std::ofstream(cls + "/zero.png").close();
  std::ofstream(cls + "/text.jpg") << "this is not an image";
  const std::string good = slurp(cls + "/" + fs::directory_iterator(cls)->path().filename().string());
  std::ofstream(cls + "/truncated.png", std::ios::binary) << good.substr(0, good.size() / 2);
  train::TrainOptions o = tiny(data, d + "/run");
  o.epochs = 1;
  std::ostringstream log;
  try {
    train::run_training(o, log);
    FAIL() << "bad images went unnoticed";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("zero.png") != std::string::npos || msg.find("text.jpg") != std::string::npos ||
                msg.find("truncated.png") != std::string::npos) << msg;
  }
  o.on_bad_image = "skip";
  std::ostringstream log2;
  train::run_training(o, log2);
  EXPECT_NE(log2.str().find("3 images skipped"), std::string::npos) << log2.str();
  // Missing folder and empty class folder: clear errors.
  o.data = d + "/nope";
  EXPECT_THROW(train::run_training(o, log), IOError);
  fs::create_directories(data + "/train/zz_empty");
  o.data = data;
  try {
    train::run_training(o, log);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("zz_empty"), std::string::npos) << e.what();
  }
}

TEST(Train, EarlyStoppingEvalAndFrozenBatchNormModes) {
  const std::string d = fresh_dir("train_early");
  const std::string data = make_data(d + "/data");
  train::TrainOptions o = tiny(data, d + "/run");
  o.epochs = 6;
  o.lr = 0.0;  // nothing changes (frozen batch norm on running statistics): no epoch after the first is better
  o.freeze.freeze = "backbone";
  o.freeze.freeze_bn = true;
  o.early_stopping = 2;
  std::ostringstream log;
  train::TrainResult r = train::run_training(o, log);
  EXPECT_TRUE(r.early_stopped);
  EXPECT_EQ(r.epochs_done, 3);
  EXPECT_EQ(r.best_epoch, 0);
  // eval on the best weights gives the best val accuracy again.
  train::EvalOptions e;
  e.weights = r.best_path;
  e.data = data;
  e.image_size = 32;
  e.val_transform = "resize";
  e.device = "cpu";
  std::ostringstream eval_log;
  EXPECT_NEAR(train::run_eval(e, eval_log), r.best_val_acc, 1e-12);
  EXPECT_NE(eval_log.str().find("Confusion"), std::string::npos) << eval_log.str();
  // Frozen batch norm: batch statistics and running updates by default (PyTorch), running statistics with
  // --freeze-bn (no update).
  for (bool freeze_bn : {false, true}) {
    auto m = models::create_model("resnet18", 4, 0);
    train::FreezeOptions f;
    f.freeze = "backbone";
    f.freeze_bn = freeze_bn;
    train::apply_freeze(*m, f);
    m->train();
    Tensor before;
    for (nn::StateEntry& s : m->state())
      if (s.name == "bn1.running_mean") before = s.buffer->clone();
    m->forward(Variable(Tensor::randn({2, 3, 32, 32}, 1)));
    for (nn::StateEntry& s : m->state())
      if (s.name == "bn1.running_mean") {
        if (freeze_bn) EXPECT_EQ(s.buffer->to_doubles(), before.to_doubles());
        else EXPECT_NE(s.buffer->to_doubles(), before.to_doubles());
      }
  }
}

TEST(Checkpoint, StaysLoadableWhenTheWriterIsKilled) {
  const std::string d = fresh_dir("ckpt_kill");
  const std::string path = d + "/state.ckpt";
  auto make = [](double v) {
    train::StateDict sd;
    sd.tensors["big"] = Tensor::full({4 << 20}, v);  // 16 MiB: the write takes a while
    sd.set_double("v", v);
    return sd;
  };
  train::save_state_dict(path, make(1.0));
  for (int round = 0; round < 6; ++round) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // child: keep rewriting the checkpoint until killed
      for (int i = 0;; ++i) train::save_state_dict(path, make(2.0 + i));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(60 + 37 * round));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    train::StateDict sd = train::load_state_dict(path);  // never a torn file
    const double v = sd.get_double("v");
    EXPECT_EQ(sd.get_tensor("big").to_doubles()[12345], v);
  }
}

TEST(Cli, CtrlCFinishesTheStepSavesAndResumes) {
  const std::string d = fresh_dir("cli_sigint");
  const std::string data = make_data(d + "/data", 16, 4);
  const std::string out = d + "/run", err = d + "/stderr.txt";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    FILE* f = std::freopen(err.c_str(), "w", stderr);
    (void)f;
    execl(TL_CLI, TL_CLI, "train", "--data", data.c_str(), "--out", out.c_str(), "--epochs", "200", "--image-size",
          "32", "--batch-size", "4", "--device", "cpu", "--workers", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until it trains, then Ctrl-C.
  for (int i = 0; i < 600 && slurp(err).find("train epoch 1") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << slurp(err);
  EXPECT_EQ(WEXITSTATUS(status), 130) << slurp(err);
  EXPECT_NE(slurp(err).find("--resume"), std::string::npos) << slurp(err);
  train::StateDict sd = train::load_state_dict(out + "/last.ckpt");
  EXPECT_GE(sd.get_int("epoch") * 1000 + sd.get_int("batch"), 1);
}

TEST(Cli, PredictTopKJsonCsvAndLogits) {
  const std::string d = fresh_dir("cli_predict");
  const std::string data = make_data(d + "/data", 2, 1);
  auto m = models::create_model("resnet18", 4, 5);
  std::vector<std::string> classes;
  for (int c = 0; c < 4; ++c) classes.push_back(io::synthetic_class_name(c));
  models::save_weights(*m, d + "/w.bin", classes);
  Tensor x = Tensor::randn({2, 3, 64, 64}, 1);
  io::write_npy(d + "/x.npy", x);
  std::string out;
  ASSERT_EQ(run_command(std::string(TL_CLI) + " predict --weights " + d + "/w.bin --npy " + d + "/x.npy --logits " + d +
                            "/logits.npy --topk 3 --device cpu", &out), 0) << out;
  m->eval();
  NoGradGuard no_grad;
  Tensor ref = m->forward(Variable(x)).value();
  expect_close(io::read_npy(d + "/logits.npy"), ref, 1e-6, "predict logits");
  const auto json_start = out.find('[');
  ASSERT_NE(json_start, std::string::npos) << out;
  nlohmann::json j = nlohmann::json::parse(out.substr(json_start, out.rfind(']') - json_start + 1));
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["top"].size(), 3u);
  std::vector<double> l = ref.to_doubles();
  const int best = static_cast<int>(std::max_element(l.begin(), l.begin() + 4) - l.begin());
  EXPECT_EQ(j[0]["top"][0]["class"], classes[static_cast<size_t>(best)]);
  ASSERT_EQ(run_command(std::string(TL_CLI) + " predict --weights " + d + "/w.bin " + data + "/val --format csv "
                            "--device cpu", &out), 0) << out;
  EXPECT_NE(out.find("file,rank,class,index,probability"), std::string::npos) << out;
  EXPECT_NE(out.find(io::synthetic_class_name(0)), std::string::npos) << out;
  EXPECT_NE(run_command(std::string(TL_CLI) + " predict --weights " + d + "/missing.bin " + data, &out), 0);
  EXPECT_NE(out.find("missing.bin"), std::string::npos) << out;
}

// The feature cache (train/feature_cache.h): with only the head training, frozen batch norm on running statistics
// and a deterministic transform, the run trains the head on features computed once per image. It must give the
// same losses and head weights as running the backbone every epoch: exactly the same arithmetic in float64 (up to
// summation order: 1e-12), and float32 within rounding.
TEST(Train, FeatureCacheGivesTheSameRunAsTheBackboneEveryEpoch) {
  const std::string d = fresh_dir("train_feature_cache");
  const std::string data = make_data(d + "/data");
  for (const std::string precision : {"fp64", "fp32"}) {
    std::map<bool, std::vector<nlohmann::json>> lines;
    std::map<bool, train::StateDict> last;
    for (bool cached : {false, true}) {
      train::TrainOptions o = tiny(data, d + "/run_" + precision + (cached ? "_cached" : "_plain"));
      o.freeze.freeze = "backbone";
      o.freeze.freeze_bn = true;
      o.shuffle = true;  // the cached epochs must follow the loader's seeded order
      o.epochs = 3;
      o.precision = precision;
      o.feature_cache = cached;
      std::ostringstream out;
      train::run_training(o, out);
      EXPECT_NE(out.str().find(cached ? "feature cache: on" : "feature cache: off (--no-cache)"), std::string::npos)
          << out.str();
      lines[cached] = read_jsonl(o.out + "/metrics.jsonl");
      last[cached] = train::load_state_dict(o.out + "/last.ckpt");
    }
    const double tol = precision == "fp64" ? 1e-12 : 1e-5;
    ASSERT_EQ(lines[true].size(), 3u);
    for (size_t e = 0; e < 3; ++e)
      for (const char* phase : {"train", "val"}) {
        const double a = lines[false][e][phase]["loss"], b = lines[true][e][phase]["loss"];
        EXPECT_NEAR(b, a, tol * std::fabs(a)) << precision << " epoch " << e + 1 << " " << phase;
        EXPECT_EQ(lines[false][e][phase]["count"], lines[true][e][phase]["count"]) << precision << " " << phase;
        EXPECT_EQ(lines[false][e][phase]["top1"], lines[true][e][phase]["top1"]) << precision << " " << phase;
      }
    for (const char* name : {"model.fc.weight", "model.fc.bias"}) {
      const std::vector<double> a = last[false].get_tensor(name).to_doubles(), b = last[true].get_tensor(name).to_doubles();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], a[i], tol * 10 + tol * std::fabs(a[i])) << name << " " << i;
    }
  }
}

// The cache at a block boundary (--freeze until=<block> --freeze-bn --no-augment): the frozen part runs once per
// image and the trainable blocks after it train on its stored output; the same run as without the cache (float64
// to 1e-12, float32 to 1e-5), for ResNet (cut after layer3) and DenseNet (cut after transition2).
TEST(Train, FeatureCacheAtABlockBoundaryGivesTheSameRun) {
  const std::string d = fresh_dir("train_feature_cache_cut");
  const std::string data = make_data(d + "/data");
  struct Case {
    std::string arch, until, cut;
  };
  for (const Case& c : {Case{"resnet18", "layer3", "layer3"}, Case{"densenet121", "features.transition2",
                                                                     "features.transition2"}}) {
    for (const std::string precision : {"fp64", "fp32"}) {
      std::map<bool, std::vector<nlohmann::json>> lines;
      for (bool cached : {false, true}) {
        train::TrainOptions o = tiny(data, d + "/" + c.arch + "_" + precision + (cached ? "_cached" : "_plain"));
        o.arch = c.arch;
        o.freeze.freeze = "until=" + c.until;
        o.freeze.freeze_bn = true;
        o.shuffle = true;
        o.precision = precision;
        o.feature_cache = cached;
        std::ostringstream out;
        train::run_training(o, out);
        if (cached) {
          EXPECT_NE(out.str().find("feature cache: on at " + c.cut), std::string::npos) << out.str();
        }
        lines[cached] = read_jsonl(o.out + "/metrics.jsonl");
      }
      const double tol = precision == "fp64" ? 1e-12 : 1e-5;
      ASSERT_EQ(lines[true].size(), lines[false].size());
      for (size_t e = 0; e < lines[true].size(); ++e)
        for (const char* phase : {"train", "val"}) {
          const double a = lines[false][e][phase]["loss"], b = lines[true][e][phase]["loss"];
          EXPECT_NEAR(b, a, tol * std::fabs(a)) << c.arch << " " << precision << " epoch " << e + 1 << " " << phase;
        }
    }
  }
}

// --cache-views K with augmentation: view v holds the backbone's features of the loader's epoch-v images (its crops
// and flips), each epoch draws one view per image (all views used), and a run with it says it approximates.
TEST(Train, FeatureCacheViewsHoldEachEpochsAugmentedImages) {
  const std::string d = fresh_dir("train_feature_cache_views");
  const std::string data = make_data(d + "/data");
  auto model = models::create_model("resnet18", 4, 0);
  model->to_dtype(DType::F64);
  train::FreezeOptions f;
  f.freeze = "backbone";
  f.freeze_bn = true;
  train::apply_freeze(*model, f);
  io::ImageFolder folder = io::scan_image_folder(data + "/train");
  io::LoaderOptions lo;
  lo.batch_size = 3;
  lo.shuffle = true;
  lo.num_workers = 2;
  io::DataLoader loader(folder.samples, io::train_transform(32), lo);
  std::ostringstream log;
  train::FeatureCache cache(*model, loader, Device::CPU, DType::F64, Layout::NCHW, "views", true, log, 2);
  EXPECT_EQ(cache.views(), 2);
  // What the backbone gives for each epoch's images, per sample (float64: exact up to summation order).
  std::map<std::pair<int64_t, int64_t>, std::vector<double>> expected;  // (view, sample) -> features
  {
    NoGradGuard no_grad;
    for (int64_t v = 0; v < 2; ++v) {
      loader.start_epoch(v);
      while (const io::Batch* b = loader.next()) {
        const std::vector<double> f =
            model->features(Variable(b->images_to(Device::CPU).to(DType::F64))).value().to_doubles();
        const int64_t dim = static_cast<int64_t>(f.size()) / b->size;
        for (int64_t r = 0; r < b->size; ++r)
          expected[{v, b->samples[r]}] = std::vector<double>(f.begin() + r * dim, f.begin() + (r + 1) * dim);
      }
    }
  }
  std::set<int64_t> views_used;
  for (int64_t e = 0; e < 4; ++e) {
    const std::vector<int64_t> order = loader.epoch_order(e);
    for (int64_t b = 0; b < cache.batches_per_epoch(); ++b) {
      const train::FeatureCache::Batch fb = cache.batch(e, b);
      const std::vector<double> got = fb.features.to_doubles();
      for (int64_t r = 0; r < fb.size; ++r) {
        const int64_t id = order[static_cast<size_t>(b * 3 + r)];
        const int64_t v = cache.view_of(e, id);
        views_used.insert(v);
        const std::vector<double>& want = expected.at({v, id});
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_NEAR(got[r * want.size() + i], want[i], 1e-9 * (1 + std::fabs(want[i]))) << "epoch " << e << " sample " << id;
      }
    }
  }
  EXPECT_EQ(views_used.size(), 2u) << "every view is drawn";
  // The crops differ between views (otherwise the test above proves nothing).
  EXPECT_NE(expected.at({0, 0}), expected.at({1, 0}));

  train::TrainOptions o = tiny(data, d + "/run");
  o.freeze.freeze = "backbone";
  o.freeze.freeze_bn = true;
  o.augment = true;
  o.cache_views = 2;
  std::ostringstream out;
  train::run_training(o, out);
  EXPECT_NE(out.str().find("feature cache: on with 2 augmented views"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("APPROXIMATES fresh augmentation"), std::string::npos) << out.str();
  EXPECT_EQ(read_jsonl(o.out + "/metrics.jsonl").size(), 2u);
}

// --cache-dtype float16 / bfloat16: each cached feature is the float32 feature rounded once to that dtype (and
// widened back to float32 in the batches); a run with it trains; an unknown storage is refused by name.
TEST(Train, FeatureCacheHalfStorageRoundsEachFeatureOnce) {
  const std::string d = fresh_dir("train_feature_cache_half");
  const std::string data = make_data(d + "/data");
  auto model = models::create_model("resnet18", 4, 0);
  train::FreezeOptions f;
  f.freeze = "backbone";
  f.freeze_bn = true;
  train::apply_freeze(*model, f);
  io::ImageFolder folder = io::scan_image_folder(data + "/train");
  io::LoaderOptions lo;
  lo.batch_size = 4;
  lo.num_workers = 2;
  io::DataLoader loader(folder.samples, io::eval_resize_transform(32), lo);
  std::ostringstream log;
  train::FeatureCache full(*model, loader, Device::CPU, DType::F32, Layout::NCHW, "f32", true, log);
  for (DType storage : {DType::F16, DType::BF16}) {
    train::FeatureCache half(*model, loader, Device::CPU, DType::F32, Layout::NCHW, "half", true, log, 1, "", storage);
    for (int64_t b = 0; b < full.batches_per_epoch(); ++b) {
      const Tensor a = full.batch(0, b).features, h = half.batch(0, b).features;
      EXPECT_EQ(h.dtype(), DType::F32);
      EXPECT_EQ(h.to_doubles(), a.to(storage).to(DType::F32).to_doubles()) << dtype_name(storage) << " batch " << b;
      EXPECT_NE(h.to_doubles(), a.to_doubles()) << "the rounding happened";
    }
  }
  train::TrainOptions o = tiny(data, d + "/run");
  o.freeze = f;
  o.cache_dtype = "bfloat16";
  std::ostringstream out;
  train::run_training(o, out);
  EXPECT_NE(out.str().find("feature cache: on"), std::string::npos) << out.str();
  EXPECT_EQ(read_jsonl(o.out + "/metrics.jsonl").size(), 2u);
  o.cache_dtype = "int8";
  o.out = d + "/bad";
  EXPECT_TRUE(contains(error_of([&] { train::run_training(o, out); }), "--cache-dtype"));
}

// Over the RAM budget the features go to a memory-mapped scratch file under --out: the same run as in RAM, and no
// file left behind. A scratch file that cannot be created is an IOError naming it.
TEST(Train, FeatureCacheSpillsToAMappedFileOverTheBudget) {
  const std::string d = fresh_dir("train_feature_cache_spill");
  const std::string data = make_data(d + "/data");
  std::map<bool, std::vector<nlohmann::json>> lines;
  for (bool spill : {false, true}) {
    train::TrainOptions o = tiny(data, d + (spill ? "/spill" : "/ram"));
    o.freeze.freeze = "backbone";
    o.freeze.freeze_bn = true;
    o.precision = "fp64";
    o.cache_budget_gb = spill ? 0.0 : 4.0;
    std::ostringstream out;
    train::run_training(o, out);
    EXPECT_EQ(out.str().find("memory-mapped scratch file") != std::string::npos, spill) << out.str();
    lines[spill] = read_jsonl(o.out + "/metrics.jsonl");
    for (const auto& e : fs::directory_iterator(o.out))
      EXPECT_EQ(e.path().filename().string().find(".feature_cache"), std::string::npos) << e.path();
  }
  ASSERT_EQ(lines[true].size(), lines[false].size());
  for (size_t e = 0; e < lines[true].size(); ++e)
    for (const char* phase : {"train", "val"})
      EXPECT_EQ(lines[true][e][phase]["loss"], lines[false][e][phase]["loss"]) << phase << " epoch " << e + 1;
  const std::string err = error_of([&] { io::MappedScratch s(d + "/no/such/folder/x.tmp", 4096); });
  EXPECT_TRUE(contains(err, "no/such/folder/x.tmp")) << err;
}

// Mid-epoch stop and --resume with the cache: the same weights as one cached run.
TEST(Train, FeatureCacheResumesExactly) {
  const std::string d = fresh_dir("train_feature_cache_resume");
  const std::string data = make_data(d + "/data");
  train::TrainOptions a = tiny(data, d + "/straight");
  a.freeze.freeze = "backbone";
  a.freeze.freeze_bn = true;
  std::ostringstream log;
  train::run_training(a, log);
  train::TrainOptions b = a;
  b.out = d + "/resumed";
  b.stop_after_steps = 3;
  EXPECT_TRUE(train::run_training(b, log).interrupted);
  b.stop_after_steps = 0;
  b.resume = true;
  EXPECT_FALSE(train::run_training(b, log).interrupted);
  train::StateDict x = train::load_state_dict(a.out + "/last.ckpt"), y = train::load_state_dict(b.out + "/last.ckpt");
  for (const char* k : {"model.fc.weight", "model.fc.bias"})
    EXPECT_EQ(x.get_tensor(k).to_doubles(), y.get_tensor(k).to_doubles()) << k;
}

// When the cache does not apply, the plan says why and what would make it apply.
TEST(Train, FeatureCachePlanSaysWhyItIsOff) {
  auto m = models::create_model("resnet18", 3, 0);
  train::FreezeOptions f;
  f.freeze = "backbone";
  train::FreezePlan p = train::apply_freeze(*m, f);
  train::FeatureCachePlan c = train::plan_feature_cache(*m, p, true, true, 0, 1 << 20, 1 << 30);
  EXPECT_FALSE(c.use);
  EXPECT_NE(c.reason.find("--freeze-bn"), std::string::npos) << c.reason;
  f.freeze_bn = true;
  p = train::apply_freeze(*m, f);
  EXPECT_TRUE(train::plan_feature_cache(*m, p, true, true, 0, 1 << 20, 1 << 30).use);
  c = train::plan_feature_cache(*m, p, false, true, 0, 1 << 20, 1 << 30);
  EXPECT_FALSE(c.use);
  EXPECT_NE(c.reason.find("--no-augment"), std::string::npos) << c.reason;
  EXPECT_NE(c.reason.find("--cache-views"), std::string::npos) << c.reason;
  c = train::plan_feature_cache(*m, p, false, true, 3, 1 << 20, 1 << 30);
  EXPECT_TRUE(c.use);
  EXPECT_NE(c.reason.find("APPROXIMATES"), std::string::npos) << c.reason;
  EXPECT_FALSE(train::plan_feature_cache(*m, p, true, false, 0, 1 << 20, 1 << 30).use);
  c = train::plan_feature_cache(*m, p, true, true, 0, 2LL << 30, 1 << 30);
  EXPECT_TRUE(c.use);  // over the RAM budget: spilled to a mapped file
  EXPECT_TRUE(c.spill);
  EXPECT_NE(c.reason.find("memory-mapped scratch file"), std::string::npos) << c.reason;
  EXPECT_NE(c.reason.find("budget"), std::string::npos) << c.reason;
  EXPECT_FALSE(train::plan_feature_cache(*m, p, true, true, 0, 1 << 20, 1 << 30).spill);
  // Frozen up to layer3: the cache cuts there (layer4 and fc train on layer3's stored output).
  f.freeze = "until=layer3";
  p = train::apply_freeze(*m, f);
  c = train::plan_feature_cache(*m, p, true, true, 0, 1 << 20, 1 << 30);
  EXPECT_TRUE(c.use);
  EXPECT_EQ(c.cut, 2);
  EXPECT_NE(c.reason.find("on at layer3"), std::string::npos) << c.reason;
  // Frozen only up to bn1: no cut point lies below the first trainable block.
  f.freeze = "until=bn1";
  p = train::apply_freeze(*m, f);
  c = train::plan_feature_cache(*m, p, true, true, 0, 1 << 20, 1 << 30);
  EXPECT_FALSE(c.use);
  EXPECT_NE(c.reason.find("cannot be cut"), std::string::npos) << c.reason;
  auto vgg = models::create_model("vgg16", 3, 0);  // dropout below classifier.6
  f.freeze = "backbone";
  p = train::apply_freeze(*vgg, f);
  c = train::plan_feature_cache(*vgg, p, true, true, 0, 1 << 20, 1 << 30);
  EXPECT_FALSE(c.use);
  EXPECT_NE(c.reason.find("dropout"), std::string::npos) << c.reason;
  vgg->set_dropout(0);
  EXPECT_TRUE(train::plan_feature_cache(*vgg, p, true, true, 0, 1 << 20, 1 << 30).use);
}

// --memory-format: the activations' layout is selectable, and a run gives the same losses in either layout. In
// float64, so that the comparison sees the layout plumbing and not rounding: the two layouts sum in different
// orders, and this tiny job (train-mode batch norm over 8 values per channel at 32 px) amplifies float32's 1e-7
// into percent-level differences within one epoch (measured), float64's 1e-16 into far less than 1e-9.
TEST(Train, MemoryFormatIsSelectableAndGivesTheSameRun) {
  EXPECT_EQ(train::parse_precision("fp32", Device::CPU, "nchw").layout, Layout::NCHW);
  EXPECT_EQ(train::parse_precision("fp32", Device::CPU, "nhwc").layout, Layout::NHWC);
  EXPECT_EQ(train::parse_precision("fp32", Device::CPU, "channels_last").layout, Layout::NHWC);
  EXPECT_EQ(train::parse_precision("fp64", Device::CPU, "nhwc").dtype, DType::F64);
  EXPECT_TRUE(contains(error_of([] { train::parse_precision("fp32", Device::CPU, "chw"); }), "--memory-format"));
  const std::string d = fresh_dir("train_memory_format");
  const std::string data = make_data(d + "/data", 8, 4);
  std::vector<double> losses[2];
  for (int i = 0; i < 2; ++i) {
    train::TrainOptions o = tiny(data, d + "/run" + std::to_string(i));
    o.epochs = 1;
    o.precision = "fp64";
    o.memory_format = i == 0 ? "nchw" : "nhwc";
    std::ostringstream log;
    train::run_training(o, log);
    EXPECT_TRUE(contains(log.str(), "epoch 1/1")) << log.str();
    for (const nlohmann::json& line : read_jsonl(d + "/run" + std::to_string(i) + "/metrics.jsonl")) {
      losses[i].push_back(line.at("train").at("loss").get<double>());
      losses[i].push_back(line.at("val").at("loss").get<double>());
    }
  }
  ASSERT_EQ(losses[0].size(), 2u);
  ASSERT_EQ(losses[1].size(), 2u);
  for (size_t k = 0; k < 2; ++k) EXPECT_NEAR(losses[0][k], losses[1][k], 1e-9 * std::fabs(losses[0][k])) << k;
}

// One spelling everywhere: --model is --arch (timm's name), -b is --batch-size, -j is --workers; the resolved
// options land in <out>/args.json; --version.
TEST(Cli, AliasesGiveTheSameRunAndArgsJsonRecordsIt) {
  const std::string d = fresh_dir("cli_aliases");
  const std::string data = make_data(d + "/data", 4, 2);
  const std::string common = " train --data " + data + " --epochs 1 --image-size 32 --device cpu --no-augment";
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CLI) + common + " --arch resnet18 --batch-size 4 --workers 1 --out " + d +
                            "/a",
                        &log),
            0)
      << log;
  ASSERT_EQ(run_command(std::string(TL_CLI) + common + " --model resnet18 -b 4 -j 1 --out " + d + "/b", &log), 0)
      << log;
  auto metrics = [&](const std::string& run) {
    std::vector<nlohmann::json> lines = read_jsonl(d + "/" + run + "/metrics.jsonl");
    return lines.empty() ? nlohmann::json() : lines.back();
  };
  EXPECT_FALSE(metrics("a").is_null());
  EXPECT_EQ(metrics("a").dump(), metrics("b").dump()) << "--model/-b/-j did not give the --arch/--batch-size run";
  for (const char* run : {"a", "b"}) {
    const nlohmann::json args = nlohmann::json::parse(slurp(d + "/" + run + "/args.json"));
    EXPECT_EQ(args.at("command"), "train");
    EXPECT_EQ(args.at("args").at("arch"), "resnet18") << args.dump();
    EXPECT_EQ(args.at("args").at("batch-size"), "4") << args.dump();
    EXPECT_EQ(args.at("args").at("workers"), "1") << args.dump();
    EXPECT_EQ(args.at("args").at("lr"), "0.001") << "a default is recorded too: " << args.dump();
    EXPECT_EQ(args.at("args").at("no-augment"), true) << args.dump();
    EXPECT_EQ(args.at("args").at("nesterov"), false) << args.dump();
  }
  // eval takes the same short options.
  ASSERT_EQ(run_command(std::string(TL_CLI) + " eval --weights " + d + "/a/best.bin --data " + data +
                            " -b 4 -j 1 --image-size 32 --device cpu",
                        &log),
            0)
      << log;
  ASSERT_EQ(run_command(std::string(TL_CLI) + " --version", &log), 0) << log;
  EXPECT_TRUE(contains(log, "tlengine 0.")) << log;
}

// `train --config FILE`: an earlier run's args.json repeats the run; the command line wins over the file; a key
// that is not an option is an error that names it.
TEST(Cli, ConfigFileRepeatsARunAndTheCommandLineWins) {
  const std::string d = fresh_dir("cli_config");
  const std::string data = make_data(d + "/data", 4, 2);
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CLI) + " train --data " + data + " --epochs 2 --image-size 32 --device cpu " +
                            "--no-augment --arch resnet18 -b 4 -j 1 --lr 0.01 --out " + d + "/a",
                        &log),
            0)
      << log;
  ASSERT_EQ(run_command(std::string(TL_CLI) + " train --config " + d + "/a/args.json --out " + d + "/b", &log), 0)
      << log;
  EXPECT_EQ(slurp(d + "/a/metrics.jsonl"), slurp(d + "/b/metrics.jsonl")) << "args.json did not repeat the run";
  nlohmann::json a = nlohmann::json::parse(slurp(d + "/a/args.json"));
  nlohmann::json b = nlohmann::json::parse(slurp(d + "/b/args.json"));
  EXPECT_NE(a["args"]["out"], b["args"]["out"]);
  a["args"].erase("out");
  b["args"].erase("out");
  EXPECT_EQ(a.dump(), b.dump()) << "the repeated run resolved different options";

  // The command line wins: one epoch instead of the file's two.
  ASSERT_EQ(run_command(std::string(TL_CLI) + " train --config " + d + "/a/args.json --epochs 1 --out " + d + "/c", &log),
            0)
      << log;
  EXPECT_EQ(read_jsonl(d + "/c/metrics.jsonl").size() * 2, read_jsonl(d + "/a/metrics.jsonl").size());
  EXPECT_EQ(nlohmann::json::parse(slurp(d + "/c/args.json"))["args"]["epochs"], "1");
  EXPECT_EQ(nlohmann::json::parse(slurp(d + "/c/args.json"))["args"]["lr"], "0.01") << "the file's value is kept";

  // A plain hand-written file with numbers and flags, and one misspelt key.
  {
    std::ofstream f(d + "/bad.json");
    f << R"({"data": ")" << data << R"(", "epochs": 1, "image-size": 32, "device": "cpu", "no-augment": true, "bogus-option": 3})";
  }
  EXPECT_NE(run_command(std::string(TL_CLI) + " train --config " + d + "/bad.json --out " + d + "/d", &log), 0);
  EXPECT_TRUE(contains(log, "bogus-option")) << log;
  {
    std::ofstream f(d + "/list.json");
    f << "[1, 2]";
  }
  EXPECT_NE(run_command(std::string(TL_CLI) + " train --config " + d + "/list.json --out " + d + "/e", &log), 0);
  EXPECT_TRUE(contains(log, "JSON object")) << log;
}

// Gradual unfreezing: --freeze backbone --unfreeze layer4@2,layer3@3. Epoch 1 trains only fc, epoch 2 also layer4,
// epoch 3 also layer3; layers below never change (their parameters equal the seeded start). A run stopped at the
// end of each epoch and resumed ends with the same checkpoint, bit for bit, as one straight run. The feature cache
// (on for epoch 1: --freeze-bn, no augmentation) is released at the first unfreeze.
TEST(Train, GradualUnfreezingTrainsTheRightLayersAndResumesExactly) {
  const std::string d = fresh_dir("train_unfreeze");
  const std::string data = make_data(d + "/data");
  train::TrainOptions a = tiny(data, d + "/straight");
  a.epochs = 3;
  a.freeze.freeze = "backbone";
  a.freeze.freeze_bn = true;
  a.unfreeze = {"layer4@2", "layer3@3"};
  a.optimizer = "adam";  // per-parameter step counts: the unfrozen layers' Adam state starts at their first update
  std::ostringstream log_a;
  train::run_training(a, log_a);
  EXPECT_TRUE(contains(log_a.str(), "gradual unfreezing: epoch 2: layer4; epoch 3: layer3")) << log_a.str();
  EXPECT_TRUE(contains(log_a.str(), "epoch 2: unfreezing layer4")) << log_a.str();
  EXPECT_TRUE(contains(log_a.str(), "feature cache released")) << log_a.str();

  auto start = models::create_model("resnet18", 4, a.seed);  // the seeded initialisation every run starts from
  std::map<std::string, std::vector<double>> initial;
  for (auto& [name, p] : start->named_parameters()) initial[name] = p.value().to_doubles();
  // Which parameter groups moved, by name prefix, in a checkpoint.
  auto moved = [&](const train::StateDict& sd, const std::string& prefix) {
    bool any = false, all = true;
    for (const auto& [name, values] : initial) {
      if (name.rfind(prefix, 0) != 0) continue;
      const bool changed = sd.get_tensor("model." + name).to_doubles() != values;
      any = any || changed;
      all = all && changed;
    }
    return any ? (all ? 2 : 1) : 0;  // 0: none, 1: some, 2: every tensor
  };

  train::TrainOptions b = a;
  b.out = d + "/resumed";
  const int64_t steps_per_epoch = 4;  // 32 images, batch 8
  std::ostringstream log_b;
  std::vector<std::array<int, 4>> seen;  // per epoch: fc, layer4, layer3, (conv1 + layer1 + layer2)
  for (int epoch = 1; epoch <= 3; ++epoch) {
    b.stop_after_steps = steps_per_epoch;
    b.resume = epoch > 1;
    train::run_training(b, log_b);
    const train::StateDict sd = train::load_state_dict(b.out + "/last.ckpt");
    seen.push_back({moved(sd, "fc."), moved(sd, "layer4."), moved(sd, "layer3."),
                    std::max({moved(sd, "conv1."), moved(sd, "bn1."), moved(sd, "layer1."), moved(sd, "layer2.")})});
  }
  EXPECT_EQ(seen[0], (std::array<int, 4>{2, 0, 0, 0})) << "epoch 1 trains fc only";
  EXPECT_EQ(seen[1], (std::array<int, 4>{2, 2, 0, 0})) << "epoch 2 trains layer4 too";
  EXPECT_EQ(seen[2], (std::array<int, 4>{2, 2, 2, 0})) << "epoch 3 trains layer3 too";
  b.stop_after_steps = 0;
  b.resume = true;
  EXPECT_FALSE(train::run_training(b, log_b).interrupted);

  const train::StateDict x = train::load_state_dict(a.out + "/last.ckpt"), y = train::load_state_dict(b.out + "/last.ckpt");
  int compared = 0;
  for (const auto& [k, t] : x.tensors) {
    ASSERT_TRUE(y.has_tensor(k)) << k;
    EXPECT_EQ(t.to_doubles(), y.get_tensor(k).to_doubles()) << k << " differs after resuming across the unfreezes";
    ++compared;
  }
  EXPECT_GT(compared, 100);
  expect_same_metrics(a.out + "/metrics.jsonl", b.out + "/metrics.jsonl");
  const std::vector<nlohmann::json> lines = read_jsonl(a.out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["unfrozen"].size(), 0u);
  EXPECT_EQ(lines[1]["unfrozen"], nlohmann::json::array({"layer4"}));
  EXPECT_EQ(lines[2]["unfrozen"], nlohmann::json::array({"layer3"}));
  EXPECT_LT(lines[0]["trainable_params"].get<int64_t>(), lines[1]["trainable_params"].get<int64_t>());
  EXPECT_LT(lines[1]["trainable_params"].get<int64_t>(), lines[2]["trainable_params"].get<int64_t>());
  // The history curves.png is drawn from (kept across the resumes) marks the epochs that unfroze something.
  const nlohmann::json history = nlohmann::json::parse(y.get_string("history"));  // the resumed run's
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[0]["unfrozen"], false);
  EXPECT_EQ(history[1]["unfrozen"], true);
  EXPECT_EQ(history[2]["unfrozen"], true);
}

// --freeze-epochs N (fastai's fine_tune): N epochs with the head alone, then everything, the body at 0.1 x --lr
// unless --backbone-lr-mult is given. And the schedule's errors.
TEST(Train, FreezeEpochsThenEverythingAndUnfreezeErrors) {
  const std::string d = fresh_dir("train_freeze_epochs");
  const std::string data = make_data(d + "/data");
  train::TrainOptions o = tiny(data, d + "/run");
  o.freeze_epochs = 1;
  o.stop_after_steps = 4;  // the end of epoch 1
  std::ostringstream log;
  train::run_training(o, log);
  auto start = models::create_model("resnet18", 4, o.seed);
  const std::vector<double> conv1 = start->named_parameters().front().second.value().to_doubles();
  train::StateDict sd = train::load_state_dict(o.out + "/last.ckpt");
  EXPECT_EQ(sd.get_tensor("model.conv1.weight").to_doubles(), conv1) << "the body trained during --freeze-epochs";
  o.stop_after_steps = 0;
  o.resume = true;
  train::run_training(o, log);
  sd = train::load_state_dict(o.out + "/last.ckpt");
  EXPECT_NE(sd.get_tensor("model.conv1.weight").to_doubles(), conv1) << "everything trains after --freeze-epochs";
  EXPECT_EQ(sd.get_string("optimizer.group.1.name"), "body");
  EXPECT_DOUBLE_EQ(sd.get_double("optimizer.group.1.lr"), 0.1 * o.lr) << "the body's default lr with --freeze-epochs";
  EXPECT_TRUE(contains(log.str(), "epoch 2: unfreezing everything")) << log.str();

  auto fails = [&](std::function<void(train::TrainOptions&)> change, const std::string& message) {
    train::TrainOptions bad = tiny(data, d + "/bad");
    bad.epochs = 4;
    bad.freeze.freeze = "backbone";
    change(bad);
    std::ostringstream l;
    try {
      train::run_training(bad, l);
      ADD_FAILURE() << "accepted; expected: " << message;
    } catch (const ValueError& e) {
      EXPECT_TRUE(contains(e.what(), message)) << e.what();
    }
  };
  fails([](auto& b) { b.unfreeze = {"layer9@2"}; }, "no block 'layer9' in resnet18; blocks: conv1");
  fails([](auto& b) { b.unfreeze = {"layer4@1"}; }, "between 2");
  fails([](auto& b) { b.unfreeze = {"layer4@5"}; }, "--epochs (4)");
  fails([](auto& b) { b.unfreeze = {"layer4"}; }, "expected <block>@<epoch>");
  fails([](auto& b) { b.unfreeze = {"layer4@x"}; }, "whole number");
  fails([](auto& b) { b.freeze.freeze = "none"; b.unfreeze = {"layer4@2"}; }, "already trains");
  fails([](auto& b) { b.unfreeze = {"layer4@2", "layer4@3"}; }, "already trains");
}

// After training: top_losses.png (the val images, 12 here, highest loss first) and confusion.png beside the curves;
// `tlengine eval --out` on the best weights draws the same two pictures, pixel for pixel (same logits), and its
// printed metrics stay those of a run without --out.
TEST(Train, ErrorAnalysisPicturesAfterTrainingAndFromEval) {
  const std::string d = fresh_dir("train_error_pictures");
  const std::string data = make_data(d + "/data", 4, 3);  // 4 classes, 3 val images each
  train::TrainOptions o = tiny(data, d + "/run");
  o.epochs = 1;
  std::ostringstream log;
  const train::TrainResult r = train::run_training(o, log);
  ASSERT_EQ(r.best_epoch, 0);
  EXPECT_TRUE(contains(log.str(), "curves.png, predictions.png, top_losses.png, confusion.png")) << log.str();
  const io::Image top = io::decode_image(d + "/run/top_losses.png");
  EXPECT_EQ(top.width, 4 * train::kGridCellWidth);
  EXPECT_EQ(top.height, 3 * (train::kGridCellHeight + train::kGridNoteHeight));
  const io::Image confusion = io::decode_image(d + "/run/confusion.png");
  const std::vector<std::string> classes = io::load_splits(data, 0.0, 0).classes;
  EXPECT_EQ(confusion.width, train::render_confusion(std::vector<int64_t>(16, 0), classes).width);

  const std::string eval = std::string(TL_CLI) + " eval --weights " + r.best_path + " --data " + data +
                           " --image-size 32 --val-transform resize --device cpu";
  std::string plain, with_out;
  ASSERT_EQ(run_command(eval, &plain), 0) << plain;
  ASSERT_EQ(run_command(eval + " --out " + d + "/eval", &with_out), 0) << with_out;
  auto metrics_lines = [](const std::string& out) {  // without the timed progress lines and the "wrote" line
    std::istringstream in(out);
    std::string kept;
    for (std::string line; std::getline(in, line);)
      if (!contains(line, "img/s") && !contains(line, "wrote ")) kept += line + "\n";
    return kept;
  };
  EXPECT_EQ(metrics_lines(with_out), metrics_lines(plain));
  EXPECT_TRUE(contains(plain, "Confusion")) << plain;
  EXPECT_TRUE(contains(with_out, "wrote " + d + "/eval: top_losses.png confusion.png")) << with_out;
  EXPECT_EQ(io::decode_image(d + "/eval/confusion.png").pixels, confusion.pixels);
  EXPECT_EQ(io::decode_image(d + "/eval/top_losses.png").pixels, top.pixels);
}

// --on-bad-image skip with a batch whose images are all bad (the first one here: two broken files sorted first, no
// shuffling): a run stopped after two steps resumes after the batches it trained on, not one batch early, and ends
// as one straight run does.
TEST(Train, ASkippedBatchKeepsTheResumePosition) {
  const std::string d = fresh_dir("train_skipped_batch");
  const std::string data = make_data(d + "/data");
  const std::string cls = data + "/train/" + io::synthetic_class_name(0);
  std::ofstream(cls + "/!a.png").close();
  std::ofstream(cls + "/!b.png") << "not an image";
  train::TrainOptions a = tiny(data, d + "/straight");
  a.epochs = 1;
  a.batch_size = 2;
  a.shuffle = false;
  a.on_bad_image = "skip";
  std::ostringstream log;
  train::run_training(a, log);
  train::TrainOptions b = a;
  b.out = d + "/resumed";
  b.stop_after_steps = 2;
  EXPECT_TRUE(train::run_training(b, log).interrupted);
  EXPECT_EQ(train::load_state_dict(b.out + "/last.ckpt").get_int("batch"), 3) << "batch 0 was empty, 1 and 2 trained";
  b.stop_after_steps = 0;
  b.resume = true;
  train::run_training(b, log);
  const train::StateDict x = train::load_state_dict(a.out + "/last.ckpt"), y = train::load_state_dict(b.out + "/last.ckpt");
  for (const auto& [k, t] : x.tensors)
    EXPECT_EQ(t.to_doubles(), y.get_tensor(k).to_doubles()) << k << " differs after resuming past a skipped batch";
}
