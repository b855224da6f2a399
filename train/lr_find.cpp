// The learning-rate finder (see lr_find.h). run_lr_find reads top to bottom: the job set up as `train` does it
// (run_setup.h), the search (per step: set the lr, forward, loss, backward, update, record, decide whether to
// stop), the suggestions, then the outputs (lr_find.json, lr_find.png, the summary).
#include "train/lr_find.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <ostream>
#include <sstream>

#include "core/device.h"
#include "core/error.h"
#include "io/files.h"
#include "layers/elementwise.h"
#include "train/plot.h"
#include "train/report.h"
#include "train/run_setup.h"

namespace tl::train {
namespace fs = std::filesystem;
using nlohmann::json;

double lr_find_rate(double start_lr, double end_lr, int64_t step, int64_t num_it) {
  return start_lr * std::pow(end_lr / start_lr, static_cast<double>(step) / static_cast<double>(num_it));
}

double SmoothedLoss::add(double loss) {
  avg_ = beta_ * avg_ + (1 - beta_) * loss;
  beta_pow_ *= beta_;
  return avg_ / (1 - beta_pow_);
}

LrSuggestions suggest_lrs(const std::vector<double>& lrs, const std::vector<double>& smoothed, int64_t num_it) {
  LrSuggestions s;
  const int64_t first = num_it / 10, end = static_cast<int64_t>(std::min(lrs.size(), smoothed.size())) - 5;
  if (end - first < 2) return s;
  auto at = [](const std::vector<double>& v, int64_t i) { return v[static_cast<size_t>(i)]; };
  int64_t steep = first, low = first;
  double steepest = std::numeric_limits<double>::infinity();
  for (int64_t i = first; i < end; ++i) {
    if (at(smoothed, i) < at(smoothed, low)) low = i;
    if (i + 1 == end) break;
    const double grad = (at(smoothed, i + 1) - at(smoothed, i)) / (std::log(at(lrs, i + 1)) - std::log(at(lrs, i)));
    if (grad < steepest) steepest = grad, steep = i;
  }
  s.steep = at(lrs, steep);
  s.steep_index = steep;
  s.minimum = at(lrs, low) / 10;
  s.min_index = low;
  return s;
}

json LrFindResult::to_json(const LrFindOptions& o) const {
  return {{"arch", o.train.arch},
          {"data", o.train.data},
          {"weights", o.train.weights},
          {"freeze", o.train.freeze.freeze},
          {"optimizer", o.train.optimizer},
          {"start_lr", o.start_lr},
          {"end_lr", o.end_lr},
          {"num_it", o.num_it},
          {"stop_div", o.stop_div},
          {"steps", lrs.size()},
          {"stopped", stopped},
          {"suggestions",
           {{"steep", suggestions.steep},
            {"minimum", suggestions.minimum},
            {"steep_index", suggestions.steep_index},
            {"min_index", suggestions.min_index}}},
          {"lrs", lrs},
          {"losses", losses},
          {"smoothed", smoothed}};
}

namespace {

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", v);
  return buf;
}

std::string plain(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// ---- the search ----

// What the search works on: the job as `train` sets it up.
struct Search {
  const LrFindOptions& o;
  Device dev;
  Precision prec;
  TrainData& data;
  models::Model& model;
  Optimizer& opt;
  const CrossEntropyOptions& ce;
  Tape& tape;
  std::vector<double> group_mult;  // each group's lr / the head's (the body's: --backbone-lr-mult)

  void set_lr(double lr) {
    for (size_t g = 0; g < opt.num_groups(); ++g) opt.set_lr(g, lr * group_mult[g]);
  }

  // One training step; returns the batch's loss before the update. A NaN or infinite loss updates nothing.
  double step(const io::Batch& b) {
    Variable logits = model.forward(Variable(model_input(b.images_to(dev), dev, prec)));
    const Tensor labels = b.labels_to(dev);
    Variable loss = cross_entropy(logits, labels, ce);
    for (const models::Model::AuxLogits& a : model.take_aux_logits())  // Inception v3, GoogLeNet in training
      loss = add(loss, cross_entropy(a.logits, labels, ce), a.weight);
    const double value = loss.value().item();
    if (!std::isfinite(value)) {
      tape.clear();
      return value;
    }
    tape.backward(loss);
    opt.step();
    opt.zero_grad();
    return value;
  }

  // Why to stop after the step just recorded ("" to go on); fastai's order: divergence, then the step count.
  std::string stop_reason(const LrFindResult& r, double best) const {
    if (o.stop_div && r.smoothed.back() > 4 * best) return "diverged";
    if (static_cast<int64_t>(r.lrs.size()) >= o.num_it) return "num_it";
    if (stop_requested()) return "interrupted";
    return "";
  }

  // Steps through the training set, epoch after epoch, until a stop reason.
  LrFindResult run(std::ostream& log) {
    model.train();
    LrFindResult r;
    SmoothedLoss smooth;
    double best = std::numeric_limits<double>::infinity();
    Progress progress("lr-find", 1, 1, o.num_it, log);
    for (int epoch = 0; r.stopped.empty(); ++epoch) {
      const size_t before = r.lrs.size();
      data.train->start_epoch(epoch);
      while (const io::Batch* b = data.train->next()) {
        const double lr = lr_find_rate(o.start_lr, o.end_lr, static_cast<int64_t>(r.lrs.size()), o.num_it);
        set_lr(lr);
        const double loss = step(*b);
        if (!std::isfinite(loss)) {
          r.stopped = "nonfinite";
          break;
        }
        r.lrs.push_back(lr);
        r.losses.push_back(loss);
        r.smoothed.push_back(smooth.add(loss));
        best = std::min(best, r.smoothed.back());
        if (!o.train.quiet) progress.update(static_cast<int64_t>(r.lrs.size()), b->size, r.smoothed.back(), NAN);
        r.stopped = stop_reason(r, best);
        if (!r.stopped.empty()) break;
      }
      TL_CHECK(r.lrs.size() > before || !r.stopped.empty(), ValueError,
               "lr-find: an epoch of the training set gave no batch (every image skipped?): check --data");
    }
    if (!o.train.quiet) progress.finish();
    return r;
  }
};

// ---- the outputs ----

// A shell word: as is when it is plain, else single-quoted.
std::string shell_word(const std::string& s) {
  const bool simple = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string("_./=,:+-").find(c) != std::string::npos;
  });
  if (simple) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// `tlengine train` with the job's options that differ from train's defaults, and the given lr.
std::string train_command(const TrainOptions& t, double lr) {
  const TrainOptions d;
  std::string c = "tlengine train --data " + shell_word(t.data) + " --arch " + shell_word(t.arch);
  auto opt = [&c](const std::string& name, const std::string& v) { c += " " + name + " " + shell_word(v); };
  if (t.val_split != d.val_split) opt("--val-split", plain(t.val_split));
  if (!t.weights.empty()) opt("--weights", t.weights);
  if (t.freeze.freeze != d.freeze.freeze) opt("--freeze", t.freeze.freeze);
  if (!t.freeze.trainable.empty()) {
    std::string list;
    for (const std::string& p : t.freeze.trainable) list += (list.empty() ? "" : ",") + p;
    opt("--trainable", list);
  }
  if (t.freeze.freeze_bn) c += " --freeze-bn";
  if (t.optimizer != d.optimizer) opt("--optimizer", t.optimizer);
  if (t.batch_size != d.batch_size) opt("--batch-size", std::to_string(t.batch_size));
  if (t.image_size != d.image_size) opt("--image-size", std::to_string(t.image_size));
  if (t.backbone_lr_mult != d.backbone_lr_mult) opt("--backbone-lr-mult", plain(t.backbone_lr_mult));
  if (!t.augment) c += " --no-augment";
  return c + " --lr " + sci(lr);
}

void write_summary(const LrFindOptions& o, const LrFindResult& r, std::ostream& log) {
  const size_t n = r.lrs.size();
  const std::string why = r.stopped == "diverged"    ? "the smoothed loss passed 4x its minimum"
                          : r.stopped == "nonfinite" ? "the loss became NaN or infinite"
                          : r.stopped == "interrupted" ? "interrupted"
                                                       : "all " + std::to_string(o.num_it) + " steps run";
  log << "lr-find: " << n << " steps, lr " << (n ? sci(r.lrs.front()) : "-") << " to " << (n ? sci(r.lrs.back()) : "-")
      << " (" << why << ")\n";
  char line[96];
  std::snprintf(line, sizeof line, "%10s %10s %10s\n", "lr", "loss", "smoothed");
  log << line;
  const size_t every = std::max<size_t>(1, static_cast<size_t>(o.num_it) / 10);
  for (size_t i = 0; i < n; ++i) {
    if (i % every != 0 && i + 1 != n) continue;
    std::snprintf(line, sizeof line, "%10.1e %10.4f %10.4f\n", r.lrs[i], r.losses[i], r.smoothed[i]);
    log << line;
  }
  log << "wrote " << o.train.out << ": lr_find.png, lr_find.json\n";
  const LrSuggestions& s = r.suggestions;
  if (s.steep_index < 0) {
    log << "no suggestion: " << n << " steps are too few (the first num_it/10 and the last 5 are left out); lower "
        << "--start-lr, raise --num-it, or use --no-stop-div\n";
    return;
  }
  log << "suggested lr: " << sci(s.steep) << " (steepest), " << sci(s.minimum) << " (minimum/10)\n";
  log << "to train with it: " << train_command(o.train, s.minimum) << "\n";
}

}  // namespace

