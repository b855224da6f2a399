// The fine-tuning loop (see trainer.h). run_training reads top to bottom as the steps it names: the data, the
// model with its weights and freeze plan, the optimizer and schedule, the run state (fresh or resumed), then per
// epoch a train phase, a val phase and its record (metrics, checkpoints, early stopping), then the final report.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <nlohmann/json.hpp>
#include <iostream>
#include <ostream>
#include <thread>

#include "core/device.h"
#include "io/dataset.h"
#include "io/files.h"
#include "io/loader.h"
#include "io/utf8.h"
#include "layers/conv2d.h"
#include "layers/elementwise.h"
#include "layers/loss.h"
#include "models/registry.h"
#include "models/weights.h"
#include "train/cuda_graph.h"
#include "train/data_parallel.h"
#include "train/error_analysis.h"
#include "train/feature_cache.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/predict.h"
#include "train/report.h"
#include "train/running_metrics.h"
#include "train/run_setup.h"
#include "train/schedule.h"
#include "train/state_dict.h"

namespace tl::train {
namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<bool>& stop_requested() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {
Precision default_precision(const std::string& name, Device dev) {
  if (name == "fp32") return {DType::F32, dev == Device::CPU ? conv2d_cpu_float32_layout() : Layout::NCHW};
  if (name == "bf16") {
    TL_CHECK(dev == Device::CUDA, ValueError, "--precision bf16 needs a CUDA device (the CPU runs fp32 or fp64)");
    return {DType::BF16, Layout::NHWC};
  }
  if (name == "fp64") {
    TL_CHECK(dev == Device::CPU, ValueError, "--precision fp64 runs on the CPU only (use --device cpu)");
    return {DType::F64, Layout::NCHW};
  }
  throw ValueError("--precision must be fp32, bf16 or fp64, got '" + name + "'");
}
}  // namespace

Precision parse_precision(const std::string& name, Device dev, const std::string& memory_format) {
  Precision p = default_precision(name, dev);
  if (memory_format == "nchw") {
    p.layout = Layout::NCHW;
  } else if (memory_format == "nhwc" || memory_format == "channels_last") {
    p.layout = Layout::NHWC;
  } else {
    TL_CHECK(memory_format == "auto", ValueError, "--memory-format must be auto, nchw or nhwc (channels_last), got '",
             memory_format, "'");
  }
  return p;
}

namespace {

io::Compose val_compose(const std::string& kind, const models::InputSize& size) {
  if (kind == "resize") return io::eval_resize_transform(size.crop);
  TL_CHECK(kind == "crop", ValueError, "--val-transform must be crop or resize, got '", kind, "'");
  return io::eval_transform(size.resize, size.crop);
}

// The train loader's transform: RandomResizedCrop + flip, or the val transform with --no-augment.
io::Compose train_compose(const TrainOptions& o) {
  const models::InputSize size = models::input_size(o.arch, o.image_size);
  return o.augment ? io::train_transform(size.crop) : val_compose(o.val_transform, size);
}

// What every loader of a run shares: batch, workers, seed, bad images, image cache.
io::LoaderOptions loader_options(const TrainOptions& o) {
  io::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.num_workers = o.workers;
  lo.seed = o.seed;
  lo.on_bad_image = io::parse_on_bad_image(o.on_bad_image);
  lo.image_cache_bytes = io::parse_image_cache_bytes(o.cache_images);
  return lo;
}

LRSchedule make_schedule(const TrainOptions& o) {
  if (o.schedule == "step") return LRSchedule::step(o.step_size, o.gamma);
  if (o.schedule == "multistep") {
    std::vector<int64_t> m(o.milestones.begin(), o.milestones.end());
    return LRSchedule::multi_step(m, o.gamma);
  }
  if (o.schedule == "cosine") return LRSchedule::cosine(o.epochs, o.min_lr, o.warmup_epochs);
  if (o.schedule == "constant") return LRSchedule::constant();
  throw ValueError("--schedule must be step, multistep, cosine or constant, got '" + o.schedule + "'");
}

json history_json(const std::vector<EpochRecord>& h) {
  json a = json::array();
  for (const EpochRecord& r : h)
    a.push_back({{"epoch", r.epoch}, {"train_loss", r.train_loss}, {"val_loss", r.val_loss},
                 {"train_acc", r.train_acc}, {"val_acc", r.val_acc}, {"lr", r.lr}, {"unfrozen", r.unfrozen}});
  return a;
}
// JSON has no NaN: a phase that did not run (no val set, or no train batch left after a resume at an epoch's end)
// is written as null, and read back as NaN.
std::vector<EpochRecord> history_from_json(const json& a) {
  auto number = [](const json& r, const char* key) {
    const json& v = r.at(key);
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  std::vector<EpochRecord> h;
  for (const json& r : a)
    h.push_back({r.at("epoch").get<int>(), number(r, "train_loss"), number(r, "val_loss"), number(r, "train_acc"),
                 number(r, "val_acc"), number(r, "lr"), r.value("unfrozen", false)});  // absent before 2026-12-01
  return h;
}

// Runs the model over a loader without recording (val phase, eval command); with a feature cache of that loader,
// only the part after the cache's cut runs (the head, or the blocks after the cut point), on the cached features.
// Losses and counts stay on the device until the end of the phase (RunningMetrics): no host sync per batch.
// With `per_image` (not with a cache), each image's loss and prediction are appended too (a host copy per batch).
void evaluate(models::Model& model, io::DataLoader& loader, Device dev, Precision prec, const CrossEntropyOptions& ce,
              ClassificationMetrics& metrics, Progress* progress, FeatureCache* cache = nullptr,
              std::vector<ImageLoss>* per_image = nullptr) {
  TL_CHECK(!(cache && per_image), ValueError,
           "evaluate: per-image losses need the loader's sample indices, not a feature cache");
  NoGradGuard no_grad;
  model.eval();
  RunningMetrics running(metrics.num_classes(), dev);
  int64_t done = 0;
  auto add = [&](const Variable& logits, const Tensor& labels, int64_t size) {
    running.add(logits.value(), labels, cross_entropy_forward(logits.value(), labels, ce));
    if (!progress) return;
    const RunningMetrics::Totals t = running.lagged();
    progress->update(++done, size, t.mean_loss(), t.accuracy());
  };
  if (cache) {
    for (int64_t b = 0; b < cache->batches_per_epoch(); ++b) {
      FeatureCache::Batch fb = cache->batch(0, b);
      if (fb.size == 0) continue;
      add(model.forward_from(Variable(fb.features), cache->cut()), fb.labels, fb.size);
    }
  } else {
    loader.start_epoch(0);
    while (const io::Batch* b = loader.next()) {
      const Variable logits = model.forward(Variable(model_input(b->images_to(dev), dev, prec)));
      add(logits, b->labels_to(dev), b->size);
      if (!per_image) continue;
      const std::vector<ImageLoss> l =
          image_losses(logits.value().to(Device::CPU, DType::F32, Layout::NCHW).to_doubles(), b->labels, b->samples,
                       b->size, metrics.num_classes());
      per_image->insert(per_image->end(), l.begin(), l.end());
    }
  }
  running.read_into(metrics);
  if (progress) progress->finish();
}

// --sync-bn: checked with any number of processes (a job that starts on one starts on several), applied with
// several (enable_sync_bn). The model is in training mode (which batch norm layers use batch statistics).
void setup_sync_bn(const TrainOptions& o, models::Model& model, const Distributed& dist, const StepPosition& at,
                   std::ostream& log) {
  int layers = 0, batch_stats = 0;
  model.train();
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
      ++layers;
      batch_stats += bn->uses_running_stats() ? 0 : 1;
    }
  TL_CHECK(layers > 0, ValueError, "--sync-bn: ", o.arch, " has no batch norm layer; drop --sync-bn");
  const bool unfreezes = !o.unfreeze.empty() || o.freeze_epochs > 0;  // frozen layers may train later
  TL_CHECK(batch_stats > 0 || unfreezes, ValueError, "--sync-bn: every batch norm layer of ", o.arch,
           " is frozen and uses its running statistics (--freeze-bn), so there are no batch statistics to "
           "synchronise; drop --sync-bn (or --freeze-bn)");
  TL_CHECK(dist.world_size() == 1 || o.on_bad_image != "skip", ValueError,
           "--sync-bn with --on-bad-image skip on several processes: a rank whose whole batch was skipped has no "
           "batch to take part in the batch-norm statistics of that step; use --on-bad-image fail (and remove the "
           "bad images), or drop --sync-bn");
  if (dist.world_size() == 1) {
    log << "--sync-bn: one process, nothing to synchronise (batch norm over its batch, as without the flag)\n";
    return;
  }
  enable_sync_bn(dist, model, &at);
  log << "sync batch norm: " << batch_stats << " of " << layers << " batch norm layers use the statistics of the "
      << "global batch (" << dist.world_size() << " x " << o.batch_size << ")"
      << (batch_stats < layers ? ", the frozen ones their running statistics (--freeze-bn)" : "") << "\n";
}

// TL_TEST_HANG_AT_STEP="<rank>:<step>" (trainer.h): the step at which `rank` hangs, or 0.
int64_t hang_step_from_env(int rank) {
  const char* v = std::getenv("TL_TEST_HANG_AT_STEP");
  if (!v || !*v) return 0;
  int r = -1;
  long long step = 0;
  TL_CHECK(std::sscanf(v, "%d:%lld", &r, &step) == 2 && step > 0, ValueError, "TL_TEST_HANG_AT_STEP='", v,
           "': expected <rank>:<step> (a test hook; unset it to train)");
  return r == rank ? step : 0;
}

}  // namespace

// ---- the steps of run_training (declared in run_setup.h: lr-find sets up the same job) ----

// Parameters stay float32 in bf16 runs (the ops cast); in fp64 runs the model itself is float64.
Tensor model_input(const Tensor& x, Device dev, Precision p) { return x.to(dev, p.dtype, p.layout); }

TrainData build_data(const TrainOptions& o, std::ostream& log, int rank, int world_size) {
  TrainData d;
  d.splits = io::load_splits(o.data, o.val_split, o.seed);
  log << "data: " << d.splits.description << "\n";
  const io::LoaderOptions lo = loader_options(o);
  io::LoaderOptions train_lo = lo;
  train_lo.shuffle = o.shuffle;
  train_lo.rank = rank;
  train_lo.world_size = world_size;
  const models::InputSize size = models::input_size(o.arch, o.image_size);
  d.train = std::make_unique<io::DataLoader>(d.splits.train.samples, train_compose(o), train_lo);
  d.val = std::make_unique<io::DataLoader>(d.splits.val.samples, val_compose(o.val_transform, size), lo);
  if (world_size > 1 && !d.splits.val.samples.empty()) {
    io::LoaderOptions share_lo = lo;
    share_lo.rank = rank;
    share_lo.world_size = world_size;
    share_lo.pad_shares = false;
    d.val_share = std::make_unique<io::DataLoader>(d.splits.val.samples, val_compose(o.val_transform, size), share_lo);
  }
  TL_CHECK(d.train->batches_per_epoch() > 0, ValueError, "the training set is empty");
  return d;
}

// The freeze the run starts with: --freeze, or with --freeze-epochs and no --freeze, the backbone (fastai's fine_tune).
FreezeOptions initial_freeze(const TrainOptions& o) {
  FreezeOptions f = o.freeze;
  if (o.freeze_epochs > 0 && f.freeze == "none") f.freeze = "backbone";
  return f;
}

// The model: architecture, start weights (a new head for this class count), device and precision, freeze plan.
std::unique_ptr<models::Model> build_model(const TrainOptions& o, int64_t num_classes, Device dev, Precision prec,
                                           FreezePlan& plan, std::ostream& log) {
  auto model = models::create_model(o.arch, num_classes, o.seed);
  if (o.memory_efficient) model->require_memory_efficient();
  if (o.dropout >= 0) {
    TL_CHECK(o.dropout <= 1, ValueError, "--dropout must be in [0, 1], got ", o.dropout);
    model->set_dropout(o.dropout);
  }
  if (!o.aux && model->has_aux()) {
    model->drop_aux();
    log << "auxiliary classifiers dropped (--no-aux)\n";
  }
  if (!o.weights.empty()) {
    models::LoadOptions lopt;
    lopt.allow_mismatch = o.allow_partial_weights;
    lopt.allow_nonfinite = o.allow_nonfinite_weights;
    models::LoadReport rep = models::load_weights(*model, o.weights, lopt);
    log << "weights " << o.weights << ": " << rep.summary() << "\n";
    if (!rep.skipped.empty()) log << "new head " << model->head_name() << " for " << num_classes << " classes\n";
  } else {
    log << "no --weights: " << o.arch << " starts from random initialisation (training from scratch)\n";
  }
  if (prec.dtype == DType::F64) model->to_dtype(DType::F64);
  model->to(dev, prec.layout);
  plan = apply_freeze(*model, initial_freeze(o));
  log << plan.summary() << "\n";
  return model;
}

// Gradual unfreezing over a run: the schedule, checked against the model (each step must unfreeze something), the
// parameters that train at some epoch (the optimizer's groups hold them from the start, so that its state dict, and
// a checkpoint, look the same before and after an unfreeze), and the plan in force.
class Unfreezing {
 public:
  Unfreezing(const TrainOptions& o, models::Model& model, const FreezePlan& initial_plan, std::ostream& log)
      : initial_(initial_freeze(o)), schedule_(parse_unfreeze(o.unfreeze, o.freeze_epochs, model, o.epochs)),
        plan_(initial_plan) {
    for (const UnfreezeStep& step : schedule_.steps) {
      const int epoch0 = step.epoch - 1;
      const int64_t before = apply_freeze(model, schedule_.at(initial_, epoch0 - 1)).trainable_params;
      const int64_t after = apply_freeze(model, schedule_.at(initial_, epoch0)).trainable_params;
      TL_CHECK(after > before, ValueError, "--unfreeze ", step.block, "@", step.epoch, ": it already trains by then ",
               "(with --freeze ", initial_.freeze, " and the earlier steps); unfreeze a frozen block, e.g. with --freeze ",
               "backbone");
    }
    for (auto& [name, p] : model.named_parameters())
      if (p.trainable()) ever_trainable_.insert(name);
    apply_freeze(model, initial_);
    if (!schedule_.empty())
      log << "gradual unfreezing: " << schedule_.describe() << " (joining the body's parameter group at its lr)\n";
  }
  bool ever_trainable(const std::string& name) const { return ever_trainable_.count(name) > 0; }
  const FreezePlan& plan() const { return plan_; }
  // The blocks the schedule unfreezes at the start of 0-based `epoch`, also when a resume applied them already.
  std::vector<std::string> unfreezing_at(int epoch) const { return schedule_.unfreezing_at(epoch); }

