// ShuffleNet V2 x0.5 / x1.0 / x1.5 / x2.0 (torchvision's shufflenetv2.py): a 3x3 stem and max pool, three stages
// of units that split the channels in two (or, downsampling, run two branches), transform one half (1x1, 3x3
// depthwise, 1x1), concatenate and shuffle the channels, a 1x1 conv5, global mean and the head fc. PyTorch's
// default initialisation (torchvision sets none).
#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/elementwise.h"
#include "layers/fused.h"
#include "layers/pooling.h"
#include "layers/shuffle.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::ConvBn;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

class ShuffleUnit : public nn::Module {
 public:
  ShuffleUnit(int64_t in, int64_t out, int stride, Generator& gen) : stride_(stride) {
    const int64_t half = out / 2;
    auto& b1 = add_module<Sequential>("branch1");
    if (stride > 1) {
      b1_ = {nn::add_conv_bn(b1, 0, in, in, 3, stride, static_cast<int>(in), gen),
             nn::add_conv_bn(b1, 2, in, half, 1, 1, 1, gen)};
    }
    auto& b2 = add_module<Sequential>("branch2");
    b2_ = {nn::add_conv_bn(b2, 0, stride > 1 ? in : half, half, 1, 1, 1, gen),
           nn::add_conv_bn(b2, 3, half, half, 3, stride, static_cast<int>(half), gen),
           nn::add_conv_bn(b2, 5, half, half, 1, 1, 1, gen)};
  }
  Variable operator()(const Variable& x) {
    auto branch2 = [&](const Variable& h) { return b2_[2](b2_[1](b2_[0](h, true), false), true); };
    Variable out;
    if (stride_ == 1) {
      const std::vector<Variable> halves = split_channels(x, {x.shape()[1] / 2, x.shape()[1] / 2});  // x.chunk(2, 1)
      out = concat({halves[0], branch2(halves[1])}, 1);
    } else {
      out = concat({b1_[1](b1_[0](x, false), true), branch2(x)}, 1);
    }
    return channel_shuffle(out, 2);
  }

 private:
  int stride_;
  std::vector<ConvBn> b1_, b2_;
};

class ShuffleNetV2 : public Model {
 public:
  ShuffleNetV2(const std::string& arch, std::vector<int64_t> channels, int64_t num_classes, uint64_t seed)
      : Model(arch, num_classes, channels[4]) {
    Generator gen(seed);
    conv1_ = nn::add_conv_bn(add_module<Sequential>("conv1"), 0, 3, channels[0], 3, 2, 1, gen);
    const int repeats[] = {4, 8, 4};
    for (int s = 0; s < 3; ++s) {
      auto& stage = add_module<Sequential>("stage" + std::to_string(s + 2));
      for (int r = 0; r < repeats[s]; ++r)
        units_.push_back(&stage.add<ShuffleUnit>(std::to_string(r), r == 0 ? channels[s] : channels[s + 1],
                                                 channels[s + 1], r == 0 ? 2 : 1, gen));
    }
    conv5_ = nn::add_conv_bn(add_module<Sequential>("conv5"), 0, channels[3], channels[4], 1, 1, 1, gen);
    fc_ = &add_module<Linear>("fc", channels[4], num_classes, gen);
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    Variable h = max_pool2d(conv1_(x, true), pool2d_options(3, 2, 1));
    for (ShuffleUnit* u : units_) h = (*u)(h);
    return flatten(adaptive_avg_pool2d(conv5_(h, true), 1, 1), 1);  // x.mean([2, 3])
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::vector<std::string> head_names() const override { return {"fc"}; }
  std::vector<std::string> blocks() const override { return {"conv1", "stage2", "stage3", "stage4", "conv5", "fc"}; }
  std::vector<std::string> last_block() const override { return {"stage4", "conv5"}; }
  void on_heads_replaced() override { fc_ = &module_at<Linear>("fc"); }

 private:
  ConvBn conv1_, conv5_;
  std::vector<ShuffleUnit*> units_;
  Linear* fc_;
};

ArchRegistrar shufflenet(const std::string& name, std::vector<int64_t> channels) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "ShuffleNet V2";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<ShuffleNetV2>(name, channels, classes, seed);
  };
  spec.head_weight = "fc.weight";
  spec.probe = "stage2.0.branch1.0.weight";
  spec.matches = [=](const StateShapes& s) {
    return has_shape(s, "stage2.0.branch2.0.weight", {channels[1] / 2, channels[0], 1, 1}) &&
           has_shape(s, "conv5.0.weight", {channels[4], channels[3], 1, 1}) && shape_at(s, "fc.weight");
  };
  return ArchRegistrar(std::move(spec));
}
const ArchRegistrar kShuffleNet05 = shufflenet("shufflenet_v2_x0_5", {24, 48, 96, 192, 1024});
const ArchRegistrar kShuffleNet10 = shufflenet("shufflenet_v2_x1_0", {24, 116, 232, 464, 1024});
const ArchRegistrar kShuffleNet15 = shufflenet("shufflenet_v2_x1_5", {24, 176, 352, 704, 1024});
const ArchRegistrar kShuffleNet20 = shufflenet("shufflenet_v2_x2_0", {24, 244, 488, 976, 2048});
}  // namespace
}  // namespace tl::models
