#include "train/data_parallel.h"

#include <cmath>
#include <cstring>

namespace tl::train {

void GradientAverager::rebuild(const std::vector<std::pair<std::string, Parameter>>& trainable) {
  buckets_.clear();
  names_.clear();
  for (auto it = trainable.rbegin(); it != trainable.rend(); ++it) {  // reverse: backward's order
    const Tensor& v = it->second.value();
    const int64_t bytes = static_cast<int64_t>(v.nbytes());
    if (buckets_.empty() || buckets_.back().dtype != v.dtype() ||
        (buckets_.back().numel * static_cast<int64_t>(dtype_size(v.dtype())) + bytes > bucket_bytes_ &&
         !buckets_.back().params.empty()))
      buckets_.push_back(Bucket{v.dtype(), {}, 0, Tensor()});
    buckets_.back().params.push_back(*it);
    buckets_.back().numel += v.numel();
  }
  for (Bucket& b : buckets_) b.flat = Tensor::empty({b.numel}, b.dtype);  // reused by every step's reduction
  for (const auto& [name, p] : trainable) names_.push_back(name);
}

void GradientAverager::plan(const nn::Module& model) {
  std::vector<std::pair<std::string, Parameter>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.trainable()) trainable.emplace_back(name, p);
  bool same = trainable.size() == names_.size();
  for (size_t i = 0; same && i < trainable.size(); ++i) same = trainable[i].first == names_[i];
  if (!same) rebuild(trainable);
}

void GradientAverager::average(const nn::Module& model, int epoch, int64_t step, bool empty_batch) {
  if (dist_.world_size() == 1) return;
  plan(model);
  const std::string when = detail::concat("at epoch ", epoch + 1, " step ", step + 1);
  for (size_t i = 0; i < buckets_.size(); ++i) reduce(buckets_[i], i, when, empty_batch);
}

void GradientAverager::reduce(Bucket& b, size_t index, const std::string& when, bool empty_batch) {
  Tensor& flat = b.flat;
  char* base = static_cast<char*>(flat.data());
  size_t offset = 0;
  for (const auto& [name, p] : b.params) {
    const size_t bytes = p.value().nbytes();
    const Tensor& g = p.grad();
    if (g.defined()) {
      TL_CHECK(g.device() == Device::CPU && g.nbytes() == bytes, ValueError, "data-parallel: the gradient of ", name,
               " is not a CPU tensor of its parameter's size (only CPU training runs on several processes)");
      std::memcpy(base + offset, g.data(), bytes);
    } else {
      std::memset(base + offset, 0, bytes);
    }
    offset += bytes;
  }
  dist_.all_reduce_sum(flat, detail::concat("all-reduce of the gradients (bucket ", index + 1, " of ",
                                            buckets_.size(), ") ", when));
  const double scale = 1.0 / dist_.world_size();
  if (b.dtype == DType::F64) {
    for (double *x = flat.data_as<double>(), *end = x + b.numel; x != end; ++x) *x *= scale;
  } else {
    const float s = static_cast<float>(scale);
    for (float *x = flat.data_as<float>(), *end = x + b.numel; x != end; ++x) *x *= s;
  }
  offset = 0;
  for (const auto& [name, p] : b.params) {
    const size_t bytes = p.value().nbytes();
    if (p.grad().defined()) {
      std::memcpy(p.grad().data(), base + offset, bytes);
    } else if (empty_batch) {  // gradients have the layout of their parameter
      Tensor g = Tensor::empty(p.value().shape(), b.dtype, Device::CPU, p.value().layout());
      std::memcpy(g.data(), base + offset, bytes);
      Parameter(p).set_grad(g);
    }
    offset += bytes;
  }
}

std::vector<std::vector<std::string>> GradientAverager::bucket_names() const {
  std::vector<std::vector<std::string>> out;
  for (const Bucket& b : buckets_) {
    out.emplace_back();
    for (const auto& [name, p] : b.params) out.back().push_back(name);
  }
  return out;
}

void all_reduce_metrics(const Distributed& dist, ClassificationMetrics& m, const std::string& what) {
  if (dist.world_size() == 1) return;
  std::vector<double> v = {static_cast<double>(m.count()), static_cast<double>(m.correct_top_k()), m.loss_sum()};
  for (int64_t c : m.confusion()) v.push_back(static_cast<double>(c));
  dist.all_reduce_sum(v, what);
  std::vector<int64_t> confusion;
  for (size_t i = 3; i < v.size(); ++i) confusion.push_back(std::llround(v[i]));
  m.reset();
  m.add_counts(std::llround(v[0]), std::llround(v[1]), v[2], confusion);
}

void broadcast_parameters(const Distributed& dist, const nn::Module& model) {
  if (dist.world_size() == 1) return;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor& v = p.mutable_value();
    dist.broadcast(v, 0, "broadcast of rank 0's start weights (" + name + ")");
  }
  nn::invalidate_derived_state();  // written directly: caches derived from the weights are stale
}

void broadcast_buffers(const Distributed& dist, nn::Module& model) {
  if (dist.world_size() == 1) return;
  for (const nn::StateEntry& e : model.state())  // state() also invalidates caches derived from the buffers
    if (e.buffer && (e.buffer->dtype() == DType::F32 || e.buffer->dtype() == DType::F64))
      dist.broadcast(*e.buffer, 0, "broadcast of rank 0's buffers (" + e.name + ")");
}

int enable_sync_bn(const Distributed& dist, nn::Module& model) {
  int layers = 0;
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
      bn->sync = {&dist, "all-reduce of the batch-norm statistics of " + name + " (--sync-bn)"};
      ++layers;
    }
  return layers;
}

}  // namespace tl::train