  // Applies the steps reached by 0-based `epoch` and not applied yet (at the start of that epoch, or of a resumed
  // one). Returns the blocks unfrozen now; empty when nothing changed.
  std::vector<std::string> advance(models::Model& model, int epoch, std::ostream& log) {
    const size_t reached = schedule_.reached(epoch);
    if (reached == applied_) return {};
    std::vector<std::string> blocks;
    for (size_t i = applied_; i < reached; ++i)
      blocks.push_back(schedule_.steps[i].block == "*" ? "everything" : schedule_.steps[i].block);
    applied_ = reached;
    plan_ = apply_freeze(model, schedule_.at(initial_, epoch));
    std::string list;
    for (const std::string& b : blocks) list += (list.empty() ? "" : ", ") + b;
    log << "epoch " << epoch + 1 << ": unfreezing " << list << "\n" << plan_.summary() << "\n";
    return blocks;
  }

 private:
  FreezeOptions initial_;
  UnfreezeSchedule schedule_;
  std::set<std::string> ever_trainable_;
  FreezePlan plan_;
  size_t applied_ = 0;
};

// The optimizer over the trainable parameters: the new head and the pretrained body as two groups.
// Parameters that start frozen but unfreeze later (`will_train`) are in their group from the start; the optimizer
// skips them, and creates no state for them, until they train.
std::unique_ptr<Optimizer> build_optimizer(const TrainOptions& o, models::Model& model, std::ostream& log,
                                           const std::function<bool(const std::string&)>& will_train) {
  std::vector<Parameter> head, body;
  for (auto& [name, p] : model.named_parameters()) {
    if (!p.trainable() && !(will_train && will_train(name))) continue;
    (model.in_head(name) ? head : body).push_back(p);
  }
  const double mult = o.backbone_lr_mult >= 0 ? o.backbone_lr_mult : o.freeze_epochs > 0 ? 0.1 : 1.0;
  const double body_lr = o.backbone_lr >= 0 ? o.backbone_lr : o.lr * mult;
  std::vector<ParamGroup> groups;
  if (!head.empty()) groups.emplace_back("head", head, o.lr);
  if (!body.empty()) groups.emplace_back("body", body, body_lr);
  const OptimizerKind kind = parse_optimizer_kind(o.optimizer);
  HyperParams hp = kind == OptimizerKind::SGD ? HyperParams::sgd(o.lr, o.momentum, o.weight_decay, o.nesterov)
                   : kind == OptimizerKind::Adam ? HyperParams::adam(o.lr, o.weight_decay)
                                                 : HyperParams::adamw(o.lr, o.weight_decay);
  log << "optimizer " << optimizer_kind_name(kind) << ": head lr " << o.lr;
  if (!body.empty()) log << ", body lr " << body_lr;
  log << "\n";
  return std::make_unique<Optimizer>(kind, groups, hp);
}

// The loss: label smoothing, and class weights n / (C * n_c) (scikit-learn's "balanced") with --balance.
CrossEntropyOptions build_loss(const TrainOptions& o, const TrainData& data, Device dev, Precision prec) {
  CrossEntropyOptions ce;
  ce.label_smoothing = o.label_smoothing;
  if (o.balance) {
    const int64_t C = data.num_classes();
    std::vector<int64_t> counts(static_cast<size_t>(C), 0);
    for (const io::Sample& s : data.splits.train.samples) ++counts[static_cast<size_t>(s.label)];
    std::vector<double> w;
    const double n = static_cast<double>(data.splits.train.samples.size());
    for (int64_t c : counts) w.push_back(n / (static_cast<double>(C) * static_cast<double>(std::max<int64_t>(c, 1))));
    ce.class_weights = Tensor::from_values(w, {C}, prec.dtype == DType::F64 ? DType::F64 : DType::F32, dev);
  }
  return ce;
}

namespace {

// --on-bad-image skip: the images a phase skipped, those of every rank (each met its share's), in the order one
// process meets them. With several ranks a collective, made by every rank alike (the option is the same on all).
void report_skipped(const TrainOptions& o, const Distributed& dist, const std::vector<io::SkippedImage>& mine,
                    const std::string& what, std::ostream& log) {
  if (dist.world_size() > 1 && io::parse_on_bad_image(o.on_bad_image) != io::OnBadImage::Skip) return;  // none
  const std::vector<io::SkippedImage> all = gather_skipped(dist, mine, "all-gather of the images skipped " + what);
  if (!all.empty()) log << io::skipped_report(all) << "\n";
}

// The feature caches of the train and val sets, when the plan allows them (see feature_cache.h).
struct FeatureCaches {
  std::unique_ptr<FeatureCache> train, val;
};
// Several ranks: each runs the frozen part on its 1/N of the train images (FeatureCache's parts) and the rows are
// exchanged, so that every rank can serve its share of any epoch; the val cache holds each rank's own val share.
FeatureCaches build_feature_caches(const TrainOptions& o, TrainData& data, models::Model& model, const FreezePlan& plan,
                                   Device dev, Precision prec, const Distributed& dist, std::ostream& log) {
  const int views = o.augment ? o.cache_views : 1;  // K augmented views, or the one deterministic view
  const int64_t rows = std::max(views, 1) * data.train->num_samples() + data.val->num_samples();
  TL_CHECK(o.cache_dtype == "float32" || o.cache_dtype == "float16" || o.cache_dtype == "bfloat16", ValueError,
           "--cache-dtype must be float32, float16 or bfloat16, got '", o.cache_dtype, "'");
  const DType storage = prec.dtype == DType::F64       ? DType::F64
                        : o.cache_dtype == "float16"   ? DType::F16
                        : o.cache_dtype == "bfloat16" ? DType::BF16
                                                       : DType::F32;
  const int cut = cache_cut(model);
  const int64_t bytes = cut < -1 ? 0
                                 : rows * cache_numel(model, cut, models::input_size(o.arch, o.image_size).crop) *
                                       static_cast<int64_t>(dtype_size(storage));
  const FeatureCachePlan fc = plan_feature_cache(model, plan, !o.augment, o.feature_cache, views, bytes,
                                                 static_cast<int64_t>(o.cache_budget_gb * (1LL << 30)));
  log << fc.reason << "\n";
  FeatureCaches c;
  if (!fc.use) return c;
  const bool several = dist.world_size() > 1;
  // Over the RAM budget: scratch files under --out (one per rank), unlinked as soon as they are mapped.
  auto spill = [&](const std::string& name) {
    return fc.spill ? (fs::path(o.out) / (several ? detail::concat(name, ".rank", dist.rank()) : name)).string()
                    : std::string();
  };
  std::unique_ptr<io::DataLoader> train_part;  // several ranks: this rank's 1/N of the train images, in order
  if (several) {
    io::LoaderOptions lo = loader_options(o);
    lo.rank = dist.rank();
    lo.world_size = dist.world_size();
    lo.pad_shares = false;
    train_part = std::make_unique<io::DataLoader>(data.splits.train.samples, train_compose(o), lo);
  }
  c.train = std::make_unique<FeatureCache>(model, *data.train, dev, prec.dtype, prec.layout, "cache train", o.quiet, log,
                                           views, spill(".feature_cache_train.tmp"), storage, fc.cut,
                                           FeatureCacheParts{&dist, train_part.get()});
  report_skipped(o, dist, c.train->skipped(), "by the train feature cache", log);
  io::DataLoader& val = data.val_share ? *data.val_share : *data.val;  // each rank evaluates its own share
  if (val.num_samples() > 0) {
    c.val = std::make_unique<FeatureCache>(model, val, dev, prec.dtype, prec.layout, "cache val", o.quiet, log, 1,
                                           spill(".feature_cache_val.tmp"), storage, fc.cut);
    report_skipped(o, dist, c.val->skipped(), "by the val feature cache", log);
  }
  return c;
}

// What a run carries from epoch to epoch and what last.ckpt holds besides the model, optimizer and schedule.
struct RunState {
  int epoch = 0;          // the epoch to run next (0-based)
  int64_t batch = 0;      // the batch of that epoch to start at (a mid-epoch stop)
  int bad_epochs = 0;     // epochs since the best val accuracy (early stopping)
  std::vector<EpochRecord> history;
  // A stop inside an epoch: the train metrics of its batches so far, which the resumed epoch adds to its own (JSON:
  // count, correct_top_k, loss_sum, confusion; null when the stop was at an epoch's start).
  json partial_train;
};

json partial_metrics_json(const ClassificationMetrics& m) {
  return {{"count", m.count()}, {"correct_top_k", m.correct_top_k()}, {"loss_sum", m.loss_sum()},
          {"confusion", m.confusion()}};
}
void add_partial_metrics(const json& j, ClassificationMetrics& m) {
  if (j.is_null()) return;
  m.add_counts(j.at("count").get<int64_t>(), j.at("correct_top_k").get<int64_t>(), j.at("loss_sum").get<double>(),
               j.at("confusion").get<std::vector<int64_t>>());
}

// Writes and reads <out>/last.ckpt: everything an exact --resume needs.
class Checkpointer {
 public:
  // `world_size`: the processes of this run (saved, so that a resume with another count can say what changed).
  Checkpointer(const TrainOptions& o, const std::vector<std::string>& classes, models::Model& model, Optimizer& opt,
               LRScheduler& sched, int world_size)
      : o_(o), classes_(classes), model_(model), opt_(opt), sched_(sched),
        path_((fs::path(o.out) / "last.ckpt").string()), world_size_(world_size) {}
  const std::string& path() const { return path_; }

