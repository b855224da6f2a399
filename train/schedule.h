// Learning-rate schedules: constant, StepLR, MultiStepLR and cosine annealing with an optional linear warmup,
// and an LRScheduler that applies one to every group of an Optimizer from each group's base lr.
//
// Which PyTorch values are matched: torch.optim.lr_scheduler 1.13 computes lrs in its *chainable* form (each
// scheduler.step() multiplies or updates the optimizer's current lr), not the closed form it uses only for the
// deprecated step(epoch). The two differ in the last bits (0.1 * 0.1 * 0.1 != 0.1 * 0.1^3). lr_at() replays the
// chainable recurrence from the base lr up to the requested epoch, so its values are bit-identical to what a
// PyTorch StepLR / MultiStepLR / CosineAnnealingLR sets after `epoch` calls of scheduler.step() — and they depend
// only on (base lr, epoch), which makes resuming exact: the state is the base lrs and the epoch.
//
// Cosine with warmup (no single PyTorch class; documented here): with W = warmup_epochs and S steps per epoch,
// during the first W epochs the lr rises linearly per step: lr = base * (s + 1) / (W * S) at global step
// s = epoch * S + step, reaching base on the last warmup step. From epoch W on it is PyTorch's CosineAnnealingLR
// (T_max = t_max, eta_min = min_lr) at epoch (epoch - W). With W = 0 it is exactly CosineAnnealingLR.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/optimizer.h"
#include "train/state_dict.h"

namespace tl::train {

struct LRSchedule {
  enum class Kind { Constant, Step, MultiStep, Cosine };
  Kind kind = Kind::Constant;
  // Step: lr *= gamma every step_size epochs. MultiStep: lr *= gamma at each milestone (a milestone listed k
  // times multiplies by gamma^k, as PyTorch's Counter does).
  int64_t step_size = 1;
  std::vector<int64_t> milestones;
  double gamma = 0.1;
  // Cosine: t_max epochs of annealing after the warmup, down to min_lr (PyTorch's T_max, eta_min).
  int64_t t_max = 1;
  double min_lr = 0.0;
  int64_t warmup_epochs = 0;

  static LRSchedule constant();
  static LRSchedule step(int64_t step_size, double gamma = 0.1);
  static LRSchedule multi_step(std::vector<int64_t> milestones, double gamma = 0.1);
  static LRSchedule cosine(int64_t t_max, double min_lr = 0.0, int64_t warmup_epochs = 0);

  // Throws ValueError for step_size < 1, gamma <= 0, a negative milestone, t_max < 1, min_lr < 0, warmup < 0.
  void validate() const;
  // The lr for a group with base lr `base_lr` at `epoch` (0-based), step `step` of `steps_per_epoch` (the step
  // only matters during warmup). Throws ValueError for epoch < 0, steps_per_epoch < 1 or step out of range.
  double lr_at(double base_lr, int64_t epoch, int64_t step = 0, int64_t steps_per_epoch = 1) const;
  // True when the lr can change within an epoch (a cosine schedule with warmup).
  bool per_step() const { return kind == Kind::Cosine && warmup_epochs > 0; }
  // Where the lr jumps (StepLR's periods, MultiStepLR's milestones): the 1-based numbers of the first epochs at a
  // new lr, within 2..num_epochs, ascending, for the "lr change" lines of curves.png. Cosine (with or without
  // warmup) changes smoothly and constant not at all: none; a gamma of 1 changes nothing: none.
  std::vector<int> step_epochs(int64_t num_epochs) const;
  std::string describe() const;  // e.g. "StepLR(step_size=7, gamma=0.1)"

  void save(StateDict& sd, const std::string& prefix) const;
  static LRSchedule load(const StateDict& sd, const std::string& prefix);
};

// Applies a schedule to an optimizer. The base lrs are the groups' lrs when the scheduler is made (PyTorch's
// initial_lr); apply(epoch, step) sets every group's lr for that point. Call it before each optimizer step
// (or once per epoch when !schedule().per_step()). The optimizer must outlive the scheduler.
class LRScheduler {
 public:
  LRScheduler(Optimizer& optimizer, LRSchedule schedule, int64_t steps_per_epoch = 1);

  void apply(int64_t epoch, int64_t step = 0);
  int64_t epoch() const { return epoch_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  const LRSchedule& schedule() const { return schedule_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  std::vector<double> last_lrs() const;  // the lrs set by the last apply (the base lrs before any)

  // Keys: schedule fields ("schedule.kind", ...), "steps_per_epoch", "epoch", "step", "num_groups",
  // "base_lr.<g>". load_state_dict checks that the schedule and group count match this run's (ValueError
  // otherwise), restores the base lrs and re-applies the saved (epoch, step).
  StateDict state_dict() const;
  void load_state_dict(const StateDict& sd);

 private:
  Optimizer* optimizer_;
  LRSchedule schedule_;
  int64_t steps_per_epoch_;
  std::vector<double> base_lrs_;
  int64_t epoch_ = 0, step_ = 0;
};

}  // namespace tl::train
