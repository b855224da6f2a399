// MNASNet 0.5 / 0.75 / 1.0 / 1.3 (torchvision's mnasnet.py): a 3x3 stem, a depthwise-separable block, six stacks
// of inverted residuals (3x3 or 5x5 depthwise), a 1x1 convolution to 1280 channels, global mean, dropout and the
// head classifier.1. Every batch norm keeps torchvision's momentum 1 - 0.9997 (eps 1e-5); ReLU throughout.
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
using nn::Dropout;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

constexpr double kBnMomentum = 1 - 0.9997;

using ConvBn = nn::ConvBn;
ConvBn conv_bn(Sequential& seq, int i, int64_t in, int64_t out, int kernel, int stride, int groups, Generator& gen) {
  return nn::add_conv_bn(seq, i, in, out, kernel, stride, groups, gen, kBnMomentum);
}

class InvertedResidual : public nn::Module {
 public:
  InvertedResidual(int64_t in, int64_t out, int kernel, int stride, int expand, Generator& gen)
      : residual_(in == out && stride == 1) {
    auto& layers = add_module<Sequential>("layers");
    const int64_t mid = in * expand;
    expand_ = conv_bn(layers, 0, in, mid, 1, 1, 1, gen);
    depthwise_ = conv_bn(layers, 3, mid, mid, kernel, stride, static_cast<int>(mid), gen);
    project_ = conv_bn(layers, 6, mid, out, 1, 1, 1, gen);
  }
  Variable operator()(const Variable& x) {
    return project_(depthwise_(expand_(x, true), true), false, residual_ ? &x : nullptr);
  }

 private:
  bool residual_;
  ConvBn expand_, depthwise_, project_;
};

// torchvision's _round_to_multiple_of(val, 8, 0.9).
int64_t round_to_8(double v) {
  const int64_t r = std::max<int64_t>(8, static_cast<int64_t>(v + 4) / 8 * 8);
  return r >= 0.9 * v ? r : r + 8;
}

class MNASNet : public Model {
 public:
  MNASNet(const std::string& arch, double alpha, int64_t num_classes, uint64_t seed, double dropout_p = 0.2)
      : Model(arch, num_classes, 1280) {
    Generator gen(seed);
    std::vector<int64_t> d;
    for (int v : {32, 16, 24, 40, 80, 96, 192, 320}) d.push_back(round_to_8(v * alpha));
    auto& layers = add_module<Sequential>("layers");
    stem_ = {conv_bn(layers, 0, 3, d[0], 3, 2, 1, gen), conv_bn(layers, 3, d[0], d[0], 3, 1, static_cast<int>(d[0]), gen),
             conv_bn(layers, 6, d[0], d[1], 1, 1, 1, gen)};
    struct Stack {
      int kernel, stride, expand, repeats;
    };
    const Stack stacks[] = {{3, 2, 3, 3}, {5, 2, 3, 3}, {5, 2, 6, 3}, {3, 1, 6, 2}, {5, 2, 6, 4}, {3, 1, 6, 1}};
    for (int s = 0; s < 6; ++s) {
      auto& stack = layers.add<Sequential>(std::to_string(8 + s));
      for (int r = 0; r < stacks[s].repeats; ++r)
        blocks_.push_back(&stack.add<InvertedResidual>(std::to_string(r), r == 0 ? d[s + 1] : d[s + 2], d[s + 2],
                                                       stacks[s].kernel, r == 0 ? stacks[s].stride : 1,
                                                       stacks[s].expand, gen));
    }
    last_ = conv_bn(layers, 14, d[7], 1280, 1, 1, 1, gen);
    auto& classifier = add_module<Sequential>("classifier");
    dropout_ = &classifier.add<Dropout>("0", dropout_p, seed ^ 0x9e3779b97f4a7c15ULL);
    fc_ = &classifier.add<Linear>("1", 1280, num_classes, gen);
    // torchvision: kaiming_normal_(fan_out) convolutions; kaiming_uniform_(fan_out, sigmoid) linear, zero bias.
    for (auto& [name, m] : named_modules())
      if (auto* c = dynamic_cast<Conv2d*>(m)) nn::kaiming_normal(*c, gen, nn::FanMode::Out);
    const double bound = std::sqrt(3.0 / static_cast<double>(num_classes));
    fc_->weight.mutable_value() = gen.uniform(fc_->weight.shape(), -bound, bound);
    fc_->bias.mutable_value().zero_();
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    Variable h = stem_[2](stem_[1](stem_[0](x, true), true), false);
    for (InvertedResidual* b : blocks_) h = (*b)(h);
    return (*dropout_)(flatten(adaptive_avg_pool2d(last_(h, true), 1, 1), 1));  // x.mean([2, 3])
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::vector<std::string> head_names() const override { return {"classifier.1"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out;
    for (int i : {0, 1, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}) out.push_back("layers." + std::to_string(i));
    out.push_back("classifier.1");
    return out;
  }
  std::vector<std::string> last_block() const override { return {"layers.13", "layers.14", "layers.15"}; }
  void on_heads_replaced() override { fc_ = &module_at<Linear>("classifier.1"); }

 private:
  std::vector<ConvBn> stem_;
  std::vector<InvertedResidual*> blocks_;
  ConvBn last_;
  Dropout* dropout_;
  Linear* fc_;
};

ArchRegistrar mnasnet(const std::string& name, double alpha) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "MNASNet";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<MNASNet>(name, alpha, classes, seed);
  };
  spec.head_weight = "classifier.1.weight";
  spec.probe = "layers.8.0.layers.0.weight";
  spec.matches = [=](const StateShapes& s) {
    return has_shape(s, "layers.0.weight", {round_to_8(32 * alpha), 3, 3, 3}) &&
           has_shape(s, "layers.8.0.layers.6.weight", {round_to_8(24 * alpha), round_to_8(16 * alpha) * 3, 1, 1}) &&
           shape_at(s, "classifier.1.weight");
  };
  return ArchRegistrar(std::move(spec));
}
const ArchRegistrar kMnasNet05 = mnasnet("mnasnet0_5", 0.5);
const ArchRegistrar kMnasNet075 = mnasnet("mnasnet0_75", 0.75);
const ArchRegistrar kMnasNet10 = mnasnet("mnasnet1_0", 1.0);
const ArchRegistrar kMnasNet13 = mnasnet("mnasnet1_3", 1.3);
}  // namespace
}  // namespace tl::models