  void save(const RunState& s, const TrainResult& r) const {
    StateDict sd;
    for (auto& [name, t] : models::state_dict(model_)) sd.tensors["model." + name] = t;
    sd.insert("optimizer.", opt_.state_dict());
    sd.insert("scheduler.", sched_.state_dict());
    sd.set_string("arch", o_.arch);
    sd.set_string("classes", io::encode_names(classes_));
    sd.set_int("epoch", s.epoch);
    sd.set_int("batch", s.batch);
    sd.set_int("world_size", world_size_);
    sd.set_int("batch_size", o_.batch_size);
    sd.set_double("best_acc", r.best_val_acc);
    sd.set_int("best_epoch", r.best_epoch);
    sd.set_int("bad_epochs", s.bad_epochs);
    sd.set_string("history", history_json(s.history).dump());
    if (!s.partial_train.is_null()) sd.set_string("partial_train", s.partial_train.dump());
    for (auto& [name, m] : model_.named_modules())  // where each dropout's next mask starts
      if (auto* d = dynamic_cast<nn::Dropout*>(m)) sd.set_int("dropout_offset." + name, static_cast<int64_t>(d->offset()));
    save_state_dict(path_, sd);
  }

  // Restores the model, optimizer, schedule, run state and best-so-far from last.ckpt.
  RunState restore(TrainResult& r, std::ostream& log) const {
    TL_CHECK(fs::exists(path_), IOError, "--resume: no checkpoint ", path_, " (run without --resume to start)");
    StateDict sd = load_state_dict(path_);
    const std::string arch = sd.get_string("arch");
    const auto classes = io::decode_names(sd.get_string("classes"), path_);
    TL_CHECK(arch == o_.arch && classes == classes_, ValueError, path_, ": checkpoint of ", arch, " with ",
             classes.size(), " classes, but this run is ", o_.arch, " with ", classes_.size(),
             " classes: resume with the same --arch and data, or choose another --out");
    io::TensorFile f;
    for (auto& [k, t] : sd.extract("model.").tensors) {
      f.names.push_back(k);
      f.tensors[k] = t;
    }
    models::load_weights(model_, f);
    for (auto& [name, m] : model_.named_modules())
      if (auto* d = dynamic_cast<nn::Dropout*>(m); d && sd.has_value("dropout_offset." + name))
        d->set_offset(static_cast<uint64_t>(sd.get_int("dropout_offset." + name)));
    opt_.load_state_dict(sd.extract("optimizer."));
    sched_.load_state_dict(sd.extract("scheduler."));
    RunState s;
    s.epoch = static_cast<int>(sd.get_int("epoch"));
    s.batch = sd.get_int("batch");
    s.bad_epochs = static_cast<int>(sd.get_int("bad_epochs"));
    s.history = history_from_json(json::parse(sd.get_string("history")));
    if (sd.has_value("partial_train")) s.partial_train = json::parse(sd.get_string("partial_train"));
    r.best_val_acc = sd.get_double("best_acc");
    r.best_epoch = static_cast<int>(sd.get_int("best_epoch"));
    log << "resumed " << path_ << " at epoch " << s.epoch + 1 << ", batch " << s.batch << "\n";
    if (sd.has_value("world_size")) check_global_batch(sd.get_int("world_size"), sd.get_int("batch_size"), s, log);
    return s;
  }

