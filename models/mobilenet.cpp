// MobileNet V2 (torchvision's mobilenetv2.py): a 3x3 stem, 17 inverted residual blocks (1x1 expand, 3x3 depthwise,
// 1x1 linear projection, residual when the shape allows), a 1x1 convolution to 1280 channels, ReLU6 throughout,
// dropout and the head classifier.1. torchvision's initialisation.
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
using nn::ConvBnAct;
using nn::Dropout;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

// torchvision's Conv2dNormActivation with ReLU6: children "0" (conv) and "1" (batch norm).
nn::ConvBnActOptions norm_act(int kernel, int stride = 1, int groups = 1) {
  nn::ConvBnActOptions o;
  o.conv_name = "0";
  o.bn_name = "1";
  o.stride = stride;
  o.padding = (kernel - 1) / 2;
  o.groups = groups;
  o.act = nn::Act::ReLU6;
  return o;
}

class InvertedResidual : public nn::Module {
 public:
  InvertedResidual(int64_t in, int64_t out, int stride, int expand, Generator& gen)
      : residual_(stride == 1 && in == out) {
    const int64_t hidden = static_cast<int64_t>(std::lround(static_cast<double>(in) * expand));
    auto& conv = add_module<Sequential>("conv");
    int index = 0;
    if (expand != 1) expand_ = &conv.add<ConvBnAct>(std::to_string(index++), in, hidden, 1, norm_act(1), gen);
    depthwise_ = &conv.add<ConvBnAct>(std::to_string(index++), hidden, hidden, 3, norm_act(3, stride, static_cast<int>(hidden)), gen);
    Conv2d& project = conv.add<Conv2d>(std::to_string(index++), hidden, out, 1, 1, 0, false, gen);
    project_ = {project, conv.add<BatchNorm2d>(std::to_string(index++), out)};
  }
  Variable operator()(const Variable& x) {
    Variable h = depthwise_->operator()(expand_ ? (*expand_)(x) : x);
    return project_(h, false, residual_ ? &x : nullptr);  // linear bottleneck
  }

 private:
  bool residual_;
  ConvBnAct* expand_ = nullptr;
  ConvBnAct* depthwise_;
  nn::ConvBn project_;
};

class MobileNetV2 : public Model {
 public:
  MobileNetV2(int64_t num_classes, uint64_t seed, double dropout_p = 0.2) : Model("mobilenet_v2", num_classes, 1280) {
    Generator gen(seed);
    auto& features = add_module<Sequential>("features");
    stem_ = &features.add<ConvBnAct>("0", 3, 32, 3, norm_act(3, 2), gen);
    const int settings[][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                               {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};  // t, c, n, s
    int64_t in = 32;
    int index = 1;
    for (const auto& s : settings) {
      for (int i = 0; i < s[2]; ++i) {
        blocks_.push_back(&features.add<InvertedResidual>(std::to_string(index++), in, s[1], i == 0 ? s[3] : 1, s[0], gen));
        in = s[1];
      }
    }
    last_ = &features.add<ConvBnAct>(std::to_string(index), in, 1280, 1, norm_act(1), gen);
    auto& classifier = add_module<Sequential>("classifier");
    dropout_ = &classifier.add<Dropout>("0", dropout_p, seed ^ 0x9e3779b97f4a7c15ULL);
    fc_ = &classifier.add<Linear>("1", 1280, num_classes, gen);
    // torchvision: kaiming_normal_(fan_out) for convolutions, normal(0, 0.01) and zero bias for the linear layer.
    for (auto& [name, m] : named_modules())
      if (auto* c = dynamic_cast<Conv2d*>(m)) nn::kaiming_normal(*c, gen, nn::FanMode::Out);
    fc_->weight.mutable_value() = gen.normal(fc_->weight.shape(), 0.01);
    fc_->bias.mutable_value().zero_();
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    Variable h = (*stem_)(x);
    for (InvertedResidual* b : blocks_) h = (*b)(h);
    return (*dropout_)(flatten(adaptive_avg_pool2d((*last_)(h), 1, 1), 1));
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::vector<std::string> head_names() const override { return {"classifier.1"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out;
    for (size_t i = 0; i <= blocks_.size() + 1; ++i) out.push_back("features." + std::to_string(i));
    out.push_back("classifier.1");
    return out;
  }
  void on_heads_replaced() override { fc_ = &module_at<Linear>("classifier.1"); }

 private:
  ConvBnAct* stem_;
  std::vector<InvertedResidual*> blocks_;
  ConvBnAct* last_;
  Dropout* dropout_;
  Linear* fc_;
};

ArchSpec mobilenet_v2_spec() {
  ArchSpec spec;
  spec.name = "mobilenet_v2";
  spec.family = "MobileNet V2";
  spec.create = [](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<MobileNetV2>(classes, seed);
  };
  spec.head_weight = "classifier.1.weight";
  spec.probe = "features.1.conv.0.0.weight";
  spec.matches = [](const StateShapes& s) {
    return has_shape(s, "features.0.0.weight", {32, 3, 3, 3}) && shape_at(s, "features.18.0.weight") &&
           shape_at(s, "classifier.1.weight");
  };
  return spec;
}
const ArchRegistrar kMobileNetV2(mobilenet_v2_spec());
}  // namespace
}  // namespace tl::models
