// Learning-rate schedules replaying PyTorch's chainable recurrences, and the LRScheduler (see schedule.h).
#include "train/schedule.h"

#include <cmath>
#include <map>
#include <set>
#include <sstream>

namespace tl::train {
namespace {
constexpr double kPi = 3.141592653589793;  // math.pi

const char* kind_name(LRSchedule::Kind k) {
  switch (k) {
    case LRSchedule::Kind::Constant: return "constant";
    case LRSchedule::Kind::Step: return "step";
    case LRSchedule::Kind::MultiStep: return "multistep";
    case LRSchedule::Kind::Cosine: return "cosine";
  }
  return "?";
}
int64_t python_mod(int64_t a, int64_t b) {
  const int64_t r = a % b;
  return r < 0 ? r + b : r;
}

// torch.optim.lr_scheduler.CosineAnnealingLR.get_lr, replayed for epochs 1..epoch from lr = base.
double cosine_chain(double base, int64_t epoch, int64_t t_max, double eta_min) {
  double lr = base;
  const double T = static_cast<double>(t_max);
  for (int64_t e = 1; e <= epoch; ++e) {
    if (python_mod(e - 1 - t_max, 2 * t_max) == 0) {
      lr = lr + (base - eta_min) * (1 - std::cos(kPi / T)) / 2;
    } else {
      lr = (1 + std::cos(kPi * static_cast<double>(e) / T)) / (1 + std::cos(kPi * static_cast<double>(e - 1) / T)) *
               (lr - eta_min) +
           eta_min;
    }
  }
  return lr;
}
}  // namespace

LRSchedule LRSchedule::constant() { return LRSchedule{}; }
LRSchedule LRSchedule::step(int64_t step_size, double gamma) {
  LRSchedule s;
  s.kind = Kind::Step;
  s.step_size = step_size;
  s.gamma = gamma;
  s.validate();
  return s;
}
LRSchedule LRSchedule::multi_step(std::vector<int64_t> milestones, double gamma) {
  LRSchedule s;
  s.kind = Kind::MultiStep;
  s.milestones = std::move(milestones);
  s.gamma = gamma;
  s.validate();
  return s;
}
LRSchedule LRSchedule::cosine(int64_t t_max, double min_lr, int64_t warmup_epochs) {
  LRSchedule s;
  s.kind = Kind::Cosine;
  s.t_max = t_max;
  s.min_lr = min_lr;
  s.warmup_epochs = warmup_epochs;
  s.validate();
  return s;
}

void LRSchedule::validate() const {
  switch (kind) {
    case Kind::Constant: break;
    case Kind::Step:
      TL_CHECK(step_size >= 1, ValueError, "StepLR: step_size must be >= 1 epoch, got ", step_size);
      TL_CHECK(gamma > 0.0, ValueError, "StepLR: gamma must be > 0, got ", gamma);
      break;
    case Kind::MultiStep:
      for (int64_t m : milestones) TL_CHECK(m >= 0, ValueError, "MultiStepLR: milestone ", m, " is negative");
      TL_CHECK(gamma > 0.0, ValueError, "MultiStepLR: gamma must be > 0, got ", gamma);
      break;
    case Kind::Cosine:
      TL_CHECK(t_max >= 1, ValueError, "cosine schedule: t_max must be >= 1 epoch, got ", t_max);
      TL_CHECK(min_lr >= 0.0, ValueError, "cosine schedule: min_lr must be >= 0, got ", min_lr);
      TL_CHECK(warmup_epochs >= 0, ValueError, "cosine schedule: warmup_epochs must be >= 0, got ", warmup_epochs);
      break;
  }
}

double LRSchedule::lr_at(double base_lr, int64_t epoch, int64_t step, int64_t steps_per_epoch) const {
  TL_CHECK(epoch >= 0, ValueError, describe(), ": epoch ", epoch, " is negative");
  TL_CHECK(steps_per_epoch >= 1, ValueError, describe(), ": steps_per_epoch must be >= 1, got ", steps_per_epoch);
  TL_CHECK(step >= 0 && step < steps_per_epoch, ValueError, describe(), ": step ", step, " is outside [0, ",
           steps_per_epoch, ")");
  double lr = base_lr;
  switch (kind) {
    case Kind::Constant: break;
    case Kind::Step:  // if last_epoch == 0 or last_epoch % step_size != 0: lr, else lr * gamma
      for (int64_t e = 1; e <= epoch; ++e)
        if (e % step_size == 0) lr = lr * gamma;
      break;
    case Kind::MultiStep: {  // if last_epoch in milestones: lr * gamma ** count (epoch 0 included)
      std::map<int64_t, int64_t> count;
      for (int64_t m : milestones) ++count[m];
      for (const auto& [m, k] : count) {
        if (m > epoch) break;
        lr = lr * std::pow(gamma, static_cast<double>(k));
      }
      break;
    }
    case Kind::Cosine:
      if (epoch < warmup_epochs) {
        const int64_t s = epoch * steps_per_epoch + step;
        lr = base_lr * static_cast<double>(s + 1) / static_cast<double>(warmup_epochs * steps_per_epoch);
      } else {
        lr = cosine_chain(base_lr, epoch - warmup_epochs, t_max, min_lr);
      }
      break;
  }
  return lr;
}

std::vector<int> LRSchedule::step_epochs(int64_t num_epochs) const {
  std::set<int64_t> zero_based;  // the epochs that start at a new lr
  if (gamma != 1.0 && kind == Kind::Step)
    for (int64_t e = step_size; e < num_epochs; e += step_size) zero_based.insert(e);
  if (gamma != 1.0 && kind == Kind::MultiStep)
    for (int64_t m : milestones)
      if (m >= 1 && m < num_epochs) zero_based.insert(m);  // a milestone 0 applies from the start
  std::vector<int> epochs;
  for (int64_t e : zero_based) epochs.push_back(static_cast<int>(e + 1));
  return epochs;
}

std::string LRSchedule::describe() const {
  std::ostringstream os;
  switch (kind) {
    case Kind::Constant: os << "ConstantLR()"; break;
    case Kind::Step: os << "StepLR(step_size=" << step_size << ", gamma=" << gamma << ")"; break;
    case Kind::MultiStep: {
      os << "MultiStepLR(milestones=[";
      for (size_t i = 0; i < milestones.size(); ++i) os << (i ? ", " : "") << milestones[i];
      os << "], gamma=" << gamma << ")";
      break;
    }
    case Kind::Cosine:
      os << "CosineAnnealingLR(t_max=" << t_max << ", min_lr=" << min_lr << ", warmup_epochs=" << warmup_epochs
         << ")";
      break;
  }
  return os.str();
}

void LRSchedule::save(StateDict& sd, const std::string& p) const {
  sd.set_string(p + "kind", kind_name(kind));
  sd.set_int(p + "step_size", step_size);
  sd.set_double(p + "gamma", gamma);
  std::string ms;
  for (size_t i = 0; i < milestones.size(); ++i) ms += (i ? "," : "") + std::to_string(milestones[i]);
  sd.set_string(p + "milestones", ms);
  sd.set_int(p + "t_max", t_max);
  sd.set_double(p + "min_lr", min_lr);
  sd.set_int(p + "warmup_epochs", warmup_epochs);
}

LRSchedule LRSchedule::load(const StateDict& sd, const std::string& p) {
  LRSchedule s;
  const std::string& kind = sd.get_string(p + "kind");
  bool known = false;
  for (Kind k : {Kind::Constant, Kind::Step, Kind::MultiStep, Kind::Cosine})
    if (kind == kind_name(k)) s.kind = k, known = true;
  TL_CHECK(known, ValueError, "state dict value '", p, "kind' = '", kind, "' is not a known schedule");
  s.step_size = sd.get_int(p + "step_size");
  s.gamma = sd.get_double(p + "gamma");
  std::stringstream ms(sd.get_string(p + "milestones"));
  for (std::string item; std::getline(ms, item, ',');) {
    StateDict one;
    one.set_string("m", item);
    s.milestones.push_back(one.get_int("m"));
  }
  s.t_max = sd.get_int(p + "t_max");
  s.min_lr = sd.get_double(p + "min_lr");
  s.warmup_epochs = sd.get_int(p + "warmup_epochs");
  s.validate();
  return s;
}

// ---------------------------------------------------------------------------------------------------------------

LRScheduler::LRScheduler(Optimizer& optimizer, LRSchedule schedule, int64_t steps_per_epoch)
    : optimizer_(&optimizer), schedule_(std::move(schedule)), steps_per_epoch_(steps_per_epoch) {
  schedule_.validate();
  TL_CHECK(steps_per_epoch >= 1, ValueError, schedule_.describe(), ": steps_per_epoch must be >= 1, got ",
           steps_per_epoch);
  for (size_t g = 0; g < optimizer.num_groups(); ++g) base_lrs_.push_back(optimizer.lr(g));
}

void LRScheduler::apply(int64_t epoch, int64_t step) {
  std::vector<double> lrs;
  for (double base : base_lrs_) lrs.push_back(schedule_.lr_at(base, epoch, step, steps_per_epoch_));
  for (size_t g = 0; g < lrs.size(); ++g) optimizer_->set_lr(g, lrs[g]);
  epoch_ = epoch;
  step_ = step;
}

std::vector<double> LRScheduler::last_lrs() const {
  std::vector<double> lrs;
  for (size_t g = 0; g < base_lrs_.size(); ++g) lrs.push_back(optimizer_->lr(g));
  return lrs;
}

StateDict LRScheduler::state_dict() const {
  StateDict sd;
  schedule_.save(sd, "schedule.");
  sd.set_int("steps_per_epoch", steps_per_epoch_);
  sd.set_int("epoch", epoch_);
  sd.set_int("step", step_);
  sd.set_int("num_groups", static_cast<int64_t>(base_lrs_.size()));
  for (size_t g = 0; g < base_lrs_.size(); ++g) sd.set_double("base_lr." + std::to_string(g), base_lrs_[g]);
  return sd;
}

void LRScheduler::load_state_dict(const StateDict& sd) {
  const LRSchedule saved = LRSchedule::load(sd, "schedule.");
  const bool same = saved.kind == schedule_.kind && saved.step_size == schedule_.step_size &&
                    saved.gamma == schedule_.gamma && saved.milestones == schedule_.milestones &&
                    saved.t_max == schedule_.t_max && saved.min_lr == schedule_.min_lr &&
                    saved.warmup_epochs == schedule_.warmup_epochs;
  TL_CHECK(same, ValueError, "loading scheduler state: the checkpoint used ",
           saved.describe(), " but this run asks for ", schedule_.describe(),
           "; resume with the same schedule options or start without resuming");
  const int64_t spe = sd.get_int("steps_per_epoch");
  TL_CHECK(!schedule_.per_step() || spe == steps_per_epoch_, ValueError,
           "loading scheduler state: the checkpoint had ", spe, " steps per epoch, this run has ", steps_per_epoch_,
           " (batch size or data set changed); the warmup would not continue exactly");
  const int64_t n = sd.get_int("num_groups");
  TL_CHECK(n == static_cast<int64_t>(base_lrs_.size()), ValueError, "loading scheduler state: the checkpoint has ",
           n, " parameter groups, this run has ", base_lrs_.size());
  std::vector<double> base;
  for (int64_t g = 0; g < n; ++g) base.push_back(sd.get_double("base_lr." + std::to_string(g)));
  const int64_t epoch = sd.get_int("epoch"), step = sd.get_int("step");
  TL_CHECK(epoch >= 0 && step >= 0 && step < steps_per_epoch_, ValueError,
           "loading scheduler state: bad epoch/step ", epoch, "/", step);
  base_lrs_ = std::move(base);
  apply(epoch, step);
}

}  // namespace tl::train
