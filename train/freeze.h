// Choosing what trains: --freeze none|backbone|until=<block>, --trainable patterns, --freeze-bn; and the plan
// printed at start (how many parameters train, where the backward pass stops).
#pragma once
#include <string>
#include <vector>

#include "models/model.h"

namespace tl::train {

struct FreezeOptions {
  // "none": everything trains; "backbone": only the head trains (feature extraction);
  // "until=<block>": every block up to and including <block> (a name from Model::blocks()) is frozen.
  std::string freeze = "none";
  // Shell-style patterns (fnmatch) of parameter names made trainable after `freeze`, e.g. "layer4.*".
  std::vector<std::string> trainable;
  // Frozen batch norm layers run on their running statistics (inference mode) instead of batch statistics.
  bool freeze_bn = false;
};

struct FreezePlan {
  int64_t trainable_params = 0, total_params = 0;
  size_t trainable_tensors = 0, total_tensors = 0;
  std::string first_trainable;  // parameter name where the backward pass stops ("" when nothing trains)
  std::string summary() const;  // the lines printed at start
  bool freeze_bn = false;
};

// Gradual unfreezing (--unfreeze layer4@3,layer3@6; --freeze-epochs N): blocks that become trainable at the start
// of an epoch, as fastai's fine_tune / ULMFiT's gradual unfreezing. A step is one more --trainable pattern from its
// epoch on ("layer4.*"; "*" for everything), so the plan at any epoch is apply_freeze of the options in force then.
struct UnfreezeStep {
  std::string block;  // a name of Model::blocks(), or "*": everything (--freeze-epochs)
  int epoch = 0;      // 1-based, as printed ("epoch 3/25"): trainable from the start of this epoch
};
struct UnfreezeSchedule {
  std::vector<UnfreezeStep> steps;  // by epoch
  bool empty() const { return steps.empty(); }
  // The freeze options in force during 0-based `epoch`: `initial` plus the patterns of the steps reached by then.
  FreezeOptions at(const FreezeOptions& initial, int epoch) const;
  // How many steps are reached by 0-based `epoch` (a change of this count is an unfreeze).
  size_t reached(int epoch) const;
  // The blocks that unfreeze at the start of 0-based `epoch` ("everything" for "*").
  std::vector<std::string> unfreezing_at(int epoch) const;
  std::string describe() const;  // "epoch 3: layer4; epoch 6: layer3"
};
// Parses --unfreeze entries "<block>@<epoch>" (blocks of `model`, epochs 2..num_epochs) and --freeze-epochs N
// (everything unfreezes at epoch N + 1). Throws ValueError naming the entry, the model's blocks or the run's
// epoch count.
UnfreezeSchedule parse_unfreeze(const std::vector<std::string>& entries, int freeze_epochs, const models::Model& model,
                                int num_epochs);

// Sets each parameter's trainable flag (and frozen batch norms' mode) and returns the plan. Throws ValueError for
// an unknown block or a plan in which nothing trains.
FreezePlan apply_freeze(models::Model& model, const FreezeOptions& options);

}  // namespace tl::train
