// Turning a PyTorch state dict into tlengine's names: DataParallel "module." prefixes, torchvision's legacy
// DenseNet names ("...denselayer1.norm.1.weight" -> "...denselayer1.norm1.weight"), and architecture detection
// from the keys and shapes. Pure C++: tools/convert_pth reads the .pth through embedded Python and calls this.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tl::models {

// One key's new name, or the key unchanged.
std::string normalize_key(const std::string& key);
// Applies normalize_key to every key; throws ValueError when two keys map to the same name.
std::vector<std::pair<std::string, Tensor>> normalize_state(const std::vector<std::pair<std::string, Tensor>>& state);

// The torchvision architecture whose state dict these keys and shapes are, e.g. "resnet50", and its class count.
// Throws ValueError with the reason when no registered architecture fits.
struct DetectedArch {
  std::string arch;
  int64_t num_classes = 0;
};
DetectedArch detect_arch(const std::map<std::string, Shape>& shapes);

}  // namespace tl::models
