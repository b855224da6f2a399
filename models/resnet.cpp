// ResNet family (torchvision's resnet.py, v1.5: stride on the 3x3 convolution): resnet18/34/50/101/152,
// resnext50_32x4d and wide_resnet50_2, with torchvision's module names and initialisation.
#include <cmath>

#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/fused.h"
#include "layers/pooling.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::BatchNorm2d;
using nn::Conv2d;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

// torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu").
void kaiming_fan_out(Conv2d& c, Generator& gen) { nn::kaiming_normal(c, gen, nn::FanMode::Out); }

// A residual block: BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 grouped, 1x1 with 4x expansion).
class Block : public nn::Module {
 public:
  Block(bool bottleneck, int64_t inplanes, int64_t planes, int stride, int groups, int64_t base_width,
        Generator& gen) {
    const int64_t expansion = bottleneck ? 4 : 1;
    const int64_t out = planes * expansion;
    auto conv_bn = [&](int i, int64_t cin, int64_t cout, int kernel, int s, int g) {
      Conv2d& c = add_module<Conv2d>("conv" + std::to_string(i), cin, cout, kernel, s, kernel / 2, false, gen, g);
      units_.emplace_back(c, add_module<BatchNorm2d>("bn" + std::to_string(i), cout));
    };
    if (bottleneck) {
      const int64_t width = static_cast<int64_t>(planes * (base_width / 64.0)) * groups;
      conv_bn(1, inplanes, width, 1, 1, 1);
      conv_bn(2, width, width, 3, stride, groups);
      conv_bn(3, width, out, 1, 1, 1);
    } else {
      conv_bn(1, inplanes, planes, 3, stride, 1);
      conv_bn(2, planes, planes, 3, 1, 1);
    }
    if (stride != 1 || inplanes != out) {
      auto& ds = add_module<Sequential>("downsample");
      down_ = {ds.add<Conv2d>("0", inplanes, out, 1, stride, 0, false, gen), ds.add<BatchNorm2d>("1", out)};
      kaiming_fan_out(down_.conv(), gen);
    }
    for (nn::ConvBn& u : units_) kaiming_fan_out(u.conv(), gen);
  }

  // relu(bn_last(conv_last(...relu(bn1(conv1(x)))...)) + identity), each conv + batch norm an nn::ConvBn (folded
  // in a frozen prefix with running statistics). The downsample branch runs just before the last pair, which
  // keeps the tape order (and so the gradient accumulation order into x) of conv..., downsample, add.
  Variable operator()(const Variable& x) {
    Variable h = x;
    const size_t last = units_.size() - 1;
    for (size_t i = 0; i < last; ++i) h = units_[i](h, true);
    Variable identity = down_ ? down_(x, false) : x;
    return units_[last](h, true, &identity);
  }

 private:
  std::vector<nn::ConvBn> units_;  // (conv1, bn1), (conv2, bn2) [, (conv3, bn3)]
  nn::ConvBn down_;                // (downsample.0, downsample.1), when the shape changes
};

