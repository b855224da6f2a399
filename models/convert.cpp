// Key normalisation and architecture detection for converted PyTorch state dicts (see convert.h).
#include "models/convert.h"

#include <regex>
#include <set>

#include "models/registry.h"

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

DetectedArch detect_arch(const std::map<std::string, Shape>& s) {
  std::vector<const ArchSpec*> hits;
  for (const ArchSpec& spec : arch_specs())
    if (spec.matches && spec.matches(s)) hits.push_back(&spec);
  if (hits.size() == 1) {
    const Shape* head = shape_at(s, hits[0]->head_weight);
    return {hits[0]->name, head && !head->empty() ? (*head)[0] : 0};
  }
  if (hits.size() > 1) {  // two specs claim one file: a defect in their `matches`
    std::string names;
    for (const ArchSpec* h : hits) names += (names.empty() ? "" : ", ") + h->name;
    throw ValueError("the keys fit several architectures (" + names + "); pass --arch to name it");
  }
  std::string family, members;
  for (const ArchSpec& spec : arch_specs()) {
    if (spec.probe.empty() || !shape_at(s, spec.probe)) continue;
    if (family.empty()) family = spec.family;
    if (spec.family == family) members += (members.empty() ? "" : ", ") + spec.name;
  }
  if (!family.empty())
    throw ValueError("a " + family + "-like state dict whose layers and shapes match none of " + members +
                     "; pass --arch to name it");
  std::string probes;
  for (const ArchSpec& spec : arch_specs())
    if (!spec.probe.empty() && probes.find("'" + spec.probe + "'") == std::string::npos)
      probes += (probes.empty() ? "'" : ", '") + spec.probe + "' (" + spec.family + ")";
  throw ValueError("the keys match no supported architecture (expected torchvision names such as " + probes +
                   "); pass --arch to name it");
}

}  // namespace tl::models
