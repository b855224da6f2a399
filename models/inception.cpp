// Inception v3 (torchvision's inception.py): the BasicConv2d stem, Mixed_5b..Mixed_7c (InceptionA to E, with
// factorised 1x7 / 7x1 and 1x3 / 3x1 convolutions), the auxiliary classifier AuxLogits after Mixed_6e (training
// only, loss weight 0.4 as torchvision's recipe), dropout and the head fc. 299 px input (resize 342), transform_input
// on as torchvision sets it for its pretrained weights, batch norm eps 0.001. The auxiliary classifier needs
// Mixed_6e's output to be at least 17 px (input about 299): use --no-aux for smaller images.
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
using nn::Size2;

// A module made of BasicConv2d children (conv "conv", batch norm "bn" with eps 0.001, ReLU) named as torchvision.
class Mixed : public nn::Module {
 protected:
  explicit Mixed(Generator& gen) : gen_(gen) {}
  ConvBnAct& bc(const std::string& name, int64_t in, int64_t out, Size2 kernel, Size2 padding = 0, Size2 stride = 1) {
    nn::ConvBnActOptions o;
    o.eps = 1e-3;
    o.padding = padding;
    o.stride = stride;
    return add_module<ConvBnAct>(name, in, out, kernel, o, gen_);
  }
  static Variable avg3(const Variable& x) { return avg_pool2d(x, pool2d_options(3, 1, 1)); }  // count_include_pad
  static Variable max3s2(const Variable& x) { return max_pool2d(x, pool2d_options(3, 2)); }

 private:
  Generator& gen_;
};

class InceptionA : public Mixed {
 public:
  InceptionA(int64_t in, int64_t pool_features, Generator& gen)
      : Mixed(gen), b1_(bc("branch1x1", in, 64, 1)), b5a_(bc("branch5x5_1", in, 48, 1)),
        b5b_(bc("branch5x5_2", 48, 64, 5, 2)), d1_(bc("branch3x3dbl_1", in, 64, 1)),
        d2_(bc("branch3x3dbl_2", 64, 96, 3, 1)), d3_(bc("branch3x3dbl_3", 96, 96, 3, 1)),
        pool_(bc("branch_pool", in, pool_features, 1)) {}
  Variable operator()(const Variable& x) { return concat({b1_(x), b5b_(b5a_(x)), d3_(d2_(d1_(x))), pool_(avg3(x))}, 1); }

 private:
  ConvBnAct &b1_, &b5a_, &b5b_, &d1_, &d2_, &d3_, &pool_;
};

class InceptionB : public Mixed {
 public:
  InceptionB(int64_t in, Generator& gen)
      : Mixed(gen), b3_(bc("branch3x3", in, 384, 3, 0, 2)), d1_(bc("branch3x3dbl_1", in, 64, 1)),
        d2_(bc("branch3x3dbl_2", 64, 96, 3, 1)), d3_(bc("branch3x3dbl_3", 96, 96, 3, 0, 2)) {}
  Variable operator()(const Variable& x) { return concat({b3_(x), d3_(d2_(d1_(x))), max3s2(x)}, 1); }

 private:
  ConvBnAct &b3_, &d1_, &d2_, &d3_;
};

class InceptionC : public Mixed {
 public:
  InceptionC(int64_t in, int64_t c7, Generator& gen)
      : Mixed(gen), b1_(bc("branch1x1", in, 192, 1)), s1_(bc("branch7x7_1", in, c7, 1)),
        s2_(bc("branch7x7_2", c7, c7, {1, 7}, {0, 3})), s3_(bc("branch7x7_3", c7, 192, {7, 1}, {3, 0})),
        d1_(bc("branch7x7dbl_1", in, c7, 1)), d2_(bc("branch7x7dbl_2", c7, c7, {7, 1}, {3, 0})),
        d3_(bc("branch7x7dbl_3", c7, c7, {1, 7}, {0, 3})), d4_(bc("branch7x7dbl_4", c7, c7, {7, 1}, {3, 0})),
        d5_(bc("branch7x7dbl_5", c7, 192, {1, 7}, {0, 3})), pool_(bc("branch_pool", in, 192, 1)) {}
  Variable operator()(const Variable& x) {
    return concat({b1_(x), s3_(s2_(s1_(x))), d5_(d4_(d3_(d2_(d1_(x))))), pool_(avg3(x))}, 1);
  }

 private:
  ConvBnAct &b1_, &s1_, &s2_, &s3_, &d1_, &d2_, &d3_, &d4_, &d5_, &pool_;
};

