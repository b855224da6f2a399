// Shared Model helpers: heads, blocks.
#include "models/model.h"

#include <algorithm>

namespace tl::models {

Device Model::device() const {
  auto params = named_parameters();
  return params.empty() ? Device::CPU : params.front().second.value().device();
}

bool Model::stochastic_features() const {
  for (const auto& [name, m] : named_modules())
    if (auto* d = dynamic_cast<const nn::Dropout*>(m); d && d->p > 0) return true;
  return false;
}

Variable Model::run_until(const Variable&, size_t cut) {
  throw ValueError(detail::concat(arch_, " has no cut point ", cut, " (it can be cut at its head only)"));
}
Variable Model::run_from(const Variable&, size_t cut) {
  throw ValueError(detail::concat(arch_, " has no cut point ", cut, " (it can be cut at its head only)"));
}

void Model::set_dropout(double p) {
  for (auto& [name, m] : named_modules())
    if (auto* d = dynamic_cast<nn::Dropout*>(m)) d->p = p;
}

bool Model::in_head(const std::string& name) const {
  for (const std::string& h : head_names())
    if (name == h || name.rfind(h + ".", 0) == 0) return true;
  return false;
}

std::vector<std::string> Model::last_block() const {
  const std::vector<std::string> all = blocks();
  const auto main_head = std::find(all.begin(), all.end(), head_name());
  for (auto it = main_head; it != all.begin();) {
    --it;
    if (!in_head(*it)) return {*it};
  }
  throw ValueError("model " + arch_ + " has no block below its head");
}

Variable ImageNetToUnitRange::operator()(const Variable& x) {
  const Tensor& v = x.value();
  TL_CHECK(v.ndim() == 4 && v.size(1) == 3, ShapeError, "transform_input: expected (N, 3, H, W) images, got ", v.str());
  if (!scale_.defined() || scale_.dtype() != v.dtype() || scale_.device() != v.device()) {
    const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
    std::vector<double> scale, shift;
    for (int c = 0; c < 3; ++c) {
      scale.push_back(std[c] / 0.5);
      shift.push_back((mean[c] - 0.5) / 0.5);
    }
    scale_ = Tensor::from_values(scale, {3, 1, 1, 1}, v.dtype()).to(v.device());
    shift_ = Tensor::from_values(shift, {3}, v.dtype()).to(v.device());
  }
  Conv2dOptions o;
  o.groups = 3;
  return Variable(conv2d_forward(v, scale_, shift_, o));
}

void Model::drop_aux() {
  for (const std::string& m : aux_modules()) {
    const size_t dot = m.rfind('.');
    nn::Module& parent = dot == std::string::npos ? static_cast<nn::Module&>(*this) : module_at<nn::Module>(m.substr(0, dot));
    parent.remove_module(dot == std::string::npos ? m : m.substr(dot + 1));
  }
  aux_dropped_ = true;
  aux_.clear();
  on_heads_replaced();
}

void Model::reset_head(int64_t num_classes, uint64_t seed) {
  TL_CHECK(num_classes >= 1, ValueError, "reset_head: num_classes must be >= 1, got ", num_classes);
  const Device dev = device();
  nn::Generator gen(seed);
  for (const std::string& head : head_names()) {
    const size_t dot = head.rfind('.');
    const std::string parent_name = dot == std::string::npos ? "" : head.substr(0, dot);
    const std::string child = head.substr(dot == std::string::npos ? 0 : dot + 1);
    nn::Module& parent = parent_name.empty() ? static_cast<nn::Module&>(*this) : module_at<nn::Module>(parent_name);
    nn::Module& old = module_at<nn::Module>(head);
    if (auto* linear = dynamic_cast<nn::Linear*>(&old)) {
      const int64_t in = linear->weight.shape()[1];
      parent.replace_module<nn::Linear>(child, in, num_classes, gen).to(dev);
    } else if (auto* conv = dynamic_cast<nn::Conv2d*>(&old)) {  // SqueezeNet: nn.Conv2d(512, classes, 1)
      const int64_t in = conv->weight.shape()[1] * conv->options.groups;
      parent.replace_module<nn::Conv2d>(child, in, num_classes, 1, 1, 0, true, gen).to(dev);
    } else {
      throw ValueError("reset_head: " + arch_ + "'s head " + head + " is neither a Linear nor a Conv2d");
    }
  }
  num_classes_ = num_classes;
  on_heads_replaced();
}

void Model::require_memory_efficient() {
  TL_CHECK(set_memory_efficient(true), ValueError, "--memory-efficient: ", arch(),
           " has no memory-efficient mode (the DenseNets have one); leave the option out");
}

}  // namespace tl::models
