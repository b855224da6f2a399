// SqueezeNet 1.0 and 1.1 (torchvision's squeezenet.py): Fire modules (a 1x1 squeeze, then 1x1 and 3x3 expands
// concatenated), max pools in ceil mode, and a convolutional head: dropout, the 1x1 convolution classifier.1,
// ReLU, global average pool. torchvision's initialisation (kaiming_uniform_, the head normal(0, 0.01)).
#include <cmath>

#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/elementwise.h"
#include "layers/pooling.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::Conv2d;
using nn::Dropout;
using nn::Generator;
using nn::Sequential;

// torchvision: kaiming_uniform_ (a = 0, fan_in, gain sqrt(2): bound sqrt(6 / fan_in)), bias 0.
void kaiming_uniform(Conv2d& c, Generator& gen) {
  const Shape& s = c.weight.shape();
  const double bound = std::sqrt(6.0 / static_cast<double>(s[1] * s[2] * s[3]));
  c.weight.mutable_value() = gen.uniform(s, -bound, bound);
  c.bias.mutable_value().zero_();
}

class Fire : public nn::Module {
 public:
  Fire(int64_t in, int64_t squeeze, int64_t e1, int64_t e3, Generator& gen)
      : squeeze_(add_module<Conv2d>("squeeze", in, squeeze, 1, 1, 0, true, gen)),
        expand1x1_(add_module<Conv2d>("expand1x1", squeeze, e1, 1, 1, 0, true, gen)),
        expand3x3_(add_module<Conv2d>("expand3x3", squeeze, e3, 3, 1, 1, true, gen)) {
    for (Conv2d* c : {&squeeze_, &expand1x1_, &expand3x3_}) kaiming_uniform(*c, gen);
  }
  Variable operator()(const Variable& x) {
    Variable s = relu(squeeze_(x));
    return concat({relu(expand1x1_(s)), relu(expand3x3_(s))}, 1);
  }

 private:
  Conv2d& squeeze_;
  Conv2d& expand1x1_;
  Conv2d& expand3x3_;
};

class SqueezeNet : public Model {
 public:
  // v1_1: the 1.1 layout (3x3 stem with 64 channels, earlier pools).
  SqueezeNet(const std::string& arch, bool v1_1, int64_t num_classes, uint64_t seed, double dropout_p = 0.5)
      : Model(arch, num_classes, 512) {
    Generator gen(seed);
    auto& f = add_module<Sequential>("features");
    stem_ = v1_1 ? &f.add<Conv2d>("0", 3, 64, 3, 2, 0, true, gen) : &f.add<Conv2d>("0", 3, 96, 7, 2, 0, true, gen);
    kaiming_uniform(*stem_, gen);
    // (index, in, squeeze, expand) per Fire; a max pool (ceil mode) sits at each index without a Fire.
    struct F {
      int index;
      int64_t in, squeeze, expand;
    };
    const std::vector<F> fires =
        v1_1 ? std::vector<F>{{3, 64, 16, 64},   {4, 128, 16, 64},  {6, 128, 32, 128}, {7, 256, 32, 128},
                              {9, 256, 48, 192}, {10, 384, 48, 192}, {11, 384, 64, 256}, {12, 512, 64, 256}}
             : std::vector<F>{{3, 96, 16, 64},   {4, 128, 16, 64},  {5, 128, 32, 128}, {7, 256, 32, 128},
                              {8, 256, 48, 192}, {9, 384, 48, 192}, {10, 384, 64, 256}, {12, 512, 64, 256}};
    int next = 3;  // features.1 and .2: the stem's ReLU and max pool
    for (const F& fire : fires) {
      for (; next < fire.index; ++next) layers_.push_back(nullptr);  // a pool
      layers_.push_back(&f.add<Fire>(std::to_string(fire.index), fire.in, fire.squeeze, fire.expand, fire.expand, gen));
      next = fire.index + 1;
    }
    auto& classifier = add_module<Sequential>("classifier");
    dropout_ = &classifier.add<Dropout>("0", dropout_p, seed ^ 0x9e3779b97f4a7c15ULL);
    final_conv_ = &classifier.add<Conv2d>("1", 512, num_classes, 1, 1, 0, true, gen);
    final_conv_->weight.mutable_value() = gen.normal(final_conv_->weight.shape(), 0.01);
    final_conv_->bias.mutable_value().zero_();
  }

  // (N, 512, h, w): the last Fire's output after the dropout that precedes the head.
  Variable features(const Variable& x) override {
    Variable h = max_pool2d(relu((*stem_)(x)), pool2d_options(3, 2, 0, true));
    for (Fire* fire : layers_) h = fire ? (*fire)(h) : max_pool2d(h, pool2d_options(3, 2, 0, true));
    return (*dropout_)(h);
  }
  Variable head(const Variable& f) override { return flatten(adaptive_avg_pool2d(relu((*final_conv_)(f)), 1, 1), 1); }
  int64_t feature_numel(int64_t image_size) const override {
    const bool v1_1 = stem_->weight.shape()[2] == 3;
    int64_t s = (image_size - (v1_1 ? 3 : 7)) / 2 + 1;  // the stem
    s = pool_output_size(s, 3, 2, 0, true);
    for (const Fire* fire : layers_)
      if (!fire) s = pool_output_size(s, 3, 2, 0, true);
    return 512 * s * s;
  }

  std::vector<std::string> head_names() const override { return {"classifier.1"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out{"features.0"};
    int index = 3;
    for (const Fire* fire : layers_) {
      if (fire) out.push_back("features." + std::to_string(index));
      ++index;
    }
    out.push_back("classifier.1");
    return out;
  }
  void on_heads_replaced() override { final_conv_ = &module_at<Conv2d>("classifier.1"); }

 private:
  Conv2d* stem_;
  std::vector<Fire*> layers_;  // features.3 onwards in order; nullptr for a max pool
  Dropout* dropout_;
  Conv2d* final_conv_;
};

ArchRegistrar squeezenet(const std::string& name, bool v1_1) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "SqueezeNet";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<SqueezeNet>(name, v1_1, classes, seed);
  };
  spec.head_weight = "classifier.1.weight";
  spec.probe = "features.3.squeeze.weight";
  spec.matches = [=](const StateShapes& s) {
    return shape_at(s, "classifier.1.weight") &&
           (v1_1 ? has_shape(s, "features.0.weight", {64, 3, 3, 3}) : has_shape(s, "features.0.weight", {96, 3, 7, 7}));
  };
  return ArchRegistrar(std::move(spec));
}
const ArchRegistrar kSqueezeNet10 = squeezenet("squeezenet1_0", false);
const ArchRegistrar kSqueezeNet11 = squeezenet("squeezenet1_1", true);
}  // namespace
}  // namespace tl::models
