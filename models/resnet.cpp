// ResNet family (torchvision's resnet.py, v1.5: stride on the 3x3 convolution): resnet18/34/50/101/152,
// resnext50_32x4d and wide_resnet50_2, with torchvision's module names and initialisation.
#include <cmath>

#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/fused.h"
#include "layers/pooling.h"
#include "models/model.h"

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
    if (bottleneck) {
      const int64_t width = static_cast<int64_t>(planes * (base_width / 64.0)) * groups;
      convs_ = {&add_module<Conv2d>("conv1", inplanes, width, 1, 1, 0, false, gen)};
      bns_ = {&add_module<BatchNorm2d>("bn1", width)};
      convs_.push_back(&add_module<Conv2d>("conv2", width, width, 3, stride, 1, false, gen, groups));
      bns_.push_back(&add_module<BatchNorm2d>("bn2", width));
      convs_.push_back(&add_module<Conv2d>("conv3", width, out, 1, 1, 0, false, gen));
      bns_.push_back(&add_module<BatchNorm2d>("bn3", out));
    } else {
      convs_ = {&add_module<Conv2d>("conv1", inplanes, planes, 3, stride, 1, false, gen)};
      bns_ = {&add_module<BatchNorm2d>("bn1", planes)};
      convs_.push_back(&add_module<Conv2d>("conv2", planes, planes, 3, 1, 1, false, gen));
      bns_.push_back(&add_module<BatchNorm2d>("bn2", planes));
    }
    if (stride != 1 || inplanes != out) {
      auto& ds = add_module<Sequential>("downsample");
      down_conv_ = &ds.add<Conv2d>("0", inplanes, out, 1, stride, 0, false, gen);
      down_bn_ = &ds.add<BatchNorm2d>("1", out);
      kaiming_fan_out(*down_conv_, gen);
    }
    for (Conv2d* c : convs_) kaiming_fan_out(*c, gen);
  }

  // relu(bn_last(conv_last(...relu(bn1(conv1(x)))...)) + identity), each conv-bn pair through conv_bn_act
  // (folded in a frozen prefix with running statistics). The downsample branch runs just before the last pair,
  // which keeps the tape order (and so the gradient accumulation order into x) of conv..., downsample, add.
  Variable operator()(const Variable& x) {
    Variable h = x;
    const size_t last = convs_.size() - 1;
    for (size_t i = 0; i < last; ++i) h = conv_bn_act(*convs_[i], *bns_[i], h, nullptr, true);
    Variable identity = down_conv_ ? conv_bn_act(*down_conv_, *down_bn_, x, nullptr, false) : x;
    return conv_bn_act(*convs_[last], *bns_[last], h, &identity, true);
  }

 private:
  std::vector<Conv2d*> convs_;
  std::vector<BatchNorm2d*> bns_;
  Conv2d* down_conv_ = nullptr;
  BatchNorm2d* down_bn_ = nullptr;
};

class ResNet : public Model {
 public:
  ResNet(const std::string& arch, bool bottleneck, std::vector<int> layers, int groups, int64_t width_per_group,
         int64_t num_classes, uint64_t seed)
      : Model(arch, num_classes, 512 * (bottleneck ? 4 : 1)) {
    Generator gen(seed);
    conv1_ = &add_module<Conv2d>("conv1", 3, 64, 7, 2, 3, false, gen);
    kaiming_fan_out(*conv1_, gen);
    bn1_ = &add_module<BatchNorm2d>("bn1", 64);
    int64_t inplanes = 64;
    for (int stage = 0; stage < 4; ++stage) {
      const int64_t planes = 64LL << stage;
      auto& seq = add_module<Sequential>("layer" + std::to_string(stage + 1));
      for (int b = 0; b < layers[static_cast<size_t>(stage)]; ++b) {
        const int stride = (b == 0 && stage > 0) ? 2 : 1;
        blocks_.push_back(&seq.add<Block>(std::to_string(b), bottleneck, inplanes, planes, stride, groups,
                                          width_per_group, gen));
        inplanes = planes * (bottleneck ? 4 : 1);
      }
    }
    fc_ = &add_module<Linear>("fc", head_in_features(), num_classes, gen);
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    Variable h = conv_bn_act(*conv1_, *bn1_, x, nullptr, true);
    h = max_pool2d(h, pool2d_options(3, 2, 1));
    for (Block* b : blocks_) h = (*b)(h);
    return flatten(adaptive_avg_pool2d(h, 1, 1), 1);
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::string head_name() const override { return "fc"; }
  std::vector<std::string> blocks() const override {
    return {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"};
  }
  void on_head_replaced(Linear& head) override { fc_ = &head; }

 private:
  Conv2d* conv1_;
  BatchNorm2d* bn1_;
  std::vector<Block*> blocks_;
  Linear* fc_;
};
}  // namespace

std::unique_ptr<Model> make_resnet(const std::string& arch, int64_t num_classes, uint64_t seed) {
  if (arch == "resnet18") return std::make_unique<ResNet>(arch, false, std::vector<int>{2, 2, 2, 2}, 1, 64, num_classes, seed);
  if (arch == "resnet34") return std::make_unique<ResNet>(arch, false, std::vector<int>{3, 4, 6, 3}, 1, 64, num_classes, seed);
  if (arch == "resnet50") return std::make_unique<ResNet>(arch, true, std::vector<int>{3, 4, 6, 3}, 1, 64, num_classes, seed);
  if (arch == "resnet101") return std::make_unique<ResNet>(arch, true, std::vector<int>{3, 4, 23, 3}, 1, 64, num_classes, seed);
  if (arch == "resnet152") return std::make_unique<ResNet>(arch, true, std::vector<int>{3, 8, 36, 3}, 1, 64, num_classes, seed);
  if (arch == "resnext50_32x4d") return std::make_unique<ResNet>(arch, true, std::vector<int>{3, 4, 6, 3}, 32, 4, num_classes, seed);
  if (arch == "wide_resnet50_2") return std::make_unique<ResNet>(arch, true, std::vector<int>{3, 4, 6, 3}, 1, 128, num_classes, seed);
  throw ValueError("make_resnet: unknown architecture '" + arch + "'");
}

}  // namespace tl::models
