// GoogLeNet (torchvision's googlenet.py, Inception v1 with batch norm): BasicConv2d stem, nine Inception modules
// (1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1 branches concatenated), two auxiliary classifiers aux1 and aux2 run in
// training mode (loss weight 0.3 each, as torchvision's training reference), dropout and the head fc.
// transform_input on, as torchvision sets it for its pretrained weights; batch norm eps 0.001.
#include <cmath>

#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/elementwise.h"
#include "layers/fused.h"
#include "layers/pooling.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::ConvBnAct;
using nn::Dropout;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

// torchvision's BasicConv2d: conv (no bias) "conv", batch norm "bn" with eps 0.001, ReLU.
nn::ConvBnActOptions basic(nn::Size2 padding = 0, nn::Size2 stride = 1) {
  nn::ConvBnActOptions o;
  o.eps = 1e-3;
  o.padding = padding;
  o.stride = stride;
  return o;
}

class InceptionBlock : public nn::Module {
 public:
  InceptionBlock(int64_t in, int64_t c1, int64_t c3r, int64_t c3, int64_t c5r, int64_t c5, int64_t pool, Generator& gen)
      : b1_(add_module<ConvBnAct>("branch1", in, c1, 1, basic(), gen)) {
    auto& b2 = add_module<Sequential>("branch2");
    b2_ = {&b2.add<ConvBnAct>("0", in, c3r, 1, basic(), gen), &b2.add<ConvBnAct>("1", c3r, c3, 3, basic(1), gen)};
    auto& b3 = add_module<Sequential>("branch3");  // torchvision uses 3x3 here (its "5x5" branch)
    b3_ = {&b3.add<ConvBnAct>("0", in, c5r, 1, basic(), gen), &b3.add<ConvBnAct>("1", c5r, c5, 3, basic(1), gen)};
    auto& b4 = add_module<Sequential>("branch4");  // branch4.0 is the max pool
    b4_ = &b4.add<ConvBnAct>("1", in, pool, 1, basic(), gen);
  }
  Variable operator()(const Variable& x) {
    return concat({b1_(x), (*b2_[1])((*b2_[0])(x)), (*b3_[1])((*b3_[0])(x)),
                   (*b4_)(max_pool2d(x, pool2d_options(3, 1, 1, true)))},
                  1);
  }

 private:
  ConvBnAct& b1_;
  std::vector<ConvBnAct*> b2_, b3_;
  ConvBnAct* b4_;
};

class Aux : public nn::Module {
 public:
  Aux(int64_t in, int64_t num_classes, double dropout_p, uint64_t seed, Generator& gen)
      : conv_(add_module<ConvBnAct>("conv", in, 128, 1, basic(), gen)),
        fc1_(add_module<Linear>("fc1", 2048, 1024, gen)),
        dropout_(add_module<Dropout>("dropout", dropout_p, seed)) {
    add_module<Linear>("fc2", 1024, num_classes, gen);
  }
  Variable operator()(const Variable& x) {
    Variable h = flatten(conv_(adaptive_avg_pool2d(x, 4, 4)), 1);
    return child<Linear>("fc2")(dropout_(relu(fc1_(h))));  // fc2: a head, replaced by reset_head
  }

 private:
  ConvBnAct& conv_;
  Linear& fc1_;
  Dropout& dropout_;
};