io::Image render_lr_find(const LrFindResult& r) {
  Canvas cv(1200, 600, kWhite);
  std::vector<double> xs;
  for (double lr : r.lrs) xs.push_back(std::log10(lr));
  std::vector<double> axis_lrs = r.lrs;  // the suggestions too: min/10 may lie before the first step
  for (double lr : {r.suggestions.steep, r.suggestions.minimum})
    if (std::isfinite(lr)) axis_lrs.push_back(lr);
  Axis xa = log10_axis(axis_lrs);
  xa.title = "learning rate (log scale)";
  // The y axis fits the smoothed curve; raw losses far above it (the divergence) are left off the chart.
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : r.smoothed) lo = std::min(lo, v), hi = std::max(hi, v);
  const double cap = hi + 0.5 * (hi - lo);
  Series raw{"raw", {174, 199, 232}, {}, false}, smoothed{"smoothed", kPalette[0], r.smoothed, false};
  std::vector<double> values = r.smoothed;
  for (double v : r.losses) {
    raw.y.push_back(v <= cap ? v : NAN);
    values.push_back(raw.y.back());
  }
  // A suggestion: a dashed line at its lr, and a disc on the smoothed curve at the point nearest it, named in the
  // legend with its value.
  auto mark = [&](const std::string& name, Color c, double lr) {
    Series s{name + " " + sci(lr), c, std::vector<double>(xs.size(), NAN), true};
    size_t best = 0;
    for (size_t i = 1; i < xs.size(); ++i)
      if (std::abs(xs[i] - std::log10(lr)) < std::abs(xs[best] - std::log10(lr))) best = i;
    const double spacing = xs.size() > 1 ? std::abs(xs[1] - xs[0]) : 0;
    if (std::abs(xs[best] - std::log10(lr)) <= spacing) s.y[best] = r.smoothed[best];
    return s;
  };
  const LrSuggestions& sg = r.suggestions;
  std::vector<Series> series{raw, smoothed};
  VerticalLines lines{"suggested", {150, 150, 150}, {}};
  if (sg.steep_index >= 0 && !xs.empty()) {  // none when the search was too short
    series.push_back(mark("steepest", kPalette[3], sg.steep));
    series.push_back(mark("min/10", kPalette[2], sg.minimum));
    lines.xs = {std::log10(sg.steep), std::log10(sg.minimum)};
  }
  draw_panel(cv, {0, 0, 1200, 600}, "Learning-rate finder", xs, series, xa,
             value_axis(values, 0, std::numeric_limits<double>::infinity(), 1), {lines});
  return std::move(cv.image());
}

