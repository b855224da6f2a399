// tlengine: the command line.
//   tlengine example                      the built-in example (synthetic data, pretrain, fine-tune vs scratch)
//   tlengine train --data DIR [...]       fine-tune a model on an ImageFolder data set
//   tlengine lr-find --data DIR [...]     learning-rate finder: loss vs an exponentially growing lr, suggestions
//   tlengine eval --weights W --data DIR  metrics of a weights file on a folder
//   tlengine predict --weights W IMAGES   top-k classes per image (JSON/CSV), or logits (.npy)
//   tlengine bench --model M --mode X     time training steps (ms, img/s, peak memory, TFLOP/s), JSON out
//   tlengine bench-loader --data DIR      time the data pipeline alone (images/s), JSON out
//   tlengine make-data --out DIR          a synthetic ImageFolder of fixed-size JPEGs (time-to-result job)
//   tlengine inspect --arch A | --weights W   the module tree (shapes, parameters, heads, blocks); --freeze-costs
#include <malloc.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <CLI/CLI.hpp>
#include <iostream>

#include "core/device.h"
#include "core/error.h"
#include "io/files.h"
#include "io/utf8.h"
#include "models/registry.h"
#include "train/bench.h"
#include "train/example.h"
#include "train/inspect.h"
#include "train/lr_find.h"
#include "train/predict.h"
#include "train/trainer.h"

using namespace tl;

