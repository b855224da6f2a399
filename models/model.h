// Models: hand-written torchvision graphs whose parameter names are torchvision's state_dict keys, one file per
// family under models/, each registering its names (models/registry.h). Each model knows its heads and its blocks,
// so that a user can replace the heads for N classes and freeze "up to layer3" or train "denseblock4 and after".
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layers/fused.h"
#include "layers/module.h"

namespace tl::models {

class Model : public nn::Module {
 public:
  // logits (N, num_classes) for images (N, 3, H, W): the head applied to the features.
  Variable forward(const Variable& x) { return head(features(x)); }
  // The head's input (N, head_in_features()) for images (N, 3, H, W): everything below the head. When all of it is
  // frozen and deterministic, it depends on the image alone, so it can be computed once (train/feature_cache.h).
  virtual Variable features(const Variable& x) = 0;
  // logits (N, num_classes) from features (N, head_in_features()).
  virtual Variable head(const Variable& features) = 0;
  // The forward pass cut at a block boundary, for a feature cache below the first trainable block (train/
  // feature_cache.h). cut_points() names, in forward order, the blocks (of blocks()) after which the pass can be cut;
  // the head boundary (features() / head()) is always there and not listed. For cut point i:
  //   forward(x) == run_from(run_until(x, i), i)
  // run_until runs the images up to and including block cut_points()[i], run_from the rest, heads included.
  // Default: no cut points.
  virtual std::vector<std::string> cut_points() const { return {}; }
  virtual Variable run_until(const Variable& x, size_t cut);
  virtual Variable run_from(const Variable& h, size_t cut);
  // Either boundary: cut < 0 is the head boundary (features() / head()), else cut point `cut`.
  Variable forward_until(const Variable& x, int cut) { return cut < 0 ? features(x) : run_until(x, static_cast<size_t>(cut)); }
  Variable forward_from(const Variable& h, int cut) { return cut < 0 ? head(h) : run_from(h, static_cast<size_t>(cut)); }
  // True when features() in train() mode draws random numbers (dropout below the head), so that two calls on
  // the same image differ.
  // Default: any nn::Dropout with p > 0 (a model whose dropout sits only in its heads overrides this).
  virtual bool stochastic_features() const;
  const std::string& arch() const { return arch_; }
  int64_t num_classes() const { return num_classes_; }
  // State-dict prefixes of the classification layers that a new class count replaces, the main one first: "fc",
  // "classifier", "classifier.6"; Inception v3 "fc" and "AuxLogits.fc"; SqueezeNet the 1x1 convolution
  // "classifier.1". Each is an nn::Linear or a 1x1 nn::Conv2d.
  virtual std::vector<std::string> head_names() const = 0;
  std::string head_name() const { return head_names().front(); }
  // Whether a parameter or buffer name lies in one of the heads.
  bool in_head(const std::string& name) const;
  int64_t head_in_features() const { return head_in_features_; }
  // Values per image of features() for square images of `image_size` pixels: head_in_features() for a linear
  // head, more for a convolutional one (SqueezeNet: 512 x h x w).
  virtual int64_t feature_numel(int64_t /*image_size*/) const { return head_in_features_; }
  // The model's top-level stages in forward order, as state-dict prefixes ("conv1", "bn1", "layer1", ..., "fc").
  // Freezing "until=layer3" freezes every stage up to and including "layer3".
  virtual std::vector<std::string> blocks() const = 0;
  // What `bench --mode last_block` trains besides the heads: by default the last block before the main head.
  virtual std::vector<std::string> last_block() const;
  // New, randomly initialised heads for `num_classes` (PyTorch's nn.Linear / nn.Conv2d init), on the model's
  // device, as the fine-tuning recipe replaces them.
  void reset_head(int64_t num_classes, uint64_t seed);
  // Auxiliary classifiers (Inception v3's AuxLogits, GoogLeNet's aux1 and aux2): run by forward() in training
  // mode, on inner features, each with its weight in the loss (torchvision's recipe: loss = main + 0.4 * aux for
  // Inception v3, main + 0.3 * (aux1 + aux2) for GoogLeNet). take_aux_logits() hands over those of the last
  // forward() (and forgets them); empty for models without auxiliary classifiers or after drop_aux().
  struct AuxLogits {
    std::string name;  // its module, e.g. "AuxLogits"
    Variable logits;
    double weight = 0;
  };
  std::vector<AuxLogits> take_aux_logits() { return std::move(aux_); }
  // The modules of the auxiliary classifiers (state-dict prefixes), empty when there are none.
  virtual std::vector<std::string> aux_modules() const { return {}; }
  // Removes the auxiliary classifiers (--no-aux, or weights that have none, as torchvision's pretrained GoogLeNet).
  void drop_aux();
  bool has_aux() const { return !aux_dropped_ && !aux_modules().empty(); }