class ResNet : public Model {
 public:
  ResNet(const std::string& arch, bool bottleneck, std::vector<int> layers, int groups, int64_t width_per_group,
         int64_t num_classes, uint64_t seed)
      : Model(arch, num_classes, 512 * (bottleneck ? 4 : 1)) {
    Generator gen(seed);
    Conv2d& conv1 = add_module<Conv2d>("conv1", 3, 64, 7, 2, 3, false, gen);
    kaiming_fan_out(conv1, gen);
    stem_ = {conv1, add_module<BatchNorm2d>("bn1", 64)};
    int64_t inplanes = 64;
    for (int stage = 0; stage < 4; ++stage) {
      const int64_t planes = 64LL << stage;
      auto& seq = add_module<Sequential>("layer" + std::to_string(stage + 1));
      for (int b = 0; b < layers[static_cast<size_t>(stage)]; ++b) {
        const int stride = (b == 0 && stage > 0) ? 2 : 1;
        Block& block = seq.add<Block>(std::to_string(b), bottleneck, inplanes, planes, stride, groups,
                                      width_per_group, gen);
        if (b == 0) stages_.emplace_back();
        stages_.back().push_back(&block);
        inplanes = planes * (bottleneck ? 4 : 1);
      }
    }
    fc_ = &add_module<Linear>("fc", head_in_features(), num_classes, gen);
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    return pool(stages(stem(x), 0, stages_.size()));
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }
  // Cut after layer1, layer2 or layer3 (after layer4 only the pool lies before the head: the head boundary).
  std::vector<std::string> cut_points() const override { return {"layer1", "layer2", "layer3"}; }
  Variable run_until(const Variable& x, size_t cut) override {
    CountConvBn count(*this);
    return stages(stem(x), 0, cut + 1);
  }
  Variable run_from(const Variable& h, size_t cut) override { return head(pool(stages(h, cut + 1, stages_.size()))); }

  std::vector<std::string> head_names() const override { return {"fc"}; }
  std::vector<std::string> blocks() const override {
    return {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"};
  }
  void on_heads_replaced() override { fc_ = &module_at<Linear>("fc"); }

 private:
  nn::ConvBn stem_;  // conv1, bn1
  Variable stem(const Variable& x) { return max_pool2d(stem_(x, true), pool2d_options(3, 2, 1)); }
  // layer<first + 1> .. layer<last>
  Variable stages(Variable h, size_t first, size_t last) {
    for (size_t s = first; s < last; ++s)
      for (Block* b : stages_[s]) h = (*b)(h);
    return h;
  }
  static Variable pool(const Variable& h) { return flatten(adaptive_avg_pool2d(h, 1, 1), 1); }
  std::vector<std::vector<Block*>> stages_;  // layer1..layer4
  Linear* fc_;
};
// torchvision's configurations: blocks per stage, bottleneck, groups and width per group.
// A state dict is recognised by its blocks per stage, the block kind and the first 3x3 convolution's shape
// (which tells ResNeXt's groups and Wide ResNet's width).
ArchRegistrar resnet(const std::string& name, bool bottleneck, std::vector<int> layers, int groups = 1,
                     int64_t width = 64) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "ResNet";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<ResNet>(name, bottleneck, layers, groups, width, classes, seed);
  };
  spec.head_weight = "fc.weight";
  spec.probe = "layer1.0.conv1.weight";
  spec.matches = [=](const StateShapes& s) {
    if (!shape_at(s, "conv1.weight") || !shape_at(s, "fc.weight")) return false;
    for (int i = 0; i < 4; ++i)
      if (count_children(s, "layer" + std::to_string(i + 1) + ".") != layers[static_cast<size_t>(i)]) return false;
    if ((shape_at(s, "layer1.0.conv3.weight") != nullptr) != bottleneck) return false;
    const int64_t w = bottleneck ? 64 * width / 64 * groups : 64;
    return has_shape(s, "layer1.0.conv2.weight", {w, w / groups, 3, 3});
  };
  return ArchRegistrar(std::move(spec));
}
const ArchRegistrar kResNet18 = resnet("resnet18", false, {2, 2, 2, 2});
const ArchRegistrar kResNet34 = resnet("resnet34", false, {3, 4, 6, 3});
const ArchRegistrar kResNet50 = resnet("resnet50", true, {3, 4, 6, 3});
const ArchRegistrar kResNet101 = resnet("resnet101", true, {3, 4, 23, 3});
const ArchRegistrar kResNet152 = resnet("resnet152", true, {3, 8, 36, 3});
const ArchRegistrar kResNeXt50 = resnet("resnext50_32x4d", true, {3, 4, 6, 3}, 32, 4);
const ArchRegistrar kWideResNet50 = resnet("wide_resnet50_2", true, {3, 4, 6, 3}, 1, 128);
}  // namespace

}  // namespace tl::models
