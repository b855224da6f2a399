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

// Sets each parameter's trainable flag (and frozen batch norms' mode) and returns the plan. Throws ValueError for
// an unknown block or a plan in which nothing trains.
FreezePlan apply_freeze(models::Model& model, const FreezeOptions& options);

}  // namespace tl::train
