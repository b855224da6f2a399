// FLOP count of one training step (forward, backward, as the autograd tape runs it) for the benchmark:
// convolutions and linear layers only (batch norm, ReLU, pooling, concatenation, the loss and the optimizer
// are memory-bound and left out, as in PyTorch's FlopCounterMode and the usual GFLOP figures).
//
// Units: FLOPs = 2 x multiply-adds (MACs). A convolution with K output channels, C input channels, `groups`
// groups, an R x S kernel and an Ho x Wo output does  MACs = N * K * (C / groups) * R * S * Ho * Wo;
// a linear layer does MACs = N * in * out. Per layer and step:
//   forward           2 * MACs                          always
//   backward_weight   2 * MACs                          when its weight trains
//   backward_data     2 * MACs                          when its input needs a gradient, i.e. some trainable
//                                                       parameter lies upstream of that input in the graph
// So a frozen prefix costs only its forward: no data gradient is computed below the first trainable layer,
// and no weight gradient for frozen layers (what tlengine's tape and PyTorch's autograd both do).
// Bias gradients (N * K * Ho * Wo additions) are left out. resnet18 at 224, batch 64, 10 classes:
// full 681 GFLOP, last_block 329, head 232 (ANCHORS.md); forward alone 1.82 GMACs per image with 1000 classes.
//
// The count comes from the model itself: one forward pass in training mode on a batch of two blank images of
// the given size, under a tape (so that "needs a gradient" is what the real step decides), with every conv2d and
// linear reporting its multiply-adds (layers/mac_counter.h); the counts scale linearly with the batch. The
// model's running statistics and counters are restored afterwards, so counting changes nothing.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/model.h"

namespace tl::train {

struct LayerFlops {
  std::string name;  // state-dict prefix, e.g. "layer1.0.conv1"
  double forward = 0, backward_data = 0, backward_weight = 0;  // FLOPs for the whole batch
};

struct StepFlops {
  double forward = 0, backward_data = 0, backward_weight = 0;  // FLOPs for the whole batch
  std::vector<LayerFlops> layers;                               // conv and linear layers in forward order
  double backward() const { return backward_data + backward_weight; }
  double total() const { return forward + backward(); }
};

// Saves the model's buffers, counters and train/eval mode, and puts them back when it goes out of scope: a forward
// pass run only to count or measure (it updates running statistics) then changes nothing.
class ModelStateSnapshot {
 public:
  explicit ModelStateSnapshot(models::Model& model);
  ~ModelStateSnapshot();
  ModelStateSnapshot(const ModelStateSnapshot&) = delete;
  ModelStateSnapshot& operator=(const ModelStateSnapshot&) = delete;

 private:
  models::Model& model_;
  bool training_;
  std::vector<Tensor> buffers_;
  std::vector<int64_t> counters_;
};

// FLOPs of one training step of `model` (with its current trainable flags) on a batch of `batch` images of
// height x width.
StepFlops count_step_flops(models::Model& model, int64_t batch, int64_t height, int64_t width);

}  // namespace tl::train