 private:
  const TrainOptions& o_;
  const std::vector<std::string>& classes_;
  // A resume with another number of processes or batch size: fine at an epoch's end (said in the log); inside an
  // epoch only with the same global batch, since step k of an epoch holds positions [k G, (k + 1) G) of its order
  // (every rank's share of it), so another global batch would skip or repeat images.
  void check_global_batch(int64_t world0, int64_t batch0, const RunState& s, std::ostream& log) const {
    if (world0 == world_size_ && batch0 == o_.batch_size) return;
    const int64_t global0 = world0 * batch0, global = world_size_ * o_.batch_size;
    TL_CHECK(s.batch == 0 || global == global0, ValueError, path_, " was written inside epoch ", s.epoch + 1,
             " (after step ", s.batch, ") by ", world0, " process(es) x batch ", batch0, " = global batch ", global0,
             "; this run's global batch is ", world_size_, " x ", o_.batch_size, " = ", global, ", so its steps would "
             "not hold the images left. Resume with a global batch of ", global0, " (processes x --batch-size), or "
             "from an epoch's end");
    log << "resuming with " << world_size_ << " process(es) x batch " << o_.batch_size << " = global batch " << global
        << " (the checkpoint: " << world0 << " x " << batch0 << " = " << global0 << ")";
    if (global != global0) log << "; the lr is not scaled (--lr " << o_.lr << ")";
    log << "\n";
  }

