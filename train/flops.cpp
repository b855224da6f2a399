// FLOP count of a training step (see flops.h): the model's own forward pass, counted by layers/mac_counter.h.
#include "train/flops.h"

#include <map>

#include "core/autograd.h"
#include "core/error.h"
#include "layers/mac_counter.h"

namespace tl::train {
ModelStateSnapshot::ModelStateSnapshot(models::Model& model) : model_(model), training_(model.is_training()) {
  for (nn::StateEntry& e : model.state()) {
    if (e.buffer) buffers_.push_back(e.buffer->clone());
    if (e.counter) counters_.push_back(*e.counter);
  }
}

ModelStateSnapshot::~ModelStateSnapshot() {
  size_t b = 0, c = 0;
  for (nn::StateEntry& e : model_.state()) {
    if (e.buffer) e.buffer->copy_(buffers_[b++]);
    if (e.counter) *e.counter = counters_[c++];
  }
  model_.train(training_);
}

StepFlops count_step_flops(models::Model& model, int64_t batch, int64_t height, int64_t width) {
  TL_CHECK(batch >= 1 && height >= 1 && width >= 1, ValueError, "count_step_flops: batch and image size must be >= 1");
  std::map<const void*, std::string> names;  // weight storage -> layer name ("layer1.0.conv1")
  for (auto& [name, p] : model.named_parameters())
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0)
      names[p.value().data()] = name.substr(0, name.size() - 7);
  const Tensor& any = model.named_parameters().front().second.value();
  constexpr int64_t kSamples = 2;  // train-mode batch norm wants more than one value per channel
  MacCounter counter;
  {
    ModelStateSnapshot snapshot(model);
    model.train();
    Tape tape;
    TapeScope scope(tape);
    model.forward(Variable(Tensor::zeros({kSamples, 3, height, width}, any.dtype(), any.device())));
  }
  StepFlops result;
  for (const OpMacs& op : counter.ops()) {
    if (!op.arithmetic) continue;  // batch norm's shape-only entries
    const double flops = 2 * op.macs_per_sample * static_cast<double>(batch);
    auto it = names.find(op.weight);
    LayerFlops f{it == names.end() ? "?" : it->second, flops, op.data_grad ? flops : 0.0,
                 op.weight_grad ? flops : 0.0};
    result.forward += f.forward;
    result.backward_data += f.backward_data;
    result.backward_weight += f.backward_weight;
    result.layers.push_back(f);
  }
  return result;
}

}  // namespace tl::train
