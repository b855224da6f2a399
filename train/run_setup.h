// The building blocks of a training run, shared by `tlengine train` (trainer.cpp, where they are defined) and
// the commands that set up the same job without training it to the end (`tlengine lr-find`): the data, the model
// with its weights and freeze plan, the optimizer's parameter groups, the loss, and the model's input format.
#pragma once
#include <functional>
#include <iosfwd>
#include <string>
#include <memory>

#include "io/dataset.h"
#include "io/loader.h"
#include "layers/loss.h"
#include "models/model.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace tl::train {

// The data: splits and a loader for each (train: --augment, --shuffle; val: --val-transform). With several ranks
// (`rank` of `world_size`) the train loader gives this rank's share (padded), and val_share this rank's share of
// the val set (unpadded: the ranks' metrics are summed); `val` stays the whole val set (the final report).
struct TrainData {
  io::DataSplits splits;
  std::unique_ptr<io::DataLoader> train, val, val_share;
  int64_t num_classes() const { return static_cast<int64_t>(splits.classes.size()); }
};
TrainData build_data(const TrainOptions& o, std::ostream& log, int rank = 0, int world_size = 1);

// The model: architecture, start weights (a new head for this class count), device and precision, freeze plan.
// The weights file is only read.
std::unique_ptr<models::Model> build_model(const TrainOptions& o, int64_t num_classes, Device dev, Precision prec,
                                           FreezePlan& plan, std::ostream& log);

// The optimizer over the trainable parameters: group "head" at o.lr and group "body" (the pretrained part) at
// --backbone-lr, or o.lr x --backbone-lr-mult (its default: 1, or 0.1 with --freeze-epochs); a group without
// trainable parameters is left out. Parameters for which `will_train` is true (gradual unfreezing) join their group
// while still frozen: the optimizer skips them until they train.
std::unique_ptr<Optimizer> build_optimizer(const TrainOptions& o, models::Model& model, std::ostream& log,
                                           const std::function<bool(const std::string&)>& will_train = {});

// The loss: label smoothing, and class weights n / (C * n_c) with --balance.
CrossEntropyOptions build_loss(const TrainOptions& o, const TrainData& data, Device dev, Precision prec);

// Model input for a batch or a single image: on the device, in the run's precision and layout.
Tensor model_input(const Tensor& x, Device dev, Precision p);

}  // namespace tl::train