LrFindResult run_lr_find(const LrFindOptions& o, std::ostream& log) {
  TL_CHECK(o.start_lr > 0 && o.end_lr > o.start_lr, ValueError, "lr-find: need 0 < --start-lr < --end-lr, got ",
           o.start_lr, " and ", o.end_lr);
  TL_CHECK(o.num_it >= 2, ValueError, "lr-find: --num-it must be at least 2, got ", o.num_it);
  TL_CHECK(o.train.batch_size >= 1, ValueError, "--batch-size must be >= 1");
  const TrainOptions& t = o.train;
  const Device dev = parse_device(t.device);
  const Precision prec = parse_precision(t.precision, dev, t.memory_format);
  io::ensure_writable_folder(t.out, "--out");

  // The job as `train` sets it up; the optimizer's groups start at start_lr (the body at its multiple).
  TrainData data = build_data(t, log);
  FreezePlan plan;
  auto model = build_model(t, data.num_classes(), dev, prec, plan, log);
  TrainOptions start = t;
  start.lr = o.start_lr;
  start.backbone_lr = -1;
  auto opt = build_optimizer(start, *model, log);
  const CrossEntropyOptions ce = build_loss(t, data, dev, prec);

  Tape tape;
  TapeScope tape_scope(tape);
  Search search{o, dev, prec, data, *model, *opt, ce, tape, {}};
  for (size_t g = 0; g < opt->num_groups(); ++g) search.group_mult.push_back(opt->lr(g) / o.start_lr);
  LrFindResult r = search.run(log);
  r.suggestions = suggest_lrs(r.lrs, r.smoothed, o.num_it);

  fs::create_directories(t.out);
  const std::string text = r.to_json(o).dump(2) + "\n";
  write_file_atomic((fs::path(t.out) / "lr_find.json").string(), text.data(), text.size());
  write_png_atomic((fs::path(t.out) / "lr_find.png").string(), render_lr_find(r));
  write_summary(o, r, log);
  return r;
}

}  // namespace tl::train
