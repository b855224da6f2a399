// DenseNet family (torchvision's densenet.py): densenet121/161/169/201, with torchvision's module names
// ("features.denseblock1.denselayer1.norm1", "features.transition1.conv", "classifier") and initialisation.
// Memory-efficient mode (set_memory_efficient, --memory-efficient): each dense layer's bottleneck is recomputed in
// the backward pass instead of keeping its normalised and rectified input, so the activation memory of a dense
// block grows linearly with its layers instead of quadratically (Pleiss et al. 2017, "Memory-Efficient
// Implementation of DenseNets"; torchvision's memory_efficient=True), for the same results.
// Each dense layer's norm1 runs fused with the concatenation of its inputs and its relu (layers/concat_bn_relu.h;
// set_fused_concat_norm): it reads the block's chunks in place instead of concatenating copies whose size grows
// with the layer's depth, and each chunk's batch statistics are computed once per block, not once per later layer.
// Conv + batch-norm folding (layers/fused.h) does not apply: the dense layers and transitions are pre-activation
// (norm, relu, conv), so no batch norm follows a convolution except the stem's norm0 (one pair of ~120, left
// unfolded).
#include <cmath>

#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/concat_bn_relu.h"
#include "layers/elementwise.h"
#include "layers/pooling.h"
#include "models/registry.h"

namespace tl::models {
namespace {
using nn::BatchNorm2d;
using nn::Conv2d;
using nn::Generator;
using nn::Linear;
using nn::Sequential;

// torchvision DenseNet: kaiming_normal_ with the default fan_in mode.
void kaiming_fan_in(Conv2d& c, Generator& gen) { nn::kaiming_normal(c, gen, nn::FanMode::In); }

// BN-ReLU-Conv1x1 (bottleneck to bn_size * growth) then BN-ReLU-Conv3x3 (growth new channels).
class DenseLayer : public nn::Module {
 public:
  DenseLayer(int64_t in, int64_t growth, int64_t bn_size, Generator& gen) {
    norm1_ = &add_module<BatchNorm2d>("norm1", in);
    conv1_ = &add_module<Conv2d>("conv1", in, bn_size * growth, 1, 1, 0, false, gen);
    norm2_ = &add_module<BatchNorm2d>("norm2", bn_size * growth);
    conv2_ = &add_module<Conv2d>("conv2", bn_size * growth, growth, 3, 1, 1, false, gen);
    kaiming_fan_in(*conv1_, gen);
    kaiming_fan_in(*conv2_, gen);
  }
  // Memory-efficient mode: the bottleneck (norm1, relu, conv1), whose input grows with every layer of the block,
  // keeps nothing and runs again in the backward pass (torchvision's _DenseLayer.call_checkpoint_bottleneck); what
  // is kept per layer no longer grows with its depth. The recomputation reads the block's chunk statistics again.
  bool memory_efficient = false;
  // norm1 and its relu as one op over the block's chunks (layers/concat_bn_relu.h): no concatenation, each chunk's
  // batch statistics computed once per block. Off: concat -> norm1 -> relu (the same results; tests compare).
  bool fused_norm1 = true;
  // `stats`: the block's chunk statistics for this forward pass.
  Variable operator()(const std::vector<Variable>& features, const std::shared_ptr<ChunkStatsCache>& stats) {
    Variable h = memory_efficient
                     ? checkpoint([this, stats](const std::vector<Variable>& f) { return bottleneck(f, *stats); },
                                  features, "dense_bottleneck")
                     : bottleneck(features, *stats);
    return (*conv2_)(relu((*norm2_)(h)));
  }