class InceptionD : public Mixed {
 public:
  InceptionD(int64_t in, Generator& gen)
      : Mixed(gen), t1_(bc("branch3x3_1", in, 192, 1)), t2_(bc("branch3x3_2", 192, 320, 3, 0, 2)),
        s1_(bc("branch7x7x3_1", in, 192, 1)), s2_(bc("branch7x7x3_2", 192, 192, {1, 7}, {0, 3})),
        s3_(bc("branch7x7x3_3", 192, 192, {7, 1}, {3, 0})), s4_(bc("branch7x7x3_4", 192, 192, 3, 0, 2)) {}
  Variable operator()(const Variable& x) { return concat({t2_(t1_(x)), s4_(s3_(s2_(s1_(x)))), max3s2(x)}, 1); }

 private:
  ConvBnAct &t1_, &t2_, &s1_, &s2_, &s3_, &s4_;
};

class InceptionE : public Mixed {
 public:
  InceptionE(int64_t in, Generator& gen)
      : Mixed(gen), b1_(bc("branch1x1", in, 320, 1)), t1_(bc("branch3x3_1", in, 384, 1)),
        t2a_(bc("branch3x3_2a", 384, 384, {1, 3}, {0, 1})), t2b_(bc("branch3x3_2b", 384, 384, {3, 1}, {1, 0})),
        d1_(bc("branch3x3dbl_1", in, 448, 1)), d2_(bc("branch3x3dbl_2", 448, 384, 3, 1)),
        d3a_(bc("branch3x3dbl_3a", 384, 384, {1, 3}, {0, 1})), d3b_(bc("branch3x3dbl_3b", 384, 384, {3, 1}, {1, 0})),
        pool_(bc("branch_pool", in, 192, 1)) {}
  Variable operator()(const Variable& x) {
    Variable t = t1_(x), d = d2_(d1_(x));
    return concat({b1_(x), concat({t2a_(t), t2b_(t)}, 1), concat({d3a_(d), d3b_(d)}, 1), pool_(avg3(x))}, 1);
  }

 private:
  ConvBnAct &b1_, &t1_, &t2a_, &t2b_, &d1_, &d2_, &d3a_, &d3b_, &pool_;
};

class InceptionAux : public Mixed {
 public:
  InceptionAux(int64_t in, int64_t num_classes, Generator& gen)
      : Mixed(gen), conv0_(bc("conv0", in, 128, 1)), conv1_(bc("conv1", 128, 768, 5)) {
    add_module<Linear>("fc", 768, num_classes, gen);
  }
  Variable operator()(const Variable& x) {
    const Variable& v = x;
    TL_CHECK(v.shape()[2] >= 17 && v.shape()[3] >= 17, ShapeError, "inception_v3's auxiliary classifier needs "
             "Mixed_6e's output to be at least 17x17 (images of about 299 px), got ", v.value().str(),
             ": use 299 px images, or --no-aux");
    Variable h = conv1_(conv0_(avg_pool2d(x, pool2d_options(5, 3))));
    return child<Linear>("fc")(flatten(adaptive_avg_pool2d(h, 1, 1), 1));  // fc: a head, replaced by reset_head
  }

 private:
  ConvBnAct &conv0_, &conv1_;
};

