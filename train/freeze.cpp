// Freeze plans (see freeze.h).
#include "train/freeze.h"

#include <fnmatch.h>

#include <algorithm>
#include <sstream>

namespace tl::train {
namespace {
bool under(const std::string& name, const std::string& prefix) {
  return name == prefix || name.rfind(prefix + ".", 0) == 0;
}
std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}
}  // namespace

std::string FreezePlan::summary() const {
  std::ostringstream os;
  os << "training " << with_commas(trainable_params) << " of " << with_commas(total_params) << " parameters ("
     << trainable_tensors << " of " << total_tensors << " tensors)";
  if (trainable_tensors < total_tensors) {
    os << "\nbackward stops at " << first_trainable
       << ": the layers before it record no tape, keep no activations and compute no gradients";
    os << "\nfrozen batch norm uses " << (freeze_bn ? "running statistics (--freeze-bn)"
                                                    : "batch statistics and updates its running statistics "
                                                      "(PyTorch's train() semantics; --freeze-bn to change)");
  }
  return os.str();
}

FreezePlan apply_freeze(models::Model& model, const FreezeOptions& o) {
  const std::vector<std::string> blocks = model.blocks();
  std::vector<std::string> frozen_prefixes;
  if (o.freeze == "none") {
  } else if (o.freeze == "backbone") {
    for (const std::string& b : blocks)
      if (!model.in_head(b)) frozen_prefixes.push_back(b);  // a block holding a head: the head trains below
  } else if (o.freeze.rfind("until=", 0) == 0) {
    const std::string last = o.freeze.substr(6);
    bool found = false;
    for (const std::string& b : blocks) {
      frozen_prefixes.push_back(b);
      if (b == last) {
        found = true;
        break;
      }
    }
    if (!found) {
      std::string list;
      for (const std::string& b : blocks) list += (list.empty() ? "" : ", ") + b;
      throw ValueError("--freeze until=" + last + ": no block '" + last + "' in " + model.arch() + "; blocks: " + list);
    }
  } else {
    throw ValueError("--freeze must be none, backbone or until=<block>, got '" + o.freeze + "'");
  }
  FreezePlan plan;
  plan.freeze_bn = o.freeze_bn;
  std::vector<int> matched(o.trainable.size(), 0);
  for (auto& [name, p] : model.named_parameters()) {
    bool trainable = true;
    for (const std::string& f : frozen_prefixes)
      if (under(name, f)) trainable = false;
    if (o.freeze == "backbone" && model.in_head(name)) trainable = true;  // e.g. Inception's AuxLogits.fc
    for (size_t i = 0; i < o.trainable.size(); ++i) {
      if (fnmatch(o.trainable[i].c_str(), name.c_str(), 0) == 0) {
        trainable = true;
        ++matched[i];
      }
    }
    p.set_trainable(trainable);
    plan.total_params += p.value().numel();
    ++plan.total_tensors;
    if (trainable) {
      plan.trainable_params += p.value().numel();
      ++plan.trainable_tensors;
      if (plan.first_trainable.empty()) plan.first_trainable = name;
    }
  }
  for (size_t i = 0; i < o.trainable.size(); ++i)
    TL_CHECK(matched[i] > 0, ValueError, "--trainable '", o.trainable[i], "' matches no parameter of ", model.arch(),
             " (names look like '", model.named_parameters().front().first, "')");
  TL_CHECK(plan.trainable_tensors > 0, ValueError, "nothing trains with --freeze ", o.freeze,
           ": leave at least the head (", model.head_name(), ") trainable");
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) bn->frozen_uses_running_stats = o.freeze_bn;
  return plan;
}

FreezeOptions UnfreezeSchedule::at(const FreezeOptions& initial, int epoch) const {
  FreezeOptions o = initial;
  for (size_t i = 0; i < reached(epoch); ++i) o.trainable.push_back(steps[i].block == "*" ? "*" : steps[i].block + ".*");
  return o;
}

size_t UnfreezeSchedule::reached(int epoch) const {
  size_t n = 0;
  while (n < steps.size() && steps[n].epoch - 1 <= epoch) ++n;
  return n;
}

std::vector<std::string> UnfreezeSchedule::unfreezing_at(int epoch) const {
  std::vector<std::string> out;
  for (const UnfreezeStep& s : steps)
    if (s.epoch - 1 == epoch) out.push_back(s.block == "*" ? "everything" : s.block);
  return out;
}

std::string UnfreezeSchedule::describe() const {
  std::ostringstream os;
  for (size_t i = 0; i < steps.size(); ++i)
    os << (i ? "; " : "") << "epoch " << steps[i].epoch << ": " << (steps[i].block == "*" ? "everything" : steps[i].block);
  return os.str();
}

UnfreezeSchedule parse_unfreeze(const std::vector<std::string>& entries, int freeze_epochs, const models::Model& model,
                                int num_epochs) {
  UnfreezeSchedule s;
  const std::vector<std::string> blocks = model.blocks();
  auto check_epoch = [&](int epoch, const std::string& what) {
    TL_CHECK(epoch >= 2 && epoch <= num_epochs, ValueError, what, ": the epoch must be between 2 (the first epoch ",
             "trains with the initial --freeze) and --epochs (", num_epochs, "), got ", epoch);
  };
  for (const std::string& e : entries) {
    const size_t at = e.rfind('@');
    TL_CHECK(at != std::string::npos && at > 0 && at + 1 < e.size(), ValueError, "--unfreeze '", e,
             "': expected <block>@<epoch>, e.g. layer4@3");
    UnfreezeStep step{e.substr(0, at), 0};
    try {
      size_t used = 0;
      step.epoch = std::stoi(e.substr(at + 1), &used);
      TL_CHECK(used == e.size() - at - 1, ValueError, "trailing characters");
    } catch (const std::exception&) {
      throw ValueError("--unfreeze '" + e + "': the epoch after '@' must be a whole number, e.g. layer4@3");
    }
    if (std::find(blocks.begin(), blocks.end(), step.block) == blocks.end()) {
      std::string list;
      for (const std::string& b : blocks) list += (list.empty() ? "" : ", ") + b;
      throw ValueError("--unfreeze '" + e + "': no block '" + step.block + "' in " + model.arch() + "; blocks: " + list);
    }
    check_epoch(step.epoch, "--unfreeze '" + e + "'");
    s.steps.push_back(step);
  }
  if (freeze_epochs > 0) {
    check_epoch(freeze_epochs + 1, "--freeze-epochs " + std::to_string(freeze_epochs) + " (everything unfreezes at epoch " +
                                       std::to_string(freeze_epochs + 1) + ")");
    s.steps.push_back({"*", freeze_epochs + 1});
  }
  std::stable_sort(s.steps.begin(), s.steps.end(), [](const UnfreezeStep& a, const UnfreezeStep& b) { return a.epoch < b.epoch; });
  return s;
}

}  // namespace tl::train