 private:
  Variable bottleneck(const std::vector<Variable>& features, ChunkStatsCache& stats) {
    if (fused_norm1)
      return (*conv1_)(concat_bn_relu(features, norm1_->weight, norm1_->bias, norm1_->buffers, norm1_->options(),
                                      stats));
    Variable x = features.size() == 1 ? features[0] : concat(features, 1);
    return (*conv1_)(relu((*norm1_)(x)));
  }
  BatchNorm2d *norm1_, *norm2_;
  Conv2d *conv1_, *conv2_;
};

class Transition : public nn::Module {
 public:
  Transition(int64_t in, int64_t out, Generator& gen) {
    norm_ = &add_module<BatchNorm2d>("norm", in);
    conv_ = &add_module<Conv2d>("conv", in, out, 1, 1, 0, false, gen);
    kaiming_fan_in(*conv_, gen);
  }
  Variable operator()(const Variable& x) {
    return avg_pool2d((*conv_)(relu((*norm_)(x))), pool2d_options(2, 2));
  }

 private:
  BatchNorm2d* norm_;
  Conv2d* conv_;
};

class DenseNet : public Model {
 public:
  DenseNet(const std::string& arch, int64_t growth, std::vector<int> block_config, int64_t init_features,
           int64_t num_classes, uint64_t seed)
      : Model(arch, num_classes, final_features(growth, block_config, init_features)) {
    Generator gen(seed);
    auto& features = add_module<Sequential>("features");
    conv0_ = &features.add<Conv2d>("conv0", 3, init_features, 7, 2, 3, false, gen);
    kaiming_fan_in(*conv0_, gen);
    norm0_ = &features.add<BatchNorm2d>("norm0", init_features);
    int64_t channels = init_features;
    for (size_t b = 0; b < block_config.size(); ++b) {
      auto& block = features.add<Sequential>("denseblock" + std::to_string(b + 1));
      std::vector<DenseLayer*> layers;
      for (int l = 0; l < block_config[b]; ++l) {
        layers.push_back(&block.add<DenseLayer>("denselayer" + std::to_string(l + 1), channels, growth, 4, gen));
        channels += growth;
      }
      blocks_.push_back(layers);
      if (b + 1 < block_config.size()) {
        transitions_.push_back(&features.add<Transition>("transition" + std::to_string(b + 1), channels,
                                                         channels / 2, gen));
        channels /= 2;
      }
    }
    norm5_ = &features.add<BatchNorm2d>("norm5", channels);
    classifier_ = &add_module<Linear>("classifier", channels, num_classes, gen);
    classifier_->bias.mutable_value().zero_();  // torchvision: constant_(bias, 0)
    for (size_t b = 0; b < block_config.size(); ++b) {
      block_names_.push_back("features.denseblock" + std::to_string(b + 1));
      if (b + 1 < block_config.size()) block_names_.push_back("features.transition" + std::to_string(b + 1));
    }
  }

  Variable features(const Variable& x) override { return tail(units(stem(x), 0, num_units())); }
  Variable head(const Variable& f) override { return (*classifier_)(f); }
  // Cut after any dense block or transition: features.denseblock1, features.transition1, ..., features.denseblock4.
  std::vector<std::string> cut_points() const override {
    std::vector<std::string> out;
    for (size_t u = 0; u < num_units(); ++u)
      out.push_back(u % 2 == 0 ? "features.denseblock" + std::to_string(u / 2 + 1)
                               : "features.transition" + std::to_string(u / 2 + 1));
    return out;
  }
  Variable run_until(const Variable& x, size_t cut) override { return units(stem(x), 0, cut + 1); }
  Variable run_from(const Variable& h, size_t cut) override { return head(tail(units(h, cut + 1, num_units()))); }

