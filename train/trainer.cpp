// The fine-tuning loop (see trainer.h).
#include "train/trainer.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <ostream>

#include "core/device.h"
#include "io/dataset.h"
#include "io/loader.h"
#include "layers/loss.h"
#include "models/weights.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/report.h"
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

Device pick_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    TL_CHECK(cuda::available(), ValueError, "--device cuda: ", cuda::unavailable_reason(), " (use --device cpu)");
    return Device::CUDA;
  }
  TL_CHECK(name == "auto", ValueError, "--device must be auto, cpu or cuda, got '", name, "'");
  return cuda::available() ? Device::CUDA : Device::CPU;
}

io::Compose val_compose(const std::string& kind, int size) {
  if (kind == "resize") return io::eval_resize_transform(size);
  TL_CHECK(kind == "crop", ValueError, "--val-transform must be crop or resize, got '", kind, "'");
  return io::eval_transform(size * 256 / 224, size);
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

// Model input for a batch: on the device, in the run's precision and layout.
Tensor batch_input(const io::Batch& b, Device dev, bool bf16) {
  Tensor x = b.images_to(dev);
  return bf16 ? x.to(dev, DType::BF16, Layout::NHWC) : x;
}

json history_json(const std::vector<EpochRecord>& h) {
  json a = json::array();
  for (const EpochRecord& r : h)
    a.push_back({{"epoch", r.epoch}, {"train_loss", r.train_loss}, {"val_loss", r.val_loss},
                 {"train_acc", r.train_acc}, {"val_acc", r.val_acc}, {"lr", r.lr}});
  return a;
}
std::vector<EpochRecord> history_from_json(const json& a) {
  std::vector<EpochRecord> h;
  for (const json& r : a)
    h.push_back({r.at("epoch").get<int>(), r.at("train_loss").get<double>(), r.at("val_loss").get<double>(),
                 r.at("train_acc").get<double>(), r.at("val_acc").get<double>(), r.at("lr").get<double>()});
  return h;
}

// Runs the model over a loader without recording (val phase, eval command).
void evaluate(models::Model& model, io::DataLoader& loader, Device dev, bool bf16, const CrossEntropyOptions& ce,
              ClassificationMetrics& metrics, Progress* progress) {
  NoGradGuard no_grad;
  model.eval();
  loader.start_epoch(0);
  int64_t done = 0;
  while (const io::Batch* b = loader.next()) {
    Variable logits = model.forward(Variable(batch_input(*b, dev, bf16)));
    Tensor labels = b->labels_to(dev);
    const double loss = cross_entropy_forward(logits.value(), labels, ce).item();
    Tensor host = logits.value().to(Device::CPU, DType::F32, Layout::NCHW);
    metrics.add_batch(host.data_as<float>(), b->labels, b->size, loss);
    if (progress) progress->update(++done, b->size, metrics.mean_loss(), metrics.top1_accuracy());
  }
  if (progress) progress->finish();
}

std::vector<std::string> classes_from_metadata(const io::TensorFile& f, int64_t num_classes) {
  auto it = f.metadata.find("classes");
  if (it != f.metadata.end()) return json::parse(it->second).get<std::vector<std::string>>();
  std::vector<std::string> names;
  for (int64_t i = 0; i < num_classes; ++i) names.push_back(std::to_string(i));
  return names;
}

}  // namespace

