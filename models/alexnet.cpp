// AlexNet (torchvision's alexnet.py, the one-GPU variant of "One weird trick"): features.0/3/6/8/10 convolutions
// with ReLU and three max pools, avgpool to 6x6, classifier.1/4/6 linear layers with dropout before the first
// two. PyTorch's default initialisation (torchvision sets none).
#include "layers/activation.h"
#include "layers/elementwise.h"
#include "layers/pooling.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::Conv2d;
using nn::Dropout;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

class AlexNet : public Model {
 public:
  AlexNet(int64_t num_classes, uint64_t seed, double dropout_p = 0.5) : Model("alexnet", num_classes, 4096) {
    Generator gen(seed);
    auto& features = add_module<Sequential>("features");
    convs_ = {&features.add<Conv2d>("0", 3, 64, 11, 4, 2, true, gen),
              &features.add<Conv2d>("3", 64, 192, 5, 1, 2, true, gen),
              &features.add<Conv2d>("6", 192, 384, 3, 1, 1, true, gen),
              &features.add<Conv2d>("8", 384, 256, 3, 1, 1, true, gen),
              &features.add<Conv2d>("10", 256, 256, 3, 1, 1, true, gen)};
    auto& classifier = add_module<Sequential>("classifier");
    const uint64_t dropout_seed = seed ^ 0x9e3779b97f4a7c15ULL;
    drop_[0] = &classifier.add<Dropout>("0", dropout_p, dropout_seed);
    fc_[0] = &classifier.add<Linear>("1", 256 * 6 * 6, 4096, gen);
    drop_[1] = &classifier.add<Dropout>("3", dropout_p, dropout_seed + 1);
    fc_[1] = &classifier.add<Linear>("4", 4096, 4096, gen);
    fc_[2] = &classifier.add<Linear>("6", 4096, num_classes, gen);
  }

  Variable features(const Variable& x) override {
    Variable h = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      h = relu((*convs_[i])(h));
      if (i == 0 || i == 1 || i == 4) h = max_pool2d(h, pool2d_options(3, 2));
    }
    h = flatten(adaptive_avg_pool2d(h, 6, 6), 1);
    h = relu((*fc_[0])((*drop_[0])(h)));
    return relu((*fc_[1])((*drop_[1])(h)));
  }
  Variable head(const Variable& f) override { return (*fc_[2])(f); }

  std::vector<std::string> head_names() const override { return {"classifier.6"}; }
  std::vector<std::string> blocks() const override {
    return {"features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4",
            "classifier.6"};
  }
  // The last convolution and the two hidden linear layers.
  std::vector<std::string> last_block() const override { return {"features.10", "classifier.1", "classifier.4"}; }
  void on_heads_replaced() override { fc_[2] = &module_at<Linear>("classifier.6"); }

 private:
  std::vector<Conv2d*> convs_;
  Dropout* drop_[2];
  Linear* fc_[3];
};

ArchSpec alexnet_spec() {
  ArchSpec spec;
  spec.name = "alexnet";
  spec.family = "AlexNet";
  spec.create = [](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<AlexNet>(classes, seed);
  };
  spec.head_weight = "classifier.6.weight";
  spec.probe = "classifier.4.weight";
  spec.matches = [](const StateShapes& s) {
    return has_shape(s, "features.0.weight", {64, 3, 11, 11}) && has_shape(s, "classifier.1.weight", {4096, 9216}) &&
           shape_at(s, "classifier.6.weight");
  };
  return spec;
}
const ArchRegistrar kAlexNet(alexnet_spec());
}  // namespace
}  // namespace tl::models
