// The model registry and shared Model helpers.
#include "models/model.h"

#include <algorithm>

namespace tl::models {

Device Model::device() const {
  auto params = named_parameters();
  return params.empty() ? Device::CPU : params.front().second.value().device();
}

void Model::reset_head(int64_t num_classes, uint64_t seed) {
  TL_CHECK(num_classes >= 1, ValueError, "reset_head: num_classes must be >= 1, got ", num_classes);
  const std::string head = head_name();
  const size_t dot = head.rfind('.');
  const std::string parent_name = dot == std::string::npos ? "" : head.substr(0, dot);
  nn::Module* parent = nullptr;
  for (auto& [name, m] : named_modules())
    if (name == parent_name) parent = m;
  TL_CHECK(parent, ValueError, "reset_head: no module '", parent_name, "' in ", arch_);
  const Device dev = device();
  nn::Generator gen(seed);
  nn::Linear& fresh = parent->replace_module<nn::Linear>(head.substr(dot == std::string::npos ? 0 : dot + 1),
                                                         head_in_features_, num_classes, gen);
  fresh.to(dev);
  num_classes_ = num_classes;
  on_head_replaced(fresh);
}

std::vector<std::string> model_names() {
  return {"resnet18",        "resnet34",        "resnet50",    "resnet101",   "resnet152",
          "resnext50_32x4d", "wide_resnet50_2", "densenet121", "densenet161", "densenet169",
          "densenet201",     "vgg16",           "vgg16_bn"};
}

bool is_model_name(const std::string& arch) {
  auto names = model_names();
  return std::find(names.begin(), names.end(), arch) != names.end();
}

std::unique_ptr<Model> create_model(const std::string& arch, int64_t num_classes, uint64_t seed) {
  TL_CHECK(num_classes >= 1, ValueError, "create_model: num_classes must be >= 1, got ", num_classes);
  if (arch.rfind("resnet", 0) == 0 || arch.rfind("resnext", 0) == 0 || arch.rfind("wide_resnet", 0) == 0) {
    if (is_model_name(arch)) return make_resnet(arch, num_classes, seed);
  } else if (arch.rfind("densenet", 0) == 0) {
    if (is_model_name(arch)) return make_densenet(arch, num_classes, seed);
  } else if (arch.rfind("vgg", 0) == 0) {
    if (is_model_name(arch)) return make_vgg(arch, num_classes, seed);
  }
  std::string known;
  for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
  throw ValueError("unknown architecture '" + arch + "'; known: " + known);
}

}  // namespace tl::models