  std::vector<std::string> head_names() const override { return {"classifier"}; }
  // The last dense block (features.norm5, between it and the head, stays frozen).
  std::vector<std::string> last_block() const override {
    return {"features.denseblock" + std::to_string(blocks_.size())};
  }
  std::vector<std::string> blocks() const override {
    std::vector<std::string> out{"features.conv0", "features.norm0"};
    out.insert(out.end(), block_names_.begin(), block_names_.end());
    out.push_back("features.norm5");
    out.push_back("classifier");
    return out;
  }
  void on_heads_replaced() override { classifier_ = &module_at<Linear>("classifier"); }
  bool set_memory_efficient(bool on) override {
    for (auto& block : blocks_)
      for (DenseLayer* layer : block) layer->memory_efficient = on;
    return true;
  }
  bool set_fused_concat_norm(bool on) override {
    for (auto& block : blocks_)
      for (DenseLayer* layer : block) layer->fused_norm1 = on;
    return true;
  }

 private:
  static int64_t final_features(int64_t growth, const std::vector<int>& cfg, int64_t init) {
    int64_t c = init;
    for (size_t b = 0; b < cfg.size(); ++b) {
      c += growth * cfg[b];
      if (b + 1 < cfg.size()) c /= 2;
    }
    return c;
  }
  // The forward pass as units: unit 2b is dense block b + 1, unit 2b + 1 transition b + 1.
  size_t num_units() const { return blocks_.size() + transitions_.size(); }
  Variable stem(const Variable& x) { return max_pool2d(relu((*norm0_)((*conv0_)(x))), pool2d_options(3, 2, 1)); }
  Variable units(Variable h, size_t first, size_t last) {
    for (size_t u = first; u < last; ++u) {
      if (u % 2 == 1) {
        h = (*transitions_[u / 2])(h);
        continue;
      }
      std::vector<Variable> features{h};  // the block's chunks: its input, then each layer's new channels
      auto stats = std::make_shared<ChunkStatsCache>();
      for (DenseLayer* layer : blocks_[u / 2]) features.push_back((*layer)(features, stats));
      h = concat(features, 1);
    }
    return h;
  }
  Variable tail(const Variable& h) { return flatten(adaptive_avg_pool2d(relu((*norm5_)(h)), 1, 1), 1); }
  Conv2d* conv0_;
  BatchNorm2d *norm0_, *norm5_;
  std::vector<std::vector<DenseLayer*>> blocks_;
  std::vector<Transition*> transitions_;
  Linear* classifier_;
  std::vector<std::string> block_names_;
};
// torchvision's configurations: growth rate, layers per block, stem width.
// A state dict is recognised by its layers per block, its growth rate and its stem width.
ArchRegistrar densenet(const std::string& name, int64_t growth, std::vector<int> config, int64_t init) {
  ArchSpec spec;
  spec.name = name;
  spec.family = "DenseNet";
  spec.create = [=](int64_t classes, uint64_t seed) -> std::unique_ptr<Model> {
    return std::make_unique<DenseNet>(name, growth, config, init, classes, seed);
  };
  spec.head_weight = "classifier.weight";
  spec.probe = "features.denseblock1.denselayer1.conv1.weight";
  spec.matches = [=](const StateShapes& s) {
    if (!shape_at(s, "classifier.weight")) return false;
    for (size_t b = 0; b < config.size(); ++b)
      if (count_children(s, "features.denseblock" + std::to_string(b + 1) + ".") != config[b]) return false;
    const Shape* conv0 = shape_at(s, "features.conv0.weight");
    const Shape* g = shape_at(s, "features.denseblock1.denselayer1.conv2.weight");
    return conv0 && g && (*conv0)[0] == init && (*g)[0] == growth;
  };
  return ArchRegistrar(std::move(spec));
}
const ArchRegistrar kDenseNet121 = densenet("densenet121", 32, {6, 12, 24, 16}, 64);
const ArchRegistrar kDenseNet161 = densenet("densenet161", 48, {6, 12, 36, 24}, 96);
const ArchRegistrar kDenseNet169 = densenet("densenet169", 32, {6, 12, 32, 32}, 64);
const ArchRegistrar kDenseNet201 = densenet("densenet201", 32, {6, 12, 48, 32}, 64);
}  // namespace

}  // namespace tl::models
