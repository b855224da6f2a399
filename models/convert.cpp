// Key normalisation and architecture detection for converted PyTorch state dicts (see convert.h).
#include "models/convert.h"

#include <regex>
#include <set>

namespace tl::models {

std::string normalize_key(const std::string& key) {
  std::string k = key;
  while (k.rfind("module.", 0) == 0) k = k.substr(7);  // nn.DataParallel / DistributedDataParallel
  // torchvision's _load_state_dict for DenseNet: "norm.1.weight" -> "norm1.weight" (also relu, conv).
  static const std::regex legacy(R"(^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$)");
  std::smatch m;
  if (std::regex_match(k, m, legacy)) k = m[1].str() + m[2].str();
  return k;
}

std::vector<std::pair<std::string, Tensor>> normalize_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::map<std::string, std::string> origin;
  for (const auto& [key, t] : state) {
    std::string k = normalize_key(key);
    auto [it, fresh] = origin.emplace(k, key);
    TL_CHECK(fresh, ValueError, "keys '", it->second, "' and '", key, "' both map to '", k, "'");
    out.emplace_back(k, t);
  }
  return out;
}

namespace {
int count_children(const std::map<std::string, Shape>& s, const std::string& prefix) {
  std::set<std::string> ids;
  for (const auto& [k, shape] : s) {
    if (k.rfind(prefix, 0) != 0) continue;
    std::string rest = k.substr(prefix.size());
    ids.insert(rest.substr(0, rest.find('.')));
  }
  return static_cast<int>(ids.size());
}
const Shape* find(const std::map<std::string, Shape>& s, const std::string& k) {
  auto it = s.find(k);
  return it == s.end() ? nullptr : &it->second;
}
}  // namespace

DetectedArch detect_arch(const std::map<std::string, Shape>& s) {
  if (const Shape* fc = find(s, "fc.weight"); fc && find(s, "conv1.weight")) {
    std::vector<int> blocks;
    for (int i = 1; i <= 4; ++i) blocks.push_back(count_children(s, "layer" + std::to_string(i) + "."));
    const bool bottleneck = find(s, "layer1.0.conv3.weight") != nullptr;
    const int64_t classes = fc->size() == 2 ? (*fc)[0] : 0;
    auto is = [&](std::vector<int> v) { return blocks == v; };
    if (!bottleneck && is({2, 2, 2, 2})) return {"resnet18", classes};
    if (!bottleneck && is({3, 4, 6, 3})) return {"resnet34", classes};
    if (bottleneck && is({3, 4, 6, 3})) {
      const Shape* c2 = find(s, "layer1.0.conv2.weight");
      if (c2 && c2->size() == 4 && (*c2)[0] == 128 && (*c2)[1] == 4) return {"resnext50_32x4d", classes};
      if (c2 && c2->size() == 4 && (*c2)[0] == 128 && (*c2)[1] == 128) return {"wide_resnet50_2", classes};
      return {"resnet50", classes};
    }
    if (bottleneck && is({3, 4, 23, 3})) return {"resnet101", classes};
    if (bottleneck && is({3, 8, 36, 3})) return {"resnet152", classes};
    throw ValueError(detail::concat("a ResNet-like state dict with blocks per stage ", blocks[0], ",", blocks[1], ",",
                                    blocks[2], ",", blocks[3], (bottleneck ? " (bottleneck)" : " (basic)"),
                                    " matches no supported architecture"));
  }
  if (find(s, "features.conv0.weight") && find(s, "classifier.weight")) {
    std::vector<int> blocks;
    for (int i = 1; i <= 4; ++i)
      blocks.push_back(count_children(s, "features.denseblock" + std::to_string(i) + "."));
    const int64_t init = (*find(s, "features.conv0.weight"))[0];
    const int64_t classes = (*find(s, "classifier.weight"))[0];
    auto is = [&](std::vector<int> v, int64_t i0) { return blocks == v && init == i0; };
    if (is({6, 12, 24, 16}, 64)) return {"densenet121", classes};
    if (is({6, 12, 36, 24}, 96)) return {"densenet161", classes};
    if (is({6, 12, 32, 32}, 64)) return {"densenet169", classes};
    if (is({6, 12, 48, 32}, 64)) return {"densenet201", classes};
    throw ValueError(detail::concat("a DenseNet-like state dict with layers per block ", blocks[0], ",", blocks[1],
                                    ",", blocks[2], ",", blocks[3], " and ", init,
                                    " initial features matches no supported architecture"));
  }
  if (find(s, "features.0.weight") && find(s, "classifier.6.weight")) {
    const int convs = [&] {
      int n = 0;
      for (const auto& [k, shape] : s)
        if (k.rfind("features.", 0) == 0 && shape.size() == 4 && k.size() > 7 &&
            k.compare(k.size() - 7, 7, ".weight") == 0)
          ++n;
      return n;
    }();
    const bool bn = find(s, "features.1.running_mean") != nullptr;
    const int64_t classes = (*find(s, "classifier.6.weight"))[0];
    if (convs == 13) return {bn ? "vgg16_bn" : "vgg16", classes};
    throw ValueError(detail::concat("a VGG-like state dict with ", convs, " convolutions matches no supported "
                                    "architecture (vgg16, vgg16_bn have 13)"));
  }
  throw ValueError("the keys match no supported architecture (expected torchvision names such as 'conv1.weight' "
                   "and 'fc.weight' for ResNet, 'features.denseblock1...' for DenseNet, 'features.0.weight' and "
                   "'classifier.6.weight' for VGG); pass --arch to name it");
}

}  // namespace tl::models