  // Dropout probability of the classifier (VGG: 0.5 by default): by default sets every nn::Dropout's p; models
  // without dropout ignore it.
  virtual void set_dropout(double p);
  // Memory-efficient training (torchvision's memory_efficient=True for DenseNet): parts of the forward pass are run
  // again in the backward pass instead of keeping their activations (core/autograd.h checkpoint), for the same
  // results with a lower peak memory and a longer step. Returns false for models without such a mode.
  virtual bool set_memory_efficient(bool /*on*/) { return false; }
  // set_memory_efficient(true), or a ValueError naming the option when the model has no such mode.
  void require_memory_efficient();
  // DenseNet: every dense layer's concatenation, norm1 and relu as one fused op over the block's chunks
  // (layers/concat_bn_relu.h; on by default), or, off, the plain composition (the same results; tests compare the
  // two). Returns false for models without such layers.
  virtual bool set_fused_concat_norm(bool /*on*/) { return false; }
  // Conv + batch-norm pairs of the last forward() that ran folded (layers/fused.h: frozen prefix with running
  // statistics), and all conv + batch-norm pairs it ran. Both 0 for models without such pairs (DenseNet, VGG16).
  int64_t folded_conv_bn() const { return last_counts_.folded; }
  int64_t conv_bn_pairs() const { return last_counts_.calls; }

 protected:
  Model(std::string arch, int64_t num_classes, int64_t head_in)
      : arch_(std::move(arch)), num_classes_(num_classes), head_in_features_(head_in) {}
  // Called by reset_head() after the heads were replaced, for models that keep pointers to them.
  virtual void on_heads_replaced() = 0;
  // The submodule at a state-dict prefix ("classifier.6"), of type M; ValueError when there is none.
  template <class M>
  M& module_at(const std::string& name) {
    for (auto& [n, m] : named_modules())
      if (n == name)
        if (auto* typed = dynamic_cast<M*>(m)) return *typed;
    throw ValueError("model " + arch_ + " has no module '" + name + "' of the expected kind");
  }
  // Put one at the start of forward(): records the nn::ConvBn counts of that forward for folded_conv_bn().
  class CountConvBn {
   public:
    explicit CountConvBn(Model& m) : m_(m), start_(conv_bn_counts()) {}
    ~CountConvBn() {
      const ConvBnCounts now = conv_bn_counts();
      m_.last_counts_ = {now.folded - start_.folded, now.calls - start_.calls};
    }
    CountConvBn(const CountConvBn&) = delete;
    CountConvBn& operator=(const CountConvBn&) = delete;

   private:
    Model& m_;
    ConvBnCounts start_;
  };
  Device device() const;

 private:
  std::string arch_;
  int64_t num_classes_;
  int64_t head_in_features_;
  ConvBnCounts last_counts_;
  bool aux_dropped_ = false;

 protected:
  // For models with auxiliary classifiers: whether they run in this forward, and where their logits go.
  bool run_aux() const { return !aux_dropped_ && is_training(); }
  std::vector<AuxLogits> aux_;
};

// torchvision's transform_input (GoogLeNet, Inception v3, set for their pretrained weights): images normalised
// with ImageNet's mean and std become images normalised to [-1, 1], x' = x * std / 0.5 + (mean - 0.5) / 0.5 per
// channel, the input those weights were trained on. The input is an image batch: nothing is recorded on the tape.
// The map's constants are made once per dtype and device (not in every step).
class ImageNetToUnitRange {
 public:
  Variable operator()(const Variable& x);

 private:
  Tensor scale_, shift_;  // (3, 1, 1, 1) and (3): a depthwise 1x1 convolution with bias
};

}  // namespace tl::models