class Inception3 : public Model {
 public:
  Inception3(int64_t num_classes, uint64_t seed, double dropout_p = 0.5) : Model("inception_v3", num_classes, 2048) {
    Generator gen(seed);
    nn::ConvBnActOptions o;
    o.eps = 1e-3;
    auto stem = [&](const char* name, int64_t in, int64_t out, int k, int stride, int pad) {
      nn::ConvBnActOptions so = o;
      so.stride = stride;
      so.padding = pad;
      stem_.push_back(&add_module<ConvBnAct>(name, in, out, k, so, gen));
    };
    stem("Conv2d_1a_3x3", 3, 32, 3, 2, 0);
    stem("Conv2d_2a_3x3", 32, 32, 3, 1, 0);
    stem("Conv2d_2b_3x3", 32, 64, 3, 1, 1);
    stem("Conv2d_3b_1x1", 64, 80, 1, 1, 0);
    stem("Conv2d_4a_3x3", 80, 192, 3, 1, 0);
    a_ = {&add_module<InceptionA>("Mixed_5b", 192, 32, gen), &add_module<InceptionA>("Mixed_5c", 256, 64, gen),
          &add_module<InceptionA>("Mixed_5d", 288, 64, gen)};
    b_ = &add_module<InceptionB>("Mixed_6a", 288, gen);
    c_ = {&add_module<InceptionC>("Mixed_6b", 768, 128, gen), &add_module<InceptionC>("Mixed_6c", 768, 160, gen),
          &add_module<InceptionC>("Mixed_6d", 768, 160, gen), &add_module<InceptionC>("Mixed_6e", 768, 192, gen)};
    aux_logits_ = &add_module<InceptionAux>("AuxLogits", 768, num_classes, gen);
    d_ = &add_module<InceptionD>("Mixed_7a", 768, gen);
    e_ = {&add_module<InceptionE>("Mixed_7b", 1280, gen), &add_module<InceptionE>("Mixed_7c", 2048, gen)};
    dropout_ = &add_module<Dropout>("dropout", dropout_p, seed ^ 0x9e3779b97f4a7c15ULL);
    fc_ = &add_module<Linear>("fc", 2048, num_classes, gen);
    // torchvision's init: trunc_normal_(std 0.1 by default, 0.01 / 0.001 for the aux conv1 / fc); the bounds
    // (+-2, absolute) are far out, so a plain normal.
    for (auto& [name, m] : named_modules()) {
      const double std = name == "AuxLogits.conv1.conv" ? 0.01 : name == "AuxLogits.fc" ? 0.001 : 0.1;
      if (auto* c = dynamic_cast<nn::Conv2d*>(m)) c->weight.mutable_value() = gen.normal(c->weight.shape(), std);
      if (auto* l = dynamic_cast<Linear*>(m)) l->weight.mutable_value() = gen.normal(l->weight.shape(), std);
    }
  }

  Variable features(const Variable& x) override {
    CountConvBn count(*this);
    aux_.clear();
    Variable h = transform_input_(x);
    for (size_t i = 0; i < stem_.size(); ++i) {
      h = (*stem_[i])(h);
      if (i == 2 || i == 4) h = max_pool2d(h, pool2d_options(3, 2));  // maxpool1, maxpool2
    }
    for (InceptionA* a : a_) h = (*a)(h);
    h = (*b_)(h);
    for (InceptionC* c : c_) h = (*c)(h);
    if (run_aux()) aux_.push_back({"AuxLogits", (*aux_logits_)(h), 0.4});
    h = (*d_)(h);
    for (InceptionE* e : e_) h = (*e)(h);
    return (*dropout_)(flatten(adaptive_avg_pool2d(h, 1, 1), 1));
  }
  Variable head(const Variable& f) override { return (*fc_)(f); }

  std::vector<std::string> head_names() const override {
    if (!has_aux()) return {"fc"};
    return {"fc", "AuxLogits.fc"};
  }
  std::vector<std::string> aux_modules() const override { return {"AuxLogits"}; }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out{"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                                 "Mixed_5b",      "Mixed_5c",      "Mixed_5d",      "Mixed_6a",      "Mixed_6b",
                                 "Mixed_6c",      "Mixed_6d",      "Mixed_6e"};
    if (has_aux()) out.push_back("AuxLogits");
    out.insert(out.end(), {"Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"});
    return out;
  }
  std::vector<std::string> last_block() const override { return {"Mixed_7c"}; }
  void on_heads_replaced() override {
    fc_ = &module_at<Linear>("fc");
    if (!has_aux()) aux_logits_ = nullptr;
  }

 private:
  std::vector<ConvBnAct*> stem_;
  std::vector<InceptionA*> a_;
  InceptionB* b_;
  std::vector<InceptionC*> c_;
  InceptionAux* aux_logits_;
  InceptionD* d_;
  std::vector<InceptionE*> e_;
  ImageNetToUnitRange transform_input_;
  Dropout* dropout_;
  Linear* fc_;
};

ArchSpec inception_v3_spec() {
  ArchSpec spec;
  spec.name = "inception_v3";
  spec.family = "Inception v3";
  spec.create = [](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<Inception3>(classes, seed);
  };
  spec.input_size = 299;
  spec.resize_size = 342;
  spec.head_weight = "fc.weight";
  spec.probe = "Mixed_5b.branch1x1.conv.weight";
  spec.matches = [](const StateShapes& s) {
    return shape_at(s, "Conv2d_1a_3x3.conv.weight") && shape_at(s, "Mixed_7c.branch_pool.conv.weight") &&
           shape_at(s, "fc.weight");
  };
  return spec;
}
const ArchRegistrar kInceptionV3(inception_v3_spec());
}  // namespace
}  // namespace tl::models
