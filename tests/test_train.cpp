// `tlengine train` end to end on small generated data (CPU): parity with PyTorch doing the same job, exact resume,
// freeze plans, the NaN guard, bad inputs, atomic checkpoints under SIGKILL, Ctrl-C, and `predict`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "io/image.h"
#include "io/npy.h"
#include "io/synthetic.h"
#include "models/weights.h"
#include "train/freeze.h"
#include "train/predict.h"
#include "train/state_dict.h"
#include "train/trainer.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;
namespace fs = std::filesystem;

namespace {
std::string fresh_dir(const std::string& name) {
  std::string d = test_dir(name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
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
  train::TrainOptions o;
  o.data = data;
  o.out = out;
  o.arch = "resnet18";
  o.image_size = 32;
  o.val_transform = "resize";
  o.augment = false;
  o.epochs = 2;
  o.batch_size = 8;
  o.lr = 0.01;
  o.schedule = "constant";
  o.workers = 2;
  o.device = "cpu";
  o.quiet = true;
  return o;
}
std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
}  // namespace

// tlengine and PyTorch 1.13 doing the same job: same initial weights (converted from PyTorch's .pth), same PNG
// images (decoded identically), same order, no augmentation. Full fine-tuning is compared over one epoch: these
// one-class batches make full training chaotic, so that over more steps PyTorch's own float32 and float64 runs part
// by ~5% (measured), as float32 rounding flips ReLU masks. Feature extraction (frozen backbone) is compared over
// three epochs.
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
    double lr;
  };
  for (const Case& c : {Case{"full", 1, 0.001}, Case{"head", 3, 0.01}}) {
    run_torch_script("finetune_parity.py", "train " + data + " " + d + " " + c.mode + " " + std::to_string(c.epochs) +
                                               " " + std::to_string(c.lr));
    train::TrainOptions o = tiny(data, d + "/run_" + c.mode);
    o.weights = d + "/init.bin";
    o.shuffle = false;
    o.epochs = c.epochs;
    o.lr = c.lr;
    if (c.mode == "head") o.freeze.freeze = "backbone";
    std::ostringstream out;
    train::run_training(o, out);
    std::ifstream rf(d + "/torch_" + c.mode + ".json");
    const nlohmann::json ref = nlohmann::json::parse(rf);
    const auto lines = read_jsonl(o.out + "/metrics.jsonl");
    ASSERT_EQ(lines.size(), static_cast<size_t>(c.epochs));
    for (size_t e = 0; e < lines.size(); ++e) {
      const double ours_train = lines[e]["train"]["loss"], ours_val = lines[e]["val"]["loss"];
      const double ref_train = ref["train_loss"][e], ref_val = ref["val_loss"][e];
      EXPECT_NEAR(ours_train, ref_train, 1e-4 * std::fabs(ref_train)) << c.mode << " epoch " << e + 1 << " train loss";
      EXPECT_NEAR(ours_val, ref_val, 1e-4 * std::fabs(ref_val)) << c.mode << " epoch " << e + 1 << " val loss";
    }
  }
}

TEST(Train, ResumeAfterAStopGivesTheSameWeightsAsOneRun) {
  const std::string d = fresh_dir("train_resume");
  const std::string data = make_data(d + "/data");
  train::TrainOptions a = tiny(data, d + "/straight");
  a.augment = true;  // random crops and flips, shuffling: all must resume exactly
  a.optimizer = "adamw";
  a.schedule = "cosine";
  a.warmup_epochs = 1;
  std::ostringstream log;
  train::run_training(a, log);
  train::TrainOptions b = a;
  b.out = d + "/resumed";
  b.stop_after_steps = 3;  // mid-epoch 1 (4 steps per epoch)
  EXPECT_TRUE(train::run_training(b, log).interrupted);
  b.stop_after_steps = 0;
  b.resume = true;
  train::TrainResult r = train::run_training(b, log);
  EXPECT_FALSE(r.interrupted);
  EXPECT_EQ(r.epochs_done, 2);
  train::StateDict x = train::load_state_dict(d + "/straight/last.ckpt"), y = train::load_state_dict(d + "/resumed/last.ckpt");
  int compared = 0;
  for (const auto& [k, t] : x.tensors) {
    ASSERT_TRUE(y.has_tensor(k)) << k;
    EXPECT_EQ(t.to_doubles(), y.get_tensor(k).to_doubles()) << k << " differs after resume";
    ++compared;
  }
  EXPECT_GT(compared, 100);
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