  models::Model& model_;
  Optimizer& opt_;
  LRScheduler& sched_;
  std::string path_;
  int world_size_;
};

// Everything one training step and the epoch loop use.
struct Trainer {
  const TrainOptions& o;
  Device dev;
  Precision prec;
  TrainData& data;
  models::Model& model;
  Optimizer& opt;
  LRScheduler& sched;
  const CrossEntropyOptions& ce;
  Tape& tape;
  FeatureCaches& caches;

  RunningMetrics running;  // the train phase's losses and counts, on the device
  GradientAverager grads;  // several ranks: the gradients' mean over them before each update
  const Distributed& dist;
  int64_t hang_at_step = 0;  // TL_TEST_HANG_AT_STEP for this rank (test hook, trainer.h); 0: off
  int64_t steps_run = 0;     // by this process (the hook counts as --stop-after-steps does)
  StepPosition* position = nullptr;  // where the step in progress is, for --sync-bn's messages (run_training's)
#if TL_WITH_CUDA
  std::unique_ptr<StepGraphs> graphs = nullptr;  // --cuda-graphs
#endif

  // One step: forward (the whole model on images, or the head on cached features), loss, backward, update. No host
  // sync: the loss and counts go to `running` on the device. Returns the running totals (on CUDA as of the previous
  // step, see RunningMetrics::lagged); throws DivergedError once a loss was NaN/Inf (on the CPU before this step
  // updates anything; on CUDA one step later, and train_epoch checks again, exactly, before any checkpoint).
  RunningMetrics::Totals step(const Tensor& input, const Tensor& labels, bool cached, int epoch, int64_t batch_index,
                              const std::string& last_path) {
    sched.apply(epoch, batch_index);
    if (position) *position = StepPosition{epoch, batch_index};
#if TL_WITH_CUDA
    if (graphs && !cached) return graph_step(input, labels, epoch, batch_index, last_path);
#endif
    Variable loss = forward_loss(input, labels, cached);
    const RunningMetrics::Totals t = running.lagged();
    check_finite(t, epoch, batch_index, last_path);
    if (hang_at_step > 0 && ++steps_run >= hang_at_step) hang(epoch, batch_index);  // before any bucket starts
    grads.begin(model, epoch, batch_index, tape);  // several ranks: buckets start reducing during backward
    tape.backward(loss, Tensor(), grads.leaf_ready_hook());
    grads.finish_and_step(opt);  // several ranks: each bucket updates as soon as its mean is in
    opt.zero_grad();
    return t;
  }
  // The forward pass and the loss, added to the running metrics.
  Variable forward_loss(const Tensor& input, const Tensor& labels, bool cached) {
    Variable logits = cached ? model.forward_from(Variable(input), caches.train->cut())
                             : model.forward(Variable(model_input(input, dev, prec)));
    Variable loss = cross_entropy(logits, labels, ce);
    for (const models::Model::AuxLogits& a : model.take_aux_logits())  // Inception v3, GoogLeNet in training
      loss = add(loss, cross_entropy(a.logits, labels, ce), a.weight);
    running.add(logits.value(), labels, loss.value());
    return loss;
  }
#if TL_WITH_CUDA
  // --cuda-graphs (one process, images, checked by check_cuda_graphs): the step as one body that runs eagerly, is
  // captured or is replayed (train/cuda_graph.h); the gradients are zeroed in place so that they keep their
  // addresses. The non-finite check follows the launch: one step late, as for any CUDA step.
  RunningMetrics::Totals graph_step(const Tensor& input, const Tensor& labels, int epoch, int64_t batch_index,
                                    const std::string& last_path) {
    graphs->run(input, labels, input.size(0) == o.batch_size, [&] { return graph_signature(); }, opt,
                [&](const Tensor& x, const Tensor& y) {
                  tape.backward(forward_loss(x, y, false));
                  opt.step();
                  opt.zero_grad(false);
                });
    const RunningMetrics::Totals t = running.lagged();
    check_finite(t, epoch, batch_index, last_path);
    if (hang_at_step > 0 && ++steps_run >= hang_at_step) hang(epoch, batch_index);
    return t;
  }
  // What a captured graph depends on besides the input shape (GraphPolicy): the trainable set, the optimizer's
  // launch partition, tables and coefficient block, and the workspace's address.
  std::vector<int64_t> graph_signature() const {
    std::vector<int64_t> trainable;
    for (size_t g = 0; g < opt.num_groups(); ++g)
      for (const Parameter& p : opt.group_params(g)) trainable.push_back(p.trainable());
    const Optimizer::CudaStats& st = opt.cuda_stats();
    return {signature_hash(trainable), signature_hash(opt.launch_layout()), st.table_uploads, st.grad_table_uploads,
            opt.step_scalars().device_generation(), static_cast<int64_t>(reinterpret_cast<intptr_t>(cuda::workspace(0)))};
  }
#endif
  // Several ranks: a step in which every image of this rank's batch was skipped (--on-bad-image skip). It still
  // takes part in the gradient reduction (with zeros) and updates with the mean, as the other ranks do.
  RunningMetrics::Totals empty_step(int epoch, int64_t batch_index) {
    sched.apply(epoch, batch_index);
    grads.average(model, epoch, batch_index, true);
    opt.step();
    opt.zero_grad();
    return running.lagged();
  }
  void check_finite(const RunningMetrics::Totals& t, int epoch, int64_t batch_index, const std::string& last_path) {
    if (t.nonfinite_batches == 0) return;
    tape.clear();
    throw DivergedError(detail::concat("the loss became NaN or infinite at epoch ", epoch + 1, ", by batch ",
                                       batch_index + 1, "; nothing after the last good checkpoint was saved (",
                                       last_path, "). Try a lower --lr (now ", o.lr, "), or --precision fp32"));
  }