TrainResult run_training(const TrainOptions& o, std::ostream& log) {
  const Device dev = pick_device(o.device);
  TL_CHECK(o.precision == "fp32" || o.precision == "bf16", ValueError, "--precision must be fp32 or bf16, got '",
           o.precision, "'");
  const bool bf16 = o.precision == "bf16";
  TL_CHECK(!bf16 || dev == Device::CUDA, ValueError, "--precision bf16 needs a CUDA device (the CPU runs fp32)");
  TL_CHECK(o.epochs >= 1 && o.batch_size >= 1, ValueError, "--epochs and --batch-size must be >= 1");

  // Data.
  io::DataSplits splits = io::load_splits(o.data, o.val_split, o.seed);
  const int64_t num_classes = static_cast<int64_t>(splits.classes.size());
  log << "data: " << splits.description << "\n";
  io::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.num_workers = o.workers;
  lo.seed = o.seed;
  lo.on_bad_image = io::parse_on_bad_image(o.on_bad_image);
  io::LoaderOptions train_lo = lo;
  train_lo.shuffle = o.shuffle;
  io::DataLoader train_loader(splits.train.samples,
                              o.augment ? io::train_transform(o.image_size) : val_compose(o.val_transform, o.image_size),
                              train_lo);
  io::DataLoader val_loader(splits.val.samples, val_compose(o.val_transform, o.image_size), lo);

  // Model and weights.
  auto model = models::create_model(o.arch, num_classes, o.seed);
  if (!o.weights.empty()) {
    models::LoadOptions lopt;
    lopt.allow_mismatch = o.allow_partial_weights;
    models::LoadReport rep = models::load_weights(*model, o.weights, lopt);
    log << "weights " << o.weights << ": " << rep.summary() << "\n";
    if (!rep.skipped.empty()) log << "new head " << model->head_name() << " for " << num_classes << " classes\n";
  } else {
    log << "no --weights: " << o.arch << " starts from random initialisation (training from scratch)\n";
  }
  model->to(dev, bf16 ? Layout::NHWC : Layout::NCHW);
  const FreezePlan plan = apply_freeze(*model, o.freeze);
  log << plan.summary() << "\n";

  // Optimizer: the new head and the pretrained body as two parameter groups.
  std::vector<Parameter> head, body;
  for (auto& [name, p] : model->named_parameters()) {
    if (!p.trainable()) continue;
    (name.rfind(model->head_name() + ".", 0) == 0 ? head : body).push_back(p);
  }
  const double body_lr = o.backbone_lr >= 0 ? o.backbone_lr : o.lr * o.backbone_lr_mult;
  std::vector<ParamGroup> groups;
  if (!head.empty()) groups.emplace_back("head", head, o.lr);
  if (!body.empty()) groups.emplace_back("body", body, body_lr);
  const OptimizerKind kind = parse_optimizer_kind(o.optimizer);
  HyperParams hp = kind == OptimizerKind::SGD ? HyperParams::sgd(o.lr, o.momentum, o.weight_decay, o.nesterov)
                   : kind == OptimizerKind::Adam ? HyperParams::adam(o.lr, o.weight_decay)
                                                 : HyperParams::adamw(o.lr, o.weight_decay);
  Optimizer opt(kind, groups, hp);
  const int64_t steps_per_epoch = train_loader.batches_per_epoch();
  TL_CHECK(steps_per_epoch > 0, ValueError, "the training set is empty");
  LRScheduler sched(opt, make_schedule(o), steps_per_epoch);
  log << "optimizer " << optimizer_kind_name(kind) << ": head lr " << o.lr;
  if (!body.empty()) log << ", body lr " << body_lr;
  log << "; schedule " << sched.schedule().describe() << "\n";

  CrossEntropyOptions ce;
  ce.label_smoothing = o.label_smoothing;
  if (o.balance) {  // n / (C * n_c), as scikit-learn's "balanced"
    std::vector<int64_t> counts(static_cast<size_t>(num_classes), 0);
    for (const io::Sample& s : splits.train.samples) ++counts[static_cast<size_t>(s.label)];
    std::vector<double> w;
    for (int64_t c : counts)
      w.push_back(static_cast<double>(splits.train.samples.size()) / (static_cast<double>(num_classes) * std::max<int64_t>(c, 1)));
    ce.class_weights = Tensor::from_values(w, {num_classes}, DType::F32, dev);
  }

  // Output folder, resume.
  fs::create_directories(o.out);
  TrainResult result;
  result.best_path = (fs::path(o.out) / "best.bin").string();
  result.last_path = (fs::path(o.out) / "last.ckpt").string();
  std::vector<EpochRecord> history;
  int start_epoch = 0, bad_epochs = 0;
  int64_t start_batch = 0;
  if (o.resume) {
    TL_CHECK(fs::exists(result.last_path), IOError, "--resume: no checkpoint ", result.last_path,
             " (run without --resume to start)");
    StateDict sd = load_state_dict(result.last_path);
    const std::string arch = sd.get_string("arch");
    const auto classes = json::parse(sd.get_string("classes")).get<std::vector<std::string>>();
    TL_CHECK(arch == o.arch && classes == splits.classes, ValueError, result.last_path, ": checkpoint of ", arch,
             " with ", classes.size(), " classes, but this run is ", o.arch, " with ", splits.classes.size(),
             " classes: resume with the same --arch and data, or choose another --out");
    StateDict weights = sd.extract("model.");
    io::TensorFile f;
    for (auto& [k, t] : weights.tensors) {
      f.names.push_back(k);
      f.tensors[k] = t;
    }
    models::load_weights(*model, f);
    opt.load_state_dict(sd.extract("optimizer."));
    sched.load_state_dict(sd.extract("scheduler."));
    start_epoch = static_cast<int>(sd.get_int("epoch"));
    start_batch = sd.get_int("batch");
    result.best_val_acc = sd.get_double("best_acc");
    result.best_epoch = static_cast<int>(sd.get_int("best_epoch"));
    bad_epochs = static_cast<int>(sd.get_int("bad_epochs"));
    history = history_from_json(json::parse(sd.get_string("history")));
    log << "resumed " << result.last_path << " at epoch " << start_epoch + 1 << ", batch " << start_batch << "\n";
  }
  auto save_last = [&](int epoch, int64_t batch) {
    StateDict sd;
    for (auto& [name, t] : models::state_dict(*model)) sd.tensors["model." + name] = t;
    sd.insert("optimizer.", opt.state_dict());
    sd.insert("scheduler.", sched.state_dict());
    sd.set_string("arch", o.arch);
    sd.set_string("classes", json(splits.classes).dump());
    sd.set_int("epoch", epoch);
    sd.set_int("batch", batch);
    sd.set_double("best_acc", result.best_val_acc);
    sd.set_int("best_epoch", result.best_epoch);
    sd.set_int("bad_epochs", bad_epochs);
    sd.set_string("history", history_json(history).dump());
    save_state_dict(result.last_path, sd);
  };

  JsonLinesWriter metrics_log((fs::path(o.out) / "metrics.jsonl").string());
  Tape tape;
  TapeScope tape_scope(tape);
  int64_t steps = 0;
  result.epochs_done = start_epoch;
  for (int epoch = start_epoch; epoch < o.epochs; ++epoch) {
    // ---- train ----
    model->train();
    ClassificationMetrics train_m(static_cast<int>(num_classes));
    const int64_t first = epoch == start_epoch ? start_batch : 0;
    train_loader.start_epoch(epoch, first);
    Progress progress("train", epoch + 1, o.epochs, steps_per_epoch, log);
    int64_t batch_index = first;
    while (const io::Batch* b = train_loader.next()) {
      sched.apply(epoch, batch_index);
      Variable logits = model->forward(Variable(batch_input(*b, dev, bf16)));
      Variable loss = cross_entropy(logits, b->labels_to(dev), ce);
      const double loss_value = loss.value().item();
      if (!std::isfinite(loss_value)) {
        tape.clear();
        throw DivergedError(detail::concat(
            "the loss became ", loss_value, " at epoch ", epoch + 1, ", batch ", batch_index + 1,
            "; nothing after the last good checkpoint was saved (", result.last_path,
            "). Try a lower --lr (now ", o.lr, "), or --precision fp32"));
      }
      tape.backward(loss);
      opt.step();
      opt.zero_grad();
      Tensor host = logits.value().to(Device::CPU, DType::F32, Layout::NCHW);
      train_m.add_batch(host.data_as<float>(), b->labels, b->size, loss_value);
      ++batch_index;
      ++steps;
      if (!o.quiet) progress.update(batch_index - first, b->size, train_m.mean_loss(), train_m.top1_accuracy());
      if (stop_requested() || (o.stop_after_steps > 0 && steps >= o.stop_after_steps)) {
        save_last(epoch, batch_index);
        result.interrupted = true;
        log << "\nstopped after epoch " << epoch + 1 << " batch " << batch_index << "; saved " << result.last_path
            << " (continue with --resume)\n";
        return result;
      }
    }
    if (!o.quiet) progress.finish();
    if (!train_loader.skipped().empty()) log << train_loader.skipped_report() << "\n";

    // ---- val ----
    ClassificationMetrics val_m(static_cast<int>(num_classes));
    if (!splits.val.samples.empty()) {
      Progress vp("val", epoch + 1, o.epochs, val_loader.batches_per_epoch(), log);
      evaluate(*model, val_loader, dev, bf16, ce, val_m, o.quiet ? nullptr : &vp);
      if (!val_loader.skipped().empty()) log << val_loader.skipped_report() << "\n";
    }
    const double val_acc = val_m.count() ? val_m.top1_accuracy() : NAN;
    history.push_back({epoch + 1, train_m.mean_loss(), val_m.count() ? val_m.mean_loss() : NAN,
                       train_m.top1_accuracy(), val_acc, opt.lr(0)});
    json line = {{"epoch", epoch + 1}, {"lr", opt.lr(0)}, {"train", train_m.to_json(false)}};
    if (val_m.count()) line["val"] = val_m.to_json(true);
    metrics_log.write(line);
    log << "epoch " << epoch + 1 << "/" << o.epochs << ": train loss " << train_m.mean_loss() << " acc "
        << 100 * train_m.top1_accuracy() << "%";
    if (val_m.count())
      log << ", val loss " << val_m.mean_loss() << " acc " << 100 * val_acc << "% top-" << val_m.top_k() << " "
          << 100 * val_m.top_k_accuracy() << "%";
    log << "\n";
    const bool improved = val_m.count() && (result.best_epoch < 0 || val_acc > result.best_val_acc);
    if (improved) {
      result.best_val_acc = val_acc;
      result.best_epoch = epoch;
      bad_epochs = 0;
      models::save_weights(*model, result.best_path, splits.classes, {{"epoch", std::to_string(epoch + 1)}});
    } else {
      ++bad_epochs;
    }
    result.epochs_done = epoch + 1;
    save_last(epoch + 1, 0);
    write_curves_png((fs::path(o.out) / "curves.png").string(), history);
    if (o.early_stopping > 0 && bad_epochs >= o.early_stopping) {
      log << "early stopping: no better val accuracy for " << bad_epochs << " epochs\n";
      result.early_stopped = true;
      break;
    }
  }

  // Final report with the best weights: per-class accuracy, confusion matrix, prediction grid.
  if (result.best_epoch >= 0) {
    models::load_weights(*model, result.best_path);
    ClassificationMetrics val_m(static_cast<int>(num_classes));
    evaluate(*model, val_loader, dev, bf16, ce, val_m, nullptr);
    log << "best val accuracy " << 100 * result.best_val_acc << "% (epoch " << result.best_epoch + 1 << "), "
        << result.best_path << "\n"
        << val_m.table(splits.classes) << "\n";
    std::vector<GridItem> items;
    const io::Compose vt = val_compose(o.val_transform, o.image_size);
    NoGradGuard no_grad;
    model->eval();
    // Round-robin over the classes, so that every class shows up in the grid.
    std::vector<std::vector<const io::Sample*>> by_class(static_cast<size_t>(num_classes));
    for (const io::Sample& s : splits.val.samples) by_class[static_cast<size_t>(s.label)].push_back(&s);
    std::vector<const io::Sample*> picks;
    for (size_t k = 0; picks.size() < splits.val.samples.size(); ++k)
      for (const auto& list : by_class)
        if (k < list.size()) picks.push_back(list[k]);
    for (size_t i = 0; i < picks.size() && static_cast<int>(items.size()) < o.grid_images; ++i) {
      const io::Sample& s = *picks[i];
      io::Image img;
      try {
        io::Rng rng(o.seed);
        img = vt.apply_image(io::decode_image(s.path), rng);
      } catch (const IOError&) {
        continue;
      }
      Tensor x = Tensor::empty({1, 3, img.height, img.width});
      io::to_tensor_normalize(img, vt.mean(), vt.std(), x.data_as<float>());
      Tensor logits = model->forward(Variable(x.to(dev, bf16 ? DType::BF16 : DType::F32, bf16 ? Layout::NHWC : Layout::NCHW)))
                          .value()
                          .to(Device::CPU, DType::F32, Layout::NCHW);
      std::vector<double> l = logits.to_doubles();
      size_t best = 0;
      double mx = l[0], sum = 0;
      for (size_t c = 0; c < l.size(); ++c)
        if (l[c] > mx) mx = l[best = c];
      for (double v : l) sum += std::exp(v - mx);
      items.push_back({img, splits.classes[best], splits.classes[static_cast<size_t>(s.label)],
                       static_cast<float>(1.0 / sum)});
    }
    if (!items.empty()) write_prediction_grid_png((fs::path(o.out) / "predictions.png").string(), items, 4);
  }
  log << "wrote " << o.out << ": best.bin, last.ckpt, metrics.jsonl, curves.png"
      << (result.best_epoch >= 0 ? ", predictions.png" : "") << "\n";
  return result;
}