class GoogLeNet : public Model {
 public:
  GoogLeNet(int64_t num_classes, uint64_t seed, double dropout_p = 0.2, double dropout_aux = 0.7)
      : Model("googlenet", num_classes, 1024) {
    Generator gen(seed);
    stem_ = {&add_module<ConvBnAct>("conv1", 3, 64, 7, basic(3, 2), gen),
             &add_module<ConvBnAct>("conv2", 64, 64, 1, basic(), gen),
             &add_module<ConvBnAct>("conv3", 64, 192, 3, basic(1), gen)};
    struct Cfg {
      const char* name;
      int64_t in, c1, c3r, c3, c5r, c5, pool;
    };
    const Cfg cfg[] = {{"inception3a", 192, 64, 96, 128, 16, 32, 32},    {"inception3b", 256, 128, 128, 192, 32, 96, 64},
                       {"inception4a", 480, 192, 96, 208, 16, 48, 64},   {"inception4b", 512, 160, 112, 224, 24, 64, 64},
                       {"inception4c", 512, 128, 128, 256, 24, 64, 64},  {"inception4d", 512, 112, 144, 288, 32, 64, 64},
                       {"inception4e", 528, 256, 160, 320, 32, 128, 128}, {"inception5a", 832, 256, 160, 320, 32, 128, 128},
                       {"inception5b", 832, 384, 192, 384, 48, 128, 128}};
    for (const Cfg& c : cfg)
      blocks_.push_back(&add_module<InceptionBlock>(c.name, c.in, c.c1, c.c3r, c.c3, c.c5r, c.c5, c.pool, gen));
    aux1_ = &add_module<Aux>("aux1", 512, num_classes, dropout_aux, seed ^ 0x1111, gen);
    aux2_ = &add_module<Aux>("aux2", 528, num_classes, dropout_aux, seed ^ 0x2222, gen);
    dropout_ = &add_module<Dropout>("dropout", dropout_p, seed ^ 0x9e3779b97f4a7c15ULL);
    fc_ = &add_module<Linear>("fc", 1024, num_classes, gen);
    init_weights(gen);
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    aux_.clear();
    Variable h = (*stem_[0])(transform_input_(x));
    h = max_pool2d(h, pool2d_options(3, 2, 0, true));
    h = (*stem_[2])((*stem_[1])(h));
    h = max_pool2d(h, pool2d_options(3, 2, 0, true));
    for (size_t i = 0; i < blocks_.size(); ++i) {
      if (i == 2) h = max_pool2d(h, pool2d_options(3, 2, 0, true));  // before inception4a
      if (i == 7) h = max_pool2d(h, pool2d_options(2, 2, 0, true));  // before inception5a
      h = (*blocks_[i])(h);
      if (run_aux() && i == 2) aux_.push_back({"aux1", (*aux1_)(h), 0.3});  // after inception4a
      if (run_aux() && i == 5) aux_.push_back({"aux2", (*aux2_)(h), 0.3});  // after inception4d
    }
    return (*dropout_)(flatten(adaptive_avg_pool2d(h, 1, 1), 1));
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::vector<std::string> head_names() const override {
    if (!has_aux()) return {"fc"};
    return {"fc", "aux1.fc2", "aux2.fc2"};
  }
  std::vector<std::string> aux_modules() const override { return {"aux1", "aux2"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out{"conv1", "conv2", "conv3"};
    for (const char* b : {"inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d",
                          "inception4e", "inception5a", "inception5b"})
      out.push_back(b);
    if (has_aux()) out.insert(out.end(), {"aux1", "aux2"});
    out.push_back("fc");
    return out;
  }
  std::vector<std::string> last_block() const override { return {"inception5b"}; }
  void on_heads_replaced() override {
    fc_ = &module_at<Linear>("fc");
    if (!has_aux()) aux1_ = aux2_ = nullptr;
  }

 private:
  // torchvision's init_weights: trunc_normal_(std 0.01, a=-2, b=2) for convolutions and linear layers (the
  // bounds are absolute, 200 std away: a plain normal), batch norm weight 1 and bias 0.
  void init_weights(Generator& gen) {
    for (auto& [name, m] : named_modules()) {
      if (auto* c = dynamic_cast<nn::Conv2d*>(m)) c->weight.mutable_value() = gen.normal(c->weight.shape(), 0.01);
      if (auto* l = dynamic_cast<Linear*>(m)) l->weight.mutable_value() = gen.normal(l->weight.shape(), 0.01);
    }
  }
  std::vector<ConvBnAct*> stem_;
  std::vector<InceptionBlock*> blocks_;
  Aux *aux1_, *aux2_;
  ImageNetToUnitRange transform_input_;
  Dropout* dropout_;
  Linear* fc_;
};

ArchSpec googlenet_spec() {
  ArchSpec spec;
  spec.name = "googlenet";
  spec.family = "GoogLeNet";
  spec.create = [](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<GoogLeNet>(classes, seed);
  };
  spec.head_weight = "fc.weight";
  spec.probe = "inception3a.branch1.conv.weight";
  spec.matches = [](const StateShapes& s) {
    return shape_at(s, "inception3a.branch1.conv.weight") && shape_at(s, "inception5b.branch4.1.conv.weight") &&
           shape_at(s, "fc.weight");
  };
  return spec;
}
const ArchRegistrar kGoogLeNet(googlenet_spec());
}  // namespace
}  // namespace tl::models