  // The train phase of one epoch from `state.batch`. Returns false when stopped (Ctrl-C or --stop-after-steps):
  // `state` then says where to resume.
  bool train_epoch(RunState& state, int64_t& steps, ClassificationMetrics& m, const std::string& last_path,
                   std::ostream& log) {
    model.train();
    const int64_t first = state.batch;
    Progress progress("train", state.epoch + 1, o.epochs, data.train->batches_per_epoch(), log);
    running.reset();
    // Before the epoch's metrics are read or a checkpoint is written: every loss so far finite (exactly).
    auto end_phase = [&]() {
      grads.drain();  // several ranks on CUDA: the last step's reductions ended (or the timeout), before any sync
      check_finite(running.exact(), state.epoch, state.batch - 1, last_path);
      running.read_into(m);
    };
    // After each step: progress, and whether to stop here.
    auto after_step = [&](const RunningMetrics::Totals& t, int64_t size) {
      ++state.batch;
      ++steps;
      if (!o.quiet) progress.update(state.batch - first, size, t.mean_loss(), t.accuracy());
      const bool stop = stop_requested() || (o.stop_after_steps > 0 && steps >= o.stop_after_steps);
      if (stop) end_phase();
      return stop;
    };
    if (caches.train) {
      for (int64_t b = first; b < caches.train->batches_per_epoch(); ++b) {
        FeatureCache::Batch fb = caches.train->batch(state.epoch, b);
        if (fb.size == 0) {  // every image of the batch was skipped
          if (!grads_needed()) {
            ++state.batch;
          } else if (after_step(empty_step(state.epoch, state.batch), 0)) {  // several ranks: every rank steps
            return false;
          }
          continue;
        }
        if (after_step(step(fb.features, fb.labels, true, state.epoch, state.batch, last_path), fb.size)) return false;
      }
    } else {
      data.train->start_epoch(state.epoch, first);
      // Several ranks: every rank steps for every batch, also one whose images were all skipped here.
      auto catch_up = [&](int64_t batch) {
        while (grads_needed() && state.batch < batch)
          if (after_step(empty_step(state.epoch, state.batch), 0)) return true;
        return false;
      };
      while (const io::Batch* b = data.train->next()) {
        if (catch_up(b->index)) return false;
        state.batch = b->index;  // one process: past any batch whose images were all skipped (no step for it)
        const RunningMetrics::Totals t = step(b->images_to(dev), b->labels_to(dev), false, state.epoch, state.batch,
                                              last_path);
        if (after_step(t, b->size)) return false;
      }
      if (catch_up(data.train->batches_per_epoch())) return false;
      report_skipped(data.train->skipped(), "train", state.epoch, log);
    }
    end_phase();
    if (!o.quiet) progress.finish();
    return true;
  }

  // With several ranks each evaluates its share of the val set and the metrics are summed over them.
  void val_epoch(int epoch, ClassificationMetrics& m, std::ostream& log) {
    if (data.splits.val.samples.empty()) return;
    io::DataLoader& val = data.val_share ? *data.val_share : *data.val;
    broadcast_buffers(dist, model);  // one model's running statistics on every rank
    Progress vp("val", epoch + 1, o.epochs, val.batches_per_epoch(), log);
    evaluate(model, val, dev, prec, ce, m, o.quiet ? nullptr : &vp, caches.val.get());
    if (!caches.val) report_skipped(val.skipped(), "val", epoch, log);
    all_reduce_metrics(dist, m, detail::concat("sum of the val metrics at epoch ", epoch + 1));
  }

  void report_skipped(const std::vector<io::SkippedImage>& mine, const char* phase, int epoch, std::ostream& log) {
    train::report_skipped(o, dist, mine, detail::concat("in the ", phase, " phase of epoch ", epoch + 1), log);
  }