double run_eval(const EvalOptions& o, std::ostream& log) {
  const Device dev = pick_device(o.device);
  io::TensorFile file = io::read_safetensors(o.weights);
  auto arch_it = file.metadata.find("arch");
  TL_CHECK(arch_it != file.metadata.end(), IOError, o.weights,
           ": no architecture in the file's metadata (convert it with tools/convert_pth)");
  int64_t num_classes = 0;
  for (const auto& n : file.names)
    if (n == "fc.weight" || n == "classifier.weight" || n == "classifier.6.weight") num_classes = file.at(n).size(0);
  const std::vector<std::string> classes = classes_from_metadata(file, num_classes);
  auto model = models::create_model(arch_it->second, num_classes, 0);
  models::load_weights(*model, file);
  model->to(dev);
  // The folder: <data>/<split> when it exists, else <data> itself as an ImageFolder.
  const std::string dir = fs::is_directory(fs::path(o.data) / o.split) ? (fs::path(o.data) / o.split).string() : o.data;
  io::ImageFolder folder = io::scan_image_folder(dir);
  TL_CHECK(folder.classes == classes, ValueError, dir, ": its classes (", folder.classes.size(),
           ") differ from the ones the weights were trained on (", classes.size(), ")");
  io::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.num_workers = o.workers;
  lo.on_bad_image = io::parse_on_bad_image(o.on_bad_image);
  io::DataLoader loader(folder.samples, val_compose(o.val_transform, o.image_size), lo);
  ClassificationMetrics m(static_cast<int>(num_classes));
  Progress p("eval", 1, 1, loader.batches_per_epoch(), log);
  evaluate(*model, loader, dev, false, CrossEntropyOptions{}, m, &p);
  log << dir << ": " << m.count() << " images, loss " << m.mean_loss() << ", top-1 " << 100 * m.top1_accuracy()
      << "%, top-" << m.top_k() << " " << 100 * m.top_k_accuracy() << "%\n"
      << m.table(classes) << "\n";
  if (!loader.skipped().empty()) log << loader.skipped_report() << "\n";
  if (!o.json.empty()) {
    const std::string s = m.to_json(true).dump(2);
    write_file_atomic(o.json, s.data(), s.size());
  }
  return m.top1_accuracy();
}

}  // namespace tl::train
