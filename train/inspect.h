// `tlengine inspect`: a model's module tree (torchvision's names, output shapes, parameter counts, the heads and
// the blocks marked), what a weights file holds, and what each freeze point costs in a training step.
//
// Output shapes come from one eval-mode forward pass of a single image under a MacCounter (layers/mac_counter.h:
// every conv2d, linear and batch norm reports its input and output shapes). The tree holds only modules with
// state (Conv2d, BatchNorm2d, Linear), Dropout and their containers: stateless ops (ReLU, pooling) are
// functions in tlengine, not modules, so torchvision's ReLU / MaxPool2d lines have no counterpart. A module's
// output shape is:
//   - the model: its logits;
//   - a conv, linear or batch norm: its op's output;
//   - a container that is a cut point of the model (Model::cut_points(): "layer2", "features.transition1"):
//     the output of Model::run_until at that cut, i.e. what the model passes on (a dense block's concatenation,
//     a transition after its pooling);
//   - another container: the output of its last op; exact when the next op takes that shape as its input (a
//     residual block: the add and ReLU keep the shape) or it is the last op and has the logits' shape, else marked inexact ("*" in the text): a pooling,
//     concatenation or channel shuffle at its end is not seen (VGG's features, Inception's mixed blocks);
//   - a module without ops nor parameters (Dropout): the input of the next op after it in the tree (inexact);
//   - a module with parameters that did not run (auxiliary classifiers in eval mode): unknown ({}).
//
// Freeze costs: for each freeze point (none, until=<block> for each block below the heads, backbone):
// trainable parameters, the FLOPs of a training step as `tlengine bench` counts them (train/flops.h), and a
// memory prediction of the step's peak, in parts:
//   weights    every parameter and buffer;
//   gradients  one per trainable parameter;
//   optimizer  SGD with momentum: one buffer per trainable parameter; Adam / AdamW: two;
//   batch      the images (float32) and labels;
//   saved      what the tape keeps for backward after the forward pass: measured as the allocator's live bytes
//              held by the tape and the logits after a forward at batch 2 and at batch 4 (the tape saves only
//              what the trainable part needs: nothing below the first trainable layer), extrapolated linearly
//              to the batch;
//   workspace  the forward pass's transient buffers on top of `saved` (the op being run: its output, convolution
//              workspaces): its allocator peak minus what it keeps, from the same probes;
//   peak = weights + optimizer + batch + the larger of
//     - the forward pass's peak (saved + workspace, no gradients: zero_grad frees them after each step), and
//     - the backward pass's peak of activations still saved plus parameter gradients made so far: the tape runs
//       from the last entry to the first, each entry creating its parameters' gradients and then releasing what
//       it saved (the order and the gradient sizes come from the probe's tape entries).
//   The probes run on the model's device in the layout `train` uses (NHWC on the CPU), and move the model there.
// With `measure`, train/bench.h run_bench runs real steps at each freeze point and reports the median step time
// and the allocator's peak (minus the bytes live before it: the inspected model) next to the prediction.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/model.h"

namespace tl::train {

struct ModuleInfo {
  std::string name;  // state-dict prefix; "" for the model itself
  std::string type;  // "Conv2d", "BatchNorm2d", "Linear", "Dropout", "Sequential", or the model's own class
  std::string args;  // the constructor's arguments as PyTorch prints them, e.g. "3, 64, kernel_size=(7, 7), ..."
  int depth = 0;     // 0 for the model, 1 for its children, ...
  Shape output;      // at batch 1 ({} when unknown)
  bool output_exact = true;  // false: a container's last op output that the ops after it may change (see above)
  int64_t params = 0;  // parameters of the module and everything below it
  bool head = false;   // one of Model::head_names()
  bool block = false;  // one of Model::blocks() (a freeze point)
};

struct ModelTree {
  std::string arch;
  int64_t num_classes = 0;
  Shape input;  // (1, 3, H, W)
  int64_t total_params = 0;
  std::vector<std::string> heads, blocks;
  std::vector<ModuleInfo> modules;  // depth-first, in registration (= torchvision) order
  nlohmann::json to_json() const;
  // One line per module, indented by depth; modules deeper than max_depth (< 0: none) are left out, their
  // parameters counted in their parent's line.
  std::string to_text(int max_depth = -1) const;
};

// The tree of `model` for square images of `image_size` pixels (0: the architecture's input size).
ModelTree inspect_model(models::Model& model, int64_t image_size = 0);

// What a weights file holds (train/predict.h load_model reads the same file).
struct WeightsInfo {
  std::string path, format;  // format: "tlengine", "safetensors" or "pytorch"
  std::string arch;          // from the metadata, or detected from the names and shapes
  int64_t num_classes = 0;
  std::vector<std::string> classes;  // class names, when the file has them
  std::map<std::string, std::string> metadata;  // every metadata entry but the class list
  size_t tensors = 0;
  nlohmann::json to_json() const;
  std::string to_text() const;
};
WeightsInfo inspect_weights(const std::string& path);

struct FreezeCostOptions {
  int64_t batch = 32;
  int64_t image_size = 0;         // 0: the architecture's
  std::string optimizer = "sgd";  // sgd (momentum) | adam | adamw
  bool measure = false;           // run steps (train/bench.h) at each freeze point
  std::string device = "auto";    // for measure
  int warmup = 1, steps = 3;      // for measure
};

struct FreezePointCost {
  std::string freeze;  // "none", "until=layer2", "backbone" (a --freeze value)
  int64_t trainable_params = 0;
  double flops_forward = 0, flops_backward_data = 0, flops_backward_weight = 0;  // per step (whole batch)
  double weights_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, batch_bytes = 0, saved_bytes = 0, workspace_bytes = 0;
  double activations_at_peak = 0, grads_at_peak = 0;  // the predicted peak's activations and gradients
  bool measured = false;
  double step_ms = 0, peak_bytes = 0;  // measured
  double flops() const { return flops_forward + flops_backward_data + flops_backward_weight; }
  double predicted_peak_bytes() const {
    return weights_bytes + optimizer_bytes + batch_bytes + activations_at_peak + grads_at_peak;
  }
};

struct FreezeCosts {
  std::string arch, optimizer, device;
  int64_t batch = 0, image_size = 0, num_classes = 0, total_params = 0;
  std::vector<FreezePointCost> points;  // none first, backbone last
  nlohmann::json to_json() const;
  std::string to_table() const;
};

// The --freeze values of `model`'s freeze points: "none", "until=<block>" for each block outside the heads
// whose trainable set differs from the backbone's, "backbone".
std::vector<std::string> freeze_points(models::Model& model);

// Costs at every freeze point. Moves the model to options.device in train's fp32 layout, leaves every parameter
// trainable afterwards and restores the model's buffers (running statistics) and mode. Calls reset_peak_memory. Progress of --measure goes to `log`.
FreezeCosts freeze_costs(models::Model& model, const FreezeCostOptions& options, std::ostream& log);

// A PNG of `costs`: bars per freeze point, GFLOP per step (forward, backward data, backward weight) and memory
// (predicted parts, with the measured peak when there is one), written atomically.
void write_freeze_costs_png(const FreezeCosts& costs, const std::string& path);

}  // namespace tl::train