  // The test hook: this rank stops answering (the others time out and end the job with MPI_Abort).
  [[noreturn]] void hang(int epoch, int64_t batch_index) {
    std::cerr << "TL_TEST_HANG_AT_STEP: this rank hangs at epoch " << epoch + 1 << " step " << batch_index + 1
              << std::endl;
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  bool grads_needed() const { return dist.world_size() > 1; }
};

// After an epoch: the metrics line and log, best.bin when val accuracy improved, early-stopping count.
// Returns true when early stopping ends the run.
bool record_epoch(const TrainOptions& o, const TrainData& data, models::Model& model, const Optimizer& opt,
                  const ClassificationMetrics& train_m, const ClassificationMetrics& val_m, const json& trained,
                  RunState& state, TrainResult& result, JsonLinesWriter* metrics_log, std::ostream& log) {
  const int epoch = state.epoch;
  const bool has_val = val_m.count() > 0;
  const double val_acc = has_val ? val_m.top1_accuracy() : NAN;
  state.history.push_back({epoch + 1, train_m.mean_loss(), has_val ? val_m.mean_loss() : NAN,
                           train_m.top1_accuracy(), val_acc, opt.lr(0), !trained.value("unfrozen", json::array()).empty()});
  json line = {{"epoch", epoch + 1}, {"lr", opt.lr(0)}, {"train", train_m.to_json(false)}};
  line.update(trained);  // what trained: trainable_params, and the blocks unfrozen at this epoch's start
  if (has_val) line["val"] = val_m.to_json(true);
  if (metrics_log) metrics_log->write(line);  // null on the ranks other than 0, which write nothing
  log << "epoch " << epoch + 1 << "/" << o.epochs << ": train loss " << train_m.mean_loss() << " acc "
      << 100 * train_m.top1_accuracy() << "%";
  if (has_val)
    log << ", val loss " << val_m.mean_loss() << " acc " << 100 * val_acc << "% top-" << val_m.top_k() << " "
        << 100 * val_m.top_k_accuracy() << "%";
  log << "\n";
  if (has_val && (result.best_epoch < 0 || val_acc > result.best_val_acc)) {
    result.best_val_acc = val_acc;
    result.best_epoch = epoch;
    state.bad_epochs = 0;
    if (metrics_log)
      models::save_weights(model, result.best_path, data.splits.classes, {{"epoch", std::to_string(epoch + 1)}});
  } else {
    ++state.bad_epochs;
  }
  if (metrics_log)
    write_curves_png((fs::path(o.out) / "curves.png").string(), state.history, make_schedule(o).step_epochs(o.epochs));
  if (o.early_stopping > 0 && state.bad_epochs >= o.early_stopping) {
    log << "early stopping: no better val accuracy for " << state.bad_epochs << " epochs\n";
    return true;
  }
  return false;
}

// The val images for the prediction grid, round-robin over the classes so that every class shows up.
std::vector<const io::Sample*> grid_picks(const io::DataSplits& splits, int64_t num_classes) {
  std::vector<std::vector<const io::Sample*>> by_class(static_cast<size_t>(num_classes));
  for (const io::Sample& s : splits.val.samples) by_class[static_cast<size_t>(s.label)].push_back(&s);
  std::vector<const io::Sample*> picks;
  for (size_t k = 0; picks.size() < splits.val.samples.size(); ++k)
    for (const auto& list : by_class)
      if (k < list.size()) picks.push_back(list[k]);
  return picks;
}

// predictions.png: val images titled with the predicted and true class.
void write_prediction_grid(const TrainOptions& o, const io::DataSplits& splits, models::Model& model, Device dev,
                           Precision prec) {
  const io::Compose vt = val_compose(o.val_transform, models::input_size(o.arch, o.image_size));
  NoGradGuard no_grad;
  model.eval();
  std::vector<GridItem> items;
  for (const io::Sample* s : grid_picks(splits, static_cast<int64_t>(splits.classes.size()))) {
    if (static_cast<int>(items.size()) >= o.grid_images) break;
    io::Image img;
    try {
      io::Rng rng(o.seed);
      img = vt.apply_image(io::decode_image(s->path), rng);
    } catch (const IOError&) {
      continue;
    }
    Tensor x = Tensor::empty({1, 3, img.height, img.width});
    io::to_tensor_normalize(img, vt.mean(), vt.std(), x.data_as<float>());
    const std::vector<double> l =
        model.forward(Variable(model_input(x, dev, prec))).value().to(Device::CPU, DType::F32, Layout::NCHW).to_doubles();
    size_t best = 0;
    for (size_t c = 1; c < l.size(); ++c)
      if (l[c] > l[best]) best = c;
    double sum = 0;
    for (double v : l) sum += std::exp(v - l[best]);
    items.push_back({img, splits.classes[best], splits.classes[static_cast<size_t>(s->label)],
                     static_cast<float>(1.0 / sum)});
  }
  if (!items.empty()) write_prediction_grid_png((fs::path(o.out) / "predictions.png").string(), items, 4);
}

// The final report with the best weights: per-class accuracy, confusion matrix, prediction grid, and the
// error-analysis pictures (top_losses.png, confusion.png).
void final_report(const TrainOptions& o, TrainData& data, models::Model& model, Device dev, Precision prec,
                  const CrossEntropyOptions& ce, const TrainResult& result, std::ostream& log) {
  std::string written;  // the pictures beyond curves.png
  if (result.best_epoch >= 0) {
    models::load_weights(model, result.best_path);
    ClassificationMetrics val_m(static_cast<int>(data.num_classes()));
    std::vector<ImageLoss> losses;
    evaluate(model, *data.val, dev, prec, ce, val_m, nullptr, nullptr, &losses);
    log << "best val accuracy " << 100 * result.best_val_acc << "% (epoch " << result.best_epoch + 1 << "), "
        << result.best_path << "\n"
        << val_m.table(data.splits.classes) << "\n";
    write_prediction_grid(o, data.splits, model, dev, prec);
    written += ", predictions.png";
    const io::Compose vt = val_compose(o.val_transform, models::input_size(o.arch, o.image_size));
    for (const std::string& f : write_error_analysis(o.out, losses, val_m.confusion(), data.splits.val.samples,
                                                     data.splits.classes, vt))
      written += ", " + f;
  }
  log << "wrote " << o.out << ": best.bin, last.ckpt, metrics.jsonl, curves.png" << written << "\n";
}

}  // namespace

namespace {
// --cuda-graphs: what cannot be captured is refused before any work (the device) or once the model and the
// feature caches exist (dropout, whose mask would repeat; the cached head step, which the graphs do not cover).
void check_cuda_graphs(const TrainOptions& o, Device dev) {
  if (!o.cuda_graphs) return;
  TL_CHECK(dev == Device::CUDA, ValueError, "--cuda-graphs captures the training step's CUDA work, but this run is on "
           "the CPU", o.device == "auto" ? " (--device auto: " + cuda::unavailable_reason() + ")" : std::string(),
           "; drop --cuda-graphs, or use --device cuda on a machine with a GPU");
}
void check_cuda_graphs(const TrainOptions& o, models::Model& model, const FeatureCaches& caches) {
  if (!o.cuda_graphs) return;
  for (const auto& [name, m] : model.named_modules())
    if (const auto* d = dynamic_cast<const nn::Dropout*>(m); d && d->p > 0)
      throw ValueError(detail::concat("--cuda-graphs: ", o.arch, " has dropout ('", name, "', p = ", d->p,
                                      "), whose mask would repeat in every replay of the captured step; add "
                                      "--dropout 0 or drop --cuda-graphs"));
  TL_CHECK(!caches.train, ValueError, "--cuda-graphs: the feature cache is on (only the head trains, on cached "
           "features), and the graphs capture the step on images; add --no-cache to capture the whole step, or drop "
           "--cuda-graphs (the head's step is small)");
}

#if TL_WITH_CUDA
// Every batch norm's num_batches_tracked: the host counters a replayed step advances (train/cuda_graph.h).
std::vector<int64_t*> step_counters(models::Model& model) {
  std::vector<int64_t*> counters;
  for (const nn::StateEntry& e : model.state())
    if (e.counter) counters.push_back(e.counter);
  return counters;
}
#endif
}  // namespace

TrainResult run_training(const TrainOptions& o, std::ostream& log) { return run_training(o, log, Distributed()); }

TrainResult run_training(const TrainOptions& o, std::ostream& main_log, const Distributed& dist) {
  std::ostream quiet(nullptr);  // ranks other than 0 print nothing (errors still reach the caller)
  std::ostream& log = dist.is_main() ? main_log : quiet;
  const Device dev = parse_device(o.device);
  const Precision prec = parse_precision(o.precision, dev, o.memory_format);
  TL_CHECK(o.epochs >= 1 && o.batch_size >= 1, ValueError, "--epochs and --batch-size must be >= 1");
  check_cuda_graphs(o, dev);
  TL_CHECK(!o.cuda_graphs || dist.world_size() == 1, ValueError, "--cuda-graphs runs one process for now (the ",
           "captured step has no gradient all-reduce); with several processes leave it out");
  // Several processes on CUDA: the GPU is chosen (node-local rank) before anything else touches CUDA. Without NCCL
  // in the build, NcclComm's constructor refuses, saying how to get it.
  std::unique_ptr<NcclComm> nccl;
  if (dist.world_size() > 1 && dev == Device::CUDA) nccl = std::make_unique<NcclComm>(dist);
  io::ensure_writable_folder(o.out, "--out");  // before any work: a wrong --out fails in a second, not an epoch

  TrainData data = build_data(o, log, dist.rank(), dist.world_size());
  if (dist.world_size() > 1)
    log << "data parallel: " << dist.world_size() << " processes x batch " << o.batch_size << " = global batch "
        << dist.world_size() * o.batch_size << ", lr " << o.lr << " (not scaled)\n";
  FreezePlan plan;
  auto model = build_model(o, data.num_classes(), dev, prec, plan, log);
  Unfreezing unfreezing(o, *model, plan, log);
  StepPosition position;  // the step in progress (Trainer::step), for the messages of --sync-bn's collectives
  if (o.sync_bn) setup_sync_bn(o, *model, dist, position, log);
  auto opt = build_optimizer(o, *model, log, [&](const std::string& name) { return unfreezing.ever_trainable(name); });
  LRScheduler sched(*opt, make_schedule(o), data.train->batches_per_epoch());
  log << "schedule " << sched.schedule().describe() << "\n";
  const CrossEntropyOptions ce = build_loss(o, data, dev, prec);

  fs::create_directories(o.out);
  TrainResult result;
  result.best_path = (fs::path(o.out) / "best.bin").string();
  Checkpointer ckpt(o, data.splits.classes, *model, *opt, sched, dist.world_size());
  result.last_path = ckpt.path();
  RunState state = o.resume ? ckpt.restore(result, log) : RunState{};
  broadcast_parameters(dist, *model);  // the same start on every rank
  unfreezing.advance(*model, state.epoch, log);  // a run resumed after an unfreeze
  FeatureCaches caches = build_feature_caches(o, data, *model, unfreezing.plan(), dev, prec, dist, log);
  check_cuda_graphs(o, *model, caches);
  result.epochs_done = state.epoch;

  std::unique_ptr<JsonLinesWriter> metrics_log;  // rank 0 alone writes files
  if (dist.is_main()) metrics_log = std::make_unique<JsonLinesWriter>((fs::path(o.out) / "metrics.jsonl").string());
  Tape tape;
  TapeScope tape_scope(tape);
  Trainer t{o, dev, prec, data, *model, *opt, sched, ce, tape, caches,
            RunningMetrics(static_cast<int>(data.num_classes()), dev),
            GradientAverager(dist, GradientAverager::kBucketBytes, nccl.get()), dist,
            hang_step_from_env(dist.rank())};
  t.position = &position;
#if TL_WITH_CUDA
  if (o.cuda_graphs) t.graphs = std::make_unique<StepGraphs>(step_counters(*model));
#endif
  int64_t steps = 0;
  for (; state.epoch < o.epochs; ++state.epoch, state.batch = 0) {
    const std::vector<std::string> unfrozen = unfreezing.advance(*model, state.epoch, log);
    if (!unfrozen.empty() && (caches.train || caches.val)) {
      caches = FeatureCaches{};  // their frozen part just shrank
      log << "feature cache released: the unfrozen layers run on the images from now on\n";
    }
    ClassificationMetrics train_m(static_cast<int>(data.num_classes()));
    const bool finished = t.train_epoch(state, steps, train_m, ckpt.path(), log);
    all_reduce_metrics(dist, train_m, detail::concat("sum of the train metrics at epoch ", state.epoch + 1));
    add_partial_metrics(state.partial_train, train_m);  // the batches before a resumed stop
    state.partial_train = nullptr;
    if (!finished) {
      state.partial_train = partial_metrics_json(train_m);
      if (dist.is_main()) ckpt.save(state, result);
      result.interrupted = true;
      log << "\nstopped after epoch " << state.epoch + 1 << " batch " << state.batch << "; saved " << ckpt.path()
          << " (continue with --resume)\n";
      return result;
    }
    ClassificationMetrics val_m(static_cast<int>(data.num_classes()));
    t.val_epoch(state.epoch, val_m, log);
    const json trained = {{"trainable_params", unfreezing.plan().trainable_params},
                          {"unfrozen", unfreezing.unfreezing_at(state.epoch)}};
    const bool stop_early =
        record_epoch(o, data, *model, *opt, train_m, val_m, trained, state, result, metrics_log.get(), log);
    result.epochs_done = state.epoch + 1;
    if (dist.is_main()) ckpt.save({state.epoch + 1, 0, state.bad_epochs, state.history, nullptr}, result);
    if (stop_early) {
      result.early_stopped = true;
      break;
    }
  }
#if TL_WITH_CUDA
  if (t.graphs) {
    const GraphPolicy& gp = t.graphs->policy();
    log << "cuda graphs: " << gp.captures() << " captured, " << gp.replays() << " steps replayed, " << gp.invalidations()
        << " invalidated (the rest ran eagerly: warm-up and last batches)\n";
  }
#endif
  if (dist.is_main()) final_report(o, data, *model, dev, prec, ce, result, log);
  return result;
}

double run_eval(const EvalOptions& o, std::ostream& log) {
  const Device dev = parse_device(o.device);
  if (!o.out.empty()) io::ensure_writable_folder(o.out, "--out");
  LoadedModel lm = load_model(o.weights, o.allow_nonfinite_weights);
  const Precision prec = parse_precision("fp32", dev);
  lm.model->to(dev, prec.layout);
  // The folder: <data>/<split> when it exists, else <data> itself as an ImageFolder.
  const std::string dir = fs::is_directory(fs::path(o.data) / o.split) ? (fs::path(o.data) / o.split).string() : o.data;
  io::ImageFolder folder = io::scan_image_folder(dir);
  TL_CHECK(folder.classes == lm.classes, ValueError, dir, ": its classes (", folder.classes.size(),
           ") differ from the ones the weights were trained on (", lm.classes.size(), ")");
  io::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.num_workers = o.workers;
  lo.on_bad_image = io::parse_on_bad_image(o.on_bad_image);
  const io::Compose vt = val_compose(o.val_transform, models::input_size(lm.model->arch(), o.image_size));
  io::DataLoader loader(folder.samples, vt, lo);
  ClassificationMetrics m(static_cast<int>(lm.classes.size()));
  Progress p("eval", 1, 1, loader.batches_per_epoch(), log);
  std::vector<ImageLoss> losses;
  evaluate(*lm.model, loader, dev, prec, CrossEntropyOptions{}, m, &p, nullptr, o.out.empty() ? nullptr : &losses);
  log << dir << ": " << m.count() << " images, loss " << m.mean_loss() << ", top-1 " << 100 * m.top1_accuracy()
      << "%, top-" << m.top_k() << " " << 100 * m.top_k_accuracy() << "%\n"
      << m.table(lm.classes) << "\n";
  if (!loader.skipped().empty()) log << loader.skipped_report() << "\n";
  if (!o.json.empty()) {
    const std::string s = m.to_json(true).dump(2);
    write_file_atomic(o.json, s.data(), s.size());
  }
  if (!o.out.empty()) {
    log << "wrote " << o.out << ":";
    for (const std::string& f : write_error_analysis(o.out, losses, m.confusion(), folder.samples, lm.classes, vt))
      log << " " << f;
    log << "\n";
  }
  return m.top1_accuracy();
}

}  // namespace tl::train
