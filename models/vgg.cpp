// VGG 11/13/16/19 with and without batch norm (torchvision's vgg.py, configurations "A", "B", "D", "E"):
// features.<index> convolutions (and batch norms), avgpool to 7x7, classifier.0/3/6 linear layers with ReLU and
// dropout between; torchvision's initialisation.
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

class VGG : public Model {
 public:
  // `cfg`: output channels of each convolution, 0 for a max pool.
  VGG(const std::string& arch, const std::vector<int>& cfg, bool batch_norm, int64_t num_classes, uint64_t seed,
      double dropout_p = 0.5)
      : Model(arch, num_classes, 4096) {
    Generator gen(seed);
    auto& features = add_module<Sequential>("features");
    int64_t in = 3;
    int index = 0;
    for (int v : cfg) {
      Stage s;
      if (v == 0) {
        s.pool = true;
        index += 1;
      } else {
        s.conv = &features.add<Conv2d>(std::to_string(index), in, v, 3, 1, 1, true, gen);
        nn::kaiming_normal(*s.conv, gen, nn::FanMode::Out);  // torchvision: kaiming_normal_(fan_out, relu), bias 0
        s.conv->bias.mutable_value().zero_();
        if (batch_norm) s.conv_bn = {*s.conv, features.add<BatchNorm2d>(std::to_string(index + 1), v)};
        index += batch_norm ? 3 : 2;
        in = v;
      }
      stages_.push_back(s);
    }
    auto& classifier = add_module<Sequential>("classifier");
    const uint64_t dropout_seed = seed ^ 0x9e3779b97f4a7c15ULL;
    fc_[0] = &classifier.add<Linear>("0", 512 * 7 * 7, 4096, gen);
    drop_[0] = &classifier.add<nn::Dropout>("2", dropout_p, dropout_seed);
    fc_[1] = &classifier.add<Linear>("3", 4096, 4096, gen);
    drop_[1] = &classifier.add<nn::Dropout>("5", dropout_p, dropout_seed + 1);
    fc_[2] = &classifier.add<Linear>("6", 4096, num_classes, gen);
    for (Linear* l : fc_) {  // torchvision: normal_(0, 0.01), bias 0
      l->weight.mutable_value() = gen.normal(l->weight.shape(), 0.01);
      l->bias.mutable_value().zero_();
    }
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    Variable h = x;
    for (Stage& s : stages_) {
      if (s.pool) {
        h = max_pool2d(h, pool2d_options(2, 2));
      } else {
        // vgg16_bn: conv-bn-relu as one nn::ConvBn (folded in a frozen prefix with running statistics)
        h = s.conv_bn ? s.conv_bn(h, true) : relu((*s.conv)(h));
      }
    }
    h = flatten(adaptive_avg_pool2d(h, 7, 7), 1);
    h = (*drop_[0])(relu((*fc_[0])(h)));
    return (*drop_[1])(relu((*fc_[1])(h)));
  }
  Variable head(const Variable& f) override { return (*fc_[2])(f); }

  std::vector<std::string> head_names() const override { return {"classifier.6"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out;
    int index = 0;
    for (const Stage& s : stages_) {
      if (s.pool) {
        index += 1;
        continue;
      }
      out.push_back("features." + std::to_string(index));
      if (s.conv_bn) out.push_back("features." + std::to_string(index + 1));
      index += s.conv_bn ? 3 : 2;
    }
    out.insert(out.end(), {"classifier.0", "classifier.3", "classifier.6"});
    return out;
  }
  // The last convolution stage (after the fourth pool, Keras's "block5") and the two hidden linear layers.
  std::vector<std::string> last_block() const override {
    std::vector<std::string> out;
    int index = 0, pools = 0;
    for (const Stage& s : stages_) {
      if (s.pool) {
        ++pools;
        index += 1;
        continue;
      }
      if (pools == 4) {
        out.push_back("features." + std::to_string(index));
        if (s.conv_bn) out.push_back("features." + std::to_string(index + 1));
      }
      index += s.conv_bn ? 3 : 2;
    }
    out.insert(out.end(), {"classifier.0", "classifier.3"});
    return out;
  }
  void on_heads_replaced() override { fc_[2] = &module_at<Linear>("classifier.6"); }

 private:
  struct Stage {
    bool pool = false;
    Conv2d* conv = nullptr;
    nn::ConvBn conv_bn;  // with batch norm: the convolution and its batch norm
  };
  std::vector<Stage> stages_;
  Linear* fc_[3];
  nn::Dropout* drop_[2];
};
// torchvision's configurations A, B, D, E (0: max pool), each with and without batch norm.
// A state dict is recognised by its convolutions' output channels in order (features.<i>.weight of rank 4)
// and whether features.1 is a batch norm.
ArchRegistrar vgg(const std::string& name, std::vector<int> cfg, bool bn) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "VGG";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<VGG>(name, cfg, bn, classes, seed);
  };
  spec.head_weight = "classifier.6.weight";
  spec.probe = "features.0.weight";
  spec.matches = [=](const StateShapes& s) {
    if (!shape_at(s, "classifier.6.weight") || (shape_at(s, "features.1.running_mean") != nullptr) != bn)
      return false;
    std::vector<int> channels;
    for (int i = 0; i < 200; ++i) {
      const Shape* w = shape_at(s, "features." + std::to_string(i) + ".weight");
      if (w && w->size() == 4) channels.push_back(static_cast<int>((*w)[0]));
    }
    std::vector<int> expected;
    for (int v : cfg)
      if (v) expected.push_back(v);
    return channels == expected;
  };
  return ArchRegistrar(std::move(spec));
}
const std::vector<int> kCfgA{64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
const std::vector<int> kCfgB{64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
const std::vector<int> kCfgD{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
const std::vector<int> kCfgE{64,  64,  0,   128, 128, 0,   256, 256, 256, 256, 0,
                             512, 512, 512, 512, 0,   512, 512, 512, 512, 0};
const ArchRegistrar kVgg11 = vgg("vgg11", kCfgA, false), kVgg11Bn = vgg("vgg11_bn", kCfgA, true);
const ArchRegistrar kVgg13 = vgg("vgg13", kCfgB, false), kVgg13Bn = vgg("vgg13_bn", kCfgB, true);
const ArchRegistrar kVgg16 = vgg("vgg16", kCfgD, false), kVgg16Bn = vgg("vgg16_bn", kCfgD, true);
const ArchRegistrar kVgg19 = vgg("vgg19", kCfgE, false), kVgg19Bn = vgg("vgg19_bn", kCfgE, true);
}  // namespace

}  // namespace tl::models