namespace {
constexpr const char* kNonfiniteHelp = "load weights even if they hold NaN or infinite values (refused by default)";

void on_sigint(int) {
  train::stop_requested() = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

// --config FILE: a JSON object whose keys are the command's long option names without "--" (values: strings,
// numbers, booleans for flags, arrays; null means unset), or an earlier run's args.json (its "args" object), so
// that `--config runs/x/args.json --out runs/y` repeats a run. Options given on the command line win (CLI11 only
// fills options the command line left unset).
class JsonConfig : public CLI::Config {
 public:
  std::string to_config(const CLI::App*, bool, bool, std::string) const override {
    throw CLI::ConversionError("tlengine writes configurations as args.json (train --out)");
  }
  std::vector<CLI::ConfigItem> from_config(std::istream& in) const override {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw CLI::ConversionError(std::string("--config: not valid JSON: ") + e.what());
    }
    if (j.is_object() && j.contains("args") && j["args"].is_object()) j = nlohmann::json(j["args"]);
    if (!j.is_object()) throw CLI::ConversionError("--config: the file must hold a JSON object of option names");
    std::vector<CLI::ConfigItem> items;
    for (const auto& [key, v] : j.items()) {
      if (v.is_null() || v == false || key == "config") continue;  // unset, or a flag not given
      CLI::ConfigItem item;
      item.parents = {"train"};  // the one command that takes a configuration
      item.name = key;
      auto text = [&key](const nlohmann::json& x) -> std::string {
        if (x.is_string()) return x.get<std::string>();
        if (x.is_boolean()) return x.get<bool>() ? "true" : "false";
        if (x.is_number()) return x.dump();
        throw CLI::ConversionError("--config: option '" + key + "' must be a string, number, boolean or array of them");
      };
      if (v.is_array()) {
        for (const nlohmann::json& x : v) item.inputs.push_back(text(x));
      } else {
        item.inputs.push_back(text(v));
      }
      items.push_back(item);
    }
    return items;
  }
};

// <out>/args.json: every option of the command as it was resolved (given on the command line, or its default),
// keyed by its long name, as strings (flags: true when given); with the program version. Enough to repeat a run (timm writes args.yaml).
void write_args_json(const CLI::App& cmd, const std::string& path) {
  nlohmann::json args = nlohmann::json::object();
  for (const CLI::Option* opt : cmd.get_options()) {
    const std::string name = opt->get_name();
    if (name.rfind("--", 0) != 0 || name == "--help" || name == "--config") continue;
    const std::vector<std::string>& given = opt->results();
    if (opt->get_expected_max() == 0)  // a flag: whether it was given
      args[name.substr(2)] = opt->count() > 0;
    else if (opt->count() > 0)
      args[name.substr(2)] = given.size() == 1 ? nlohmann::json(given[0]) : nlohmann::json(given);
    else if (!opt->get_default_str().empty())
      args[name.substr(2)] = opt->get_default_str();
    else
      args[name.substr(2)] = nullptr;
  }
  const std::string text =
      nlohmann::json{{"command", cmd.get_name()}, {"version", TL_VERSION}, {"args", args}}.dump(2) + "\n";
  io::write_file_atomic(path, text.data(), text.size());
}

constexpr const char* kMemoryEfficientHelp =
    "DenseNet: recompute each dense layer's concatenation, batch norm and 1x1 convolution in the backward pass "
    "instead of keeping them (torchvision's memory_efficient=True): lower peak memory, same results, longer step";
constexpr const char* kImageSizeHelp =
    "crop size; 0: the architecture's (224; inception_v3 299, resized from 342 for evaluation)";

void add_train_options(CLI::App& c, train::TrainOptions& o) {
  c.add_option("--data", o.data, "ImageFolder root: train/<class>/*.jpg and val/<class>/*.jpg")->required();
  c.add_option("--arch,--model", o.arch, "architecture: " + models::model_names_list())->capture_default_str();
  c.add_option("--weights", o.weights, "pretrained weights (tlengine .bin, safetensors or PyTorch .pth); the head is replaced "
                                       "when the class count differs");
  c.add_flag("--allow-partial-weights", o.allow_partial_weights,
             "accept weights that do not fit outside the head (those layers keep their initialisation)");
  c.add_flag("--allow-nonfinite-weights", o.allow_nonfinite_weights, kNonfiniteHelp);
  c.add_option("--out", o.out, "output folder: best.bin, last.ckpt, metrics.jsonl, curves.png, predictions.png, "
                                 "top_losses.png, confusion.png")
      ->capture_default_str();
  c.add_option("--epochs", o.epochs)->capture_default_str();
  c.add_option("--batch-size,-b", o.batch_size)->capture_default_str();
  c.add_option("--optimizer", o.optimizer, "sgd | adam | adamw")->capture_default_str();
  c.add_option("--lr", o.lr, "learning rate of the new head")->capture_default_str();
  c.add_option("--backbone-lr", o.backbone_lr, "learning rate of the pretrained body (default: --lr x --backbone-lr-mult)");
  c.add_option("--backbone-lr-mult", o.backbone_lr_mult,
               "body lr = --lr x this (default -1: 1, or 0.1 with --freeze-epochs)")->capture_default_str();
  c.add_option("--momentum", o.momentum)->capture_default_str();
  c.add_flag("--nesterov", o.nesterov);
  c.add_option("--weight-decay", o.weight_decay)->capture_default_str();
  c.add_option("--schedule", o.schedule, "step | multistep | cosine | constant")->capture_default_str();
  c.add_option("--step-size", o.step_size, "StepLR period in epochs")->capture_default_str();
  c.add_option("--gamma", o.gamma, "StepLR / MultiStepLR factor")->capture_default_str();
  c.add_option("--milestones", o.milestones, "MultiStepLR epochs")->delimiter(',');
  c.add_option("--warmup-epochs", o.warmup_epochs, "cosine: linear warmup")->capture_default_str();
  c.add_option("--min-lr", o.min_lr, "cosine: final learning rate")->capture_default_str();
  c.add_option("--label-smoothing", o.label_smoothing)->capture_default_str();
  c.add_flag("--balance", o.balance, "class weights from folder counts");
  c.add_option("--freeze", o.freeze.freeze, "none | backbone | until=<block> (e.g. until=layer3)")->capture_default_str();
  c.add_option("--trainable", o.freeze.trainable, "parameter name patterns that train anyway, e.g. 'layer4.*'")
      ->delimiter(',');
  c.add_flag("--freeze-bn", o.freeze.freeze_bn, "frozen batch norm uses running statistics (inference mode)");
  c.add_flag("--memory-efficient", o.memory_efficient, kMemoryEfficientHelp);
  c.add_flag("--cuda-graphs", o.cuda_graphs,
             "CUDA: capture the training step into a CUDA graph after a few eager warm-up steps and replay it (one launch "
             "per step, the same results; the last, smaller batch of an epoch runs eagerly). Not with dropout or the "
             "feature cache");
  c.add_option("--unfreeze", o.unfreeze,
               "gradual unfreezing: <block>@<epoch>, e.g. layer4@3,layer3@6 (trainable from the start of that epoch, "
               "in the body's group at its lr)")
      ->delimiter(',');
  c.add_option("--freeze-epochs", o.freeze_epochs,
               "fastai's fine_tune: N epochs with only the head (or --freeze), then everything, the body at "
               "--backbone-lr-mult (0.1 unless given)")
      ->capture_default_str();
  c.add_option("--val-split", o.val_split, "fraction held out (stratified) when there is no val/")->capture_default_str();
  c.add_option("--image-size", o.image_size, kImageSizeHelp)->capture_default_str();
  c.add_option("--dropout", o.dropout,
               "dropout probability of the model's dropout layers (default: the architecture's own, e.g. VGG 0.5, "
               "mobilenet_v2 0.2; 0 turns dropout off, which lets the feature cache apply)");
  c.add_flag("!--no-aux", o.aux,
             "drop the auxiliary classifiers of inception_v3 and googlenet (by default they train with the main "
             "one: loss = main + 0.4 aux, or + 0.3 (aux1 + aux2), as torchvision's recipe)");
  c.add_option("--val-transform", o.val_transform, "crop: Resize+CenterCrop; resize: Resize((s, s))")->capture_default_str();
  c.add_flag("!--no-augment", o.augment, "train on the val transform (no random crop / flip)");
  c.add_flag("!--no-shuffle", o.shuffle, "keep the folder order (to compare with another framework)");
  c.add_option("--workers,-j", o.workers, "image decoding threads")->capture_default_str();
  c.add_option("--cache-images", o.cache_images,
               "keep decoded images in RAM so each file is decoded once: auto (up to a quarter of the memory) | off "
               "| <GB>")->capture_default_str();
  c.add_option("--on-bad-image", o.on_bad_image, "fail | skip")->capture_default_str();
  c.add_option("--early-stopping", o.early_stopping, "patience in epochs (0: off)")->capture_default_str();
  c.add_option("--device", o.device, "auto | cpu | cuda")->capture_default_str();
  c.add_option("--precision", o.precision, "fp32 | bf16 (CUDA) | fp64 (CPU reference run)")->capture_default_str();
  c.add_option("--memory-format", o.memory_format,
               "activations' layout: auto (CPU fp32: what oneDNN wants; CUDA: NHWC for bf16, NCHW for fp32) | nchw | "
               "nhwc (channels_last)")->capture_default_str();
  c.add_flag("!--no-cache", o.feature_cache,
             "run the frozen backbone every epoch instead of once per image (the feature cache is on where it is "
             "exact: only the head trains, --freeze-bn, --no-augment)");
  c.add_option("--cache-budget", o.cache_budget_gb, "GB of RAM for cached features")->capture_default_str();
  c.add_option("--cache-dtype", o.cache_dtype,
               "storage of cached features: float32 | float16 | bfloat16 (half the memory, rounded once; see "
               "bench/NOTES.md for the accuracy measured)")
      ->capture_default_str();
  c.add_option("--cache-views", o.cache_views,
               "with augmentation, cache K augmented views per image and train each epoch on one of them per image: "
               "an APPROXIMATION of fresh augmentation (K crops and flips per image, not new ones every epoch), "
               "for feature extraction with --freeze-bn (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c.add_flag("--resume", o.resume, "continue from <out>/last.ckpt");
  c.add_option("--seed", o.seed)->capture_default_str();
  c.add_option("--stop-after-steps", o.stop_after_steps, "stop (with a checkpoint) after N steps, as Ctrl-C does");
  c.add_option("--dist-timeout", o.dist_timeout,
               "several processes (mpirun): seconds a rank waits for the others in a collective before ending the job")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c.add_flag("--sync-bn", o.sync_bn,
             "several processes (mpirun): batch norm statistics over the global batch of all ranks, as PyTorch's "
             "SyncBatchNorm (CPU); with one process it changes nothing");
}

// `train`, in one process or as one rank of `mpirun -np N tlengine train ...`: rank 0 writes args.json and prints
// the log. An error on any rank ends every rank (MPI_Abort), so that none waits for it until its timeout.
int train_command(const CLI::App& cmd, const train::TrainOptions& to) {
  const Distributed dist = Distributed::from_env(to.dist_timeout);
  try {
    io::ensure_writable_folder(to.out, "--out");
    if (dist.is_main()) write_args_json(cmd, (std::filesystem::path(to.out) / "args.json").string());
    const train::TrainResult r = train::run_training(to, std::cerr, dist);
    return r.interrupted ? 130 : 0;
  } catch (const std::exception& e) {
    if (dist.world_size() == 1) throw;
    std::cerr << "tlengine: ";  // a timeout names its rank itself
    if (!dynamic_cast<const DistributedTimeout*>(&e))
      std::cerr << "rank " << dist.rank() << " of " << dist.world_size() << ": ";
    std::cerr << e.what() << "\n";
    dist.abort(dynamic_cast<const train::DivergedError*>(&e) ? 3 : 1);
    throw;
  }
}

// Only `train` is data-parallel: any other command launched as one of several processes would run N times over
// (and write the same files), so it is refused on every rank.
void refuse_several_processes(const std::string& command) {
  const LaunchInfo li = launch_info_from_env();
  TL_CHECK(li.world_size == 1, ValueError, command, ": launched by ", li.launcher, " as rank ", li.rank, " of ",
           li.world_size, " processes, but only `train` runs on several processes (data parallel); run ", command,
           " as one process, without mpirun");
}

// `lr-find`: the train options that shape the search (the job and its optimizer), and the search's own.
void add_lr_find_options(CLI::App& c, train::LrFindOptions& lo) {
  train::TrainOptions& o = lo.train;
  o.out = "runs/lr_find";
  c.add_option("--data", o.data, "ImageFolder root, as for train (the search uses the training images only)")
      ->required();
  c.add_option("--val-split", o.val_split, "as for train: the fraction held out when there is no val/")
      ->capture_default_str();
  c.add_option("--arch,--model", o.arch, "architecture: " + models::model_names_list())->capture_default_str();
  c.add_option("--weights", o.weights, "pretrained weights to start from (only read, never written)");
  c.add_flag("--allow-partial-weights", o.allow_partial_weights,
             "accept weights that do not fit outside the head (those layers keep their initialisation)");
  c.add_flag("--allow-nonfinite-weights", o.allow_nonfinite_weights, kNonfiniteHelp);
  c.add_option("--out", o.out, "output folder: lr_find.png, lr_find.json")->capture_default_str();
  c.add_option("--freeze", o.freeze.freeze, "none | backbone | until=<block>, as for train")->capture_default_str();
  c.add_option("--trainable", o.freeze.trainable, "parameter name patterns that train anyway")->delimiter(',');
  c.add_flag("--freeze-bn", o.freeze.freeze_bn, "frozen batch norm uses running statistics (inference mode)");
  c.add_option("--batch-size,-b", o.batch_size)->capture_default_str();
  c.add_option("--optimizer", o.optimizer, "sgd | adam | adamw")->capture_default_str();
  c.add_option("--momentum", o.momentum)->capture_default_str();
  c.add_option("--weight-decay", o.weight_decay)->capture_default_str();
  c.add_option("--backbone-lr-mult", o.backbone_lr_mult, "the body's lr is the searched lr x this")
      ->capture_default_str();
  c.add_option("--label-smoothing", o.label_smoothing)->capture_default_str();
  c.add_option("--image-size", o.image_size, kImageSizeHelp)->capture_default_str();
  c.add_flag("!--no-augment", o.augment, "train on the val transform (no random crop / flip)");
  c.add_option("--workers,-j", o.workers, "image decoding threads")->capture_default_str();
  c.add_option("--device", o.device, "auto | cpu | cuda")->capture_default_str();
  c.add_option("--precision", o.precision, "fp32 | bf16 (CUDA) | fp64 (CPU)")->capture_default_str();
  c.add_option("--seed", o.seed)->capture_default_str();
  c.add_option("--start-lr", lo.start_lr, "lr of the first step")->capture_default_str();
  c.add_option("--end-lr", lo.end_lr, "lr approached at the last step")->capture_default_str();
  c.add_option("--num-it", lo.num_it, "steps at most (exponentially spaced lrs)")->capture_default_str();
  c.add_flag("!--no-stop-div", lo.stop_div, "run all steps even after the smoothed loss passes 4x its minimum");
}
}  // namespace

int main(int argc, char** argv) {
  const auto process_start = std::chrono::steady_clock::now();
  // Large blocks (decoded images, resize buffers, activations) stay in the heap for reuse instead of being mapped
  // and unmapped per allocation: each fresh mapping's pages are faulted in and zeroed again by the kernel, which
  // took ~30% of the data loader's time. Freed memory is not returned to the system during the run.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  CLI::App app{"tlengine: fine-tune pretrained CNNs (ResNet, DenseNet, VGG) on your images, on the GPU or CPU."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("tlengine ") + TL_VERSION);
  train::TrainOptions to;
  auto* train_cmd = app.add_subcommand("train", "fine-tune a model on an ImageFolder data set");
  add_train_options(*train_cmd, to);
  // `train --config FILE`: the option belongs to the top level (CLI11 reads config files there, before the
  // subcommand's required options are checked); train passes it through.
  train_cmd->fallthrough();
  app.set_config("--config", "", "train: JSON file of options (keys: the long names without --; an earlier run's "
                                 "args.json works); the command line wins");
  app.config_formatter(std::make_shared<JsonConfig>());
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not silently ignored

  train::LrFindOptions lfo;
  auto* lr_find_cmd = app.add_subcommand("lr-find", "learning-rate finder: train for up to --num-it steps with an "
                                                     "exponentially growing lr; plot, JSON and suggested lr");
  add_lr_find_options(*lr_find_cmd, lfo);

  train::EvalOptions eo;
  auto* eval_cmd = app.add_subcommand("eval", "metrics of a weights file on a folder");
  eval_cmd->add_option("--weights", eo.weights)->required();
  eval_cmd->add_option("--data", eo.data, "ImageFolder root (its <split>/ sub-folder when present)")->required();
  eval_cmd->add_option("--split", eo.split)->capture_default_str();
  eval_cmd->add_option("--batch-size,-b", eo.batch_size)->capture_default_str();
  eval_cmd->add_option("--workers,-j", eo.workers, "image decoding threads")->capture_default_str();
  eval_cmd->add_option("--image-size", eo.image_size, kImageSizeHelp)->capture_default_str();
  eval_cmd->add_option("--val-transform", eo.val_transform)->capture_default_str();
  eval_cmd->add_option("--device", eo.device)->capture_default_str();
  eval_cmd->add_option("--on-bad-image", eo.on_bad_image)->capture_default_str();
  eval_cmd->add_option("--json", eo.json, "also write the metrics as JSON");
  eval_cmd->add_option("--out", eo.out, "also write top_losses.png and confusion.png in this folder");
  eval_cmd->add_flag("--allow-nonfinite-weights", eo.allow_nonfinite_weights, kNonfiniteHelp);

  train::PredictOptions po;
  auto* pred_cmd = app.add_subcommand("predict", "top-k classes per image, or logits");
  pred_cmd->add_option("--weights", po.weights)->required();
  pred_cmd->add_option("inputs", po.inputs, "image files or folders");
  pred_cmd->add_option("--npy", po.npy, "a float32 (N, 3, H, W) batch instead of images");
  pred_cmd->add_option("--topk", po.topk)->capture_default_str();
  pred_cmd->add_option("--format", po.format, "json | csv")->capture_default_str();
  pred_cmd->add_option("--logits", po.logits, "write the raw logits (N, C) to this .npy");
  pred_cmd->add_option("--batch-size,-b", po.batch_size)->capture_default_str();
  pred_cmd->add_option("--image-size", po.image_size, kImageSizeHelp)->capture_default_str();
  pred_cmd->add_option("--val-transform", po.val_transform)->capture_default_str();
  pred_cmd->add_option("--device", po.device)->capture_default_str();
  pred_cmd->add_flag("--allow-nonfinite-weights", po.allow_nonfinite_weights, kNonfiniteHelp);

  train::ExampleOptions xo;
  auto* ex_cmd = app.add_subcommand("example", "built-in example: synthetic data, pretrain, fine-tune vs scratch");
  ex_cmd->add_option("--out", xo.out)->capture_default_str();
  ex_cmd->add_option("--arch,--model", xo.arch)->capture_default_str();
  ex_cmd->add_option("--device", xo.device)->capture_default_str();
  ex_cmd->add_option("--image-size", xo.image_size)->capture_default_str();
  ex_cmd->add_option("--pretrain-epochs", xo.pretrain_epochs)->capture_default_str();
  ex_cmd->add_option("--finetune-epochs", xo.finetune_epochs)->capture_default_str();

  train::BenchOptions bo;
  std::string bench_json;
  auto* bench_cmd = app.add_subcommand("bench", "time training steps on a random batch: ms/step, img/s, peak memory, "
                                                "TFLOP/s, start-up (see README, 'tlengine bench')");
  bench_cmd->add_option("--arch,--model", bo.model, "architecture, as for train")->capture_default_str();
  bench_cmd->add_option("--mode", bo.mode, "full | last_block (layer4 / denseblock4 + head) | head")
      ->capture_default_str();
  bench_cmd->add_option("--precision", bo.precision, "fp32 (TF32 convolutions) | bf16 (NHWC, CUDA)")
      ->capture_default_str();
  bench_cmd->add_option("--memory-format", bo.memory_format, "auto | nchw | nhwc (as train)")->capture_default_str();
  bench_cmd->add_option("--batch-size,-b,--batch", bo.batch)->capture_default_str();
  bench_cmd->add_option("--image-size", bo.image_size, kImageSizeHelp)->capture_default_str();
  bench_cmd->add_option("--classes", bo.classes)->capture_default_str();
  bench_cmd->add_option("--warmup", bo.warmup, "untimed steps first")->capture_default_str();
  bench_cmd->add_option("--steps", bo.steps, "timed steps (the median is reported)")->capture_default_str();
  bench_cmd->add_flag("--freeze-bn", bo.freeze_bn, "frozen batch norm uses running statistics");
  bench_cmd->add_flag("--memory-efficient", bo.memory_efficient, kMemoryEfficientHelp);
  bench_cmd->add_option("--device", bo.device, "auto | cpu | cuda")->capture_default_str();
  bench_cmd->add_option("--seed", bo.seed)->capture_default_str();
  bench_cmd->add_option("--json", bench_json, "also write the result (with every step's time) as JSON");

  train::LoaderBenchOptions lbo;
  std::string loader_json;
  auto* loader_cmd = app.add_subcommand("bench-loader", "time the data pipeline alone (decode + RandomResizedCrop + "
                                                        "flip + normalise): images/s");
  loader_cmd->add_option("--data", lbo.data, "ImageFolder root (its train/ when present)")->required();
  loader_cmd->add_option("--image-size", lbo.image_size)->capture_default_str();
  loader_cmd->add_option("--batch-size,-b", lbo.batch_size)->capture_default_str();
  loader_cmd->add_option("--workers,-j", lbo.workers, "image decoding threads")->capture_default_str();
  loader_cmd->add_option("--epochs", lbo.epochs)->capture_default_str();
  loader_cmd->add_option("--cache-images", lbo.cache_images, "off | auto | <GB>, as for train")->capture_default_str();
  loader_cmd->add_option("--seed", lbo.seed)->capture_default_str();
  loader_cmd->add_option("--json", loader_json, "also write the result as JSON");

  train::MakeDataOptions mo;
  auto* data_cmd = app.add_subcommand("make-data", "write a synthetic ImageFolder (train/ and val/) of JPEGs");
  data_cmd->add_option("--out", mo.out, "root folder")->required();
  data_cmd->add_option("--classes", mo.classes)->capture_default_str();
  data_cmd->add_option("--train-per-class", mo.train_per_class)->capture_default_str();
  data_cmd->add_option("--val-per-class", mo.val_per_class)->capture_default_str();
  data_cmd->add_option("--width", mo.width)->capture_default_str();
  data_cmd->add_option("--height", mo.height)->capture_default_str();
  data_cmd->add_option("--quality", mo.jpeg_quality, "JPEG quality")->capture_default_str();
  data_cmd->add_option("--seed", mo.seed)->capture_default_str();

  struct InspectArgs {
    std::string arch, weights, png, out;
    int64_t image_size = 0;
    int depth = -1;
    bool json = false, freeze_costs = false;
    train::FreezeCostOptions fc;
  } io_;
  auto* inspect_cmd = app.add_subcommand("inspect", "the module tree (torchvision names, output shapes, parameters, "
                                                    "heads, blocks); --freeze-costs: what each freeze point costs");
  inspect_cmd->add_option("--arch,--model", io_.arch, "architecture: " + models::model_names_list());
  inspect_cmd->add_option("--weights", io_.weights, "a weights file (tlengine .bin, safetensors or .pth): also what it "
                                                    "holds (architecture, classes, metadata)");
  inspect_cmd->add_option("--image-size", io_.image_size, kImageSizeHelp)->capture_default_str();
  inspect_cmd->add_option("--depth", io_.depth, "print modules down to this depth (-1: all, as print(model))")
      ->capture_default_str();
  inspect_cmd->add_flag("--json", io_.json, "JSON on stdout instead of text");
  inspect_cmd->add_flag("--freeze-costs", io_.freeze_costs, "FLOPs and memory of a training step at each freeze point");
  inspect_cmd->add_option("--batch-size,-b", io_.fc.batch, "--freeze-costs: batch")->capture_default_str();
  inspect_cmd->add_option("--optimizer", io_.fc.optimizer, "--freeze-costs: sgd | adam | adamw (optimizer state)")
      ->capture_default_str();
  inspect_cmd->add_flag("--measure", io_.fc.measure, "--freeze-costs: also run steps here (median ms, peak memory)");
  inspect_cmd->add_option("--device", io_.fc.device, "auto | cpu | cuda (--measure)")->capture_default_str();
  inspect_cmd->add_option("--png", io_.png, "--freeze-costs: bar chart PNG");
  inspect_cmd->add_option("--out", io_.out, "--freeze-costs: folder for freeze_costs.png and freeze_costs.json");

  CLI11_PARSE(app, argc, argv);
  // File and class names that are not UTF-8 show up escaped ("caf\xe9") in every message and report.
  io::PrintableStreambuf printable_err(std::cerr.rdbuf()), printable_out(std::cout.rdbuf());
  std::cerr.rdbuf(&printable_err);
  std::cout.rdbuf(&printable_out);
  struct RestoreStreams {
    std::streambuf *err, *out;
    ~RestoreStreams() {
      std::cerr.rdbuf(err);
      std::cout.rdbuf(out);
    }
  } restore{printable_err.target(), printable_out.target()};
  std::signal(SIGINT, on_sigint);
  try {
    if (*train_cmd) return train_command(*train_cmd, to);
    refuse_several_processes(app.get_subcommands().front()->get_name());
    if (*lr_find_cmd) {
      const train::LrFindResult r = train::run_lr_find(lfo, std::cerr);
      return r.stopped == "interrupted" ? 130 : 0;
    }
    if (*eval_cmd) {
      train::run_eval(eo, std::cout);
      return 0;
    }
    if (*pred_cmd) {
      train::run_predict(po, std::cout, std::cerr);
      return 0;
    }
    if (*ex_cmd) {
      train::run_example(xo, std::cerr);
      return 0;
    }
    if (*loader_cmd) {
      const std::string text = train::run_loader_bench(lbo, std::cerr).dump(2) + "\n";
      std::cout << text;
      if (!loader_json.empty()) io::write_file_atomic(loader_json, text.data(), text.size());
      return 0;
    }
    if (*bench_cmd) {
      bo.start = process_start;
      const train::BenchResult r = train::run_bench(bo, std::cerr);
      std::cout << train::BenchResult::table_header() << "\n" << r.table_line() << "\n";
      if (!bench_json.empty()) {
        const std::string text = r.to_json().dump(2) + "\n";
        io::write_file_atomic(bench_json, text.data(), text.size());
      }
      return 0;
    }
    if (*inspect_cmd) {
      TL_CHECK(io_.arch.empty() != io_.weights.empty(), ValueError, "inspect: give --arch or --weights (one of them)");
      TL_CHECK(io_.freeze_costs || (!io_.fc.measure && io_.png.empty() && io_.out.empty()), ValueError,
               "inspect: --measure, --png and --out go with --freeze-costs; add it");
      nlohmann::json j;
      std::unique_ptr<models::Model> model;
      if (!io_.weights.empty()) {
        const train::WeightsInfo w = train::inspect_weights(io_.weights);
        j["weights"] = w.to_json();
        if (!io_.json) std::cout << w.to_text() << "\n";
        model = std::move(train::load_model(io_.weights).model);
      } else {
        model = models::create_model(io_.arch);
      }
      if (!io_.freeze_costs) {
        const train::ModelTree tree = train::inspect_model(*model, io_.image_size);
        j["tree"] = tree.to_json();
        std::cout << (io_.json ? j.dump(2) + "\n" : tree.to_text(io_.depth));
        return 0;
      }
      io_.fc.image_size = io_.image_size;
      const train::FreezeCosts fc = train::freeze_costs(*model, io_.fc, std::cerr);
      j["freeze_costs"] = fc.to_json();
      std::cout << (io_.json ? j.dump(2) + "\n" : fc.to_table());
      if (!io_.out.empty()) {
        io::ensure_writable_folder(io_.out, "--out");
        const std::string text = j.dump(2) + "\n";
        io::write_file_atomic((std::filesystem::path(io_.out) / "freeze_costs.json").string(), text.data(), text.size());
        if (io_.png.empty()) io_.png = (std::filesystem::path(io_.out) / "freeze_costs.png").string();
      }
      if (!io_.png.empty()) train::write_freeze_costs_png(fc, io_.png);
      return 0;
    }
    if (*data_cmd) {
      const int64_t n = train::make_image_folder(mo);
      std::cerr << "wrote " << n << " images (" << mo.width << "x" << mo.height << ", " << mo.classes
                << " classes) to " << mo.out << "\n";
      return 0;
    }
  } catch (const OutOfMemoryError& e) {
    size_t free_b = 0, total_b = 0;
    if (cuda::available()) cuda::memory_info(&free_b, &total_b);
    const bool bench = bench_cmd->parsed();
    const int64_t batch = bench ? bo.batch : lr_find_cmd->parsed() ? lfo.train.batch_size : to.batch_size;
    const char* flag = "--batch-size";
    std::cerr << "tlengine: out of memory with " << flag << " " << batch;
    if (total_b > 0) std::cerr << " (GPU: " << free_b / (1 << 20) << " MiB free of " << total_b / (1 << 20) << " MiB)";
    std::cerr << ": try " << flag << " " << std::max<int64_t>(1, batch / 2) << "\n  (" << e.what() << ")\n";
    return 2;
  } catch (const train::DivergedError& e) {
    std::cerr << "tlengine: training stopped: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "tlengine: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
