#include "train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "core/device.h"

namespace tl::train {

namespace {
// Byte copies between gradients and a bucket's buffer on `device` (on CUDA queued on cuda::stream(), no host sync).
void copy_bytes(void* dst, const void* src, size_t bytes, Device device) {
#if TL_WITH_CUDA
  if (device == Device::CUDA) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}
void zero_bytes(void* dst, size_t bytes, Device device) {
#if TL_WITH_CUDA
  if (device == Device::CUDA) {
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cuda::stream()));
    return;
  }
#endif
  std::memset(dst, 0, bytes);
}
}  // namespace

void GradientAverager::rebuild(const std::vector<std::pair<std::string, Parameter>>& trainable) {
  buckets_.clear();
  names_.clear();
  bucket_of_.clear();
  parts_opt_ = nullptr;  // parts_for() maps the new buckets
  for (auto it = trainable.rbegin(); it != trainable.rend(); ++it) {  // reverse: backward's order
    const Tensor& v = it->second.value();
    const int64_t bytes = static_cast<int64_t>(v.nbytes());
    if (buckets_.empty() || buckets_.back().dtype != v.dtype() ||
        (buckets_.back().numel * static_cast<int64_t>(dtype_size(v.dtype())) + bytes > bucket_bytes_ &&
         !buckets_.back().params.empty()))
      buckets_.push_back(Bucket{v.dtype(), {}, 0, Tensor(), 0, CollectiveRequest(), std::string()});
    buckets_.back().params.push_back(*it);
    buckets_.back().numel += v.numel();
    bucket_of_.emplace_back(it->second.node().get(), buckets_.size() - 1);
  }
  for (size_t i = 0; i < buckets_.size(); ++i) {  // reused by every step's reduction
    Bucket& b = buckets_[i];
    b.flat = Tensor::empty({b.numel}, b.dtype, b.params.front().second.value().device());
    b.what = detail::concat("all-reduce of the gradients (bucket ", i + 1, " of ", buckets_.size(), ")");
  }
  if (nccl_) nccl_->reserve(buckets_.size());
  for (const auto& [name, p] : trainable) names_.push_back(name);
  std::sort(bucket_of_.begin(), bucket_of_.end());
}

// Each step: the model's parameters are listed (a module may have changed), but the trainable ones are compared
// with the buckets' set in place; the list of them is built only when the set changed.
void GradientAverager::plan(const nn::Module& model) {
  const std::vector<std::pair<std::string, Parameter>> params = model.named_parameters();
  size_t k = 0;
  bool same = true;
  for (const auto& [name, p] : params)
    if (p.trainable()) same = same && k < names_.size() && names_[k++] == name;
  if (same && k == names_.size()) return;
  std::vector<std::pair<std::string, Parameter>> trainable;
  for (const auto& [name, p] : params)
    if (p.trainable()) trainable.emplace_back(name, p);
  rebuild(trainable);
}

void GradientAverager::start_step(const nn::Module& model, int epoch, int64_t step) {
  TL_CHECK(!in_step_, ValueError, "data-parallel: a step began before finish() of the previous one");
  plan(model);
  at_ = StepPosition{epoch, step};
  for (Bucket& b : buckets_) b.ready = 0;
  next_start_ = first_pending_ = 0;
  overlap_ = Overlap{static_cast<int64_t>(buckets_.size()), 0};
  in_step_ = true;
}

void GradientAverager::begin(const nn::Module& model, int epoch, int64_t step, const Tape& tape) {
  if (!active()) return;
  start_step(model, epoch, step);
  mark_unused_ready(tape);
}

const std::pair<const GradNode*, size_t>* GradientAverager::find(const GradNode* leaf) const {
  const auto it = std::lower_bound(bucket_of_.begin(), bucket_of_.end(), std::make_pair(leaf, size_t{0}));
  return it != bucket_of_.end() && it->first == leaf ? &*it : nullptr;
}

// The parameters no entry of the tape feeds will not be reported by backward (PyTorch DDP finds them by walking
// the graph from the outputs, with find_unused_parameters): their gradients are final already. Without this, a
// bucket holding one would wait for the end of backward, and every later bucket with it (they start in order).
void GradientAverager::mark_unused_ready(const Tape& tape) {
  fed_.assign(bucket_of_.size(), 0);
  auto mark = [&](const std::shared_ptr<GradNode>& in) {
    if (const auto* slot = in ? find(in.get()) : nullptr) fed_[static_cast<size_t>(slot - bucket_of_.data())] = 1;
  };
  for (const TapeEntry& e : tape.entries()) {
    for (const auto& in : e.inputs) mark(in);
    for (const auto& in : e.inner_leaves) mark(in);
  }
  for (size_t i = 0; i < bucket_of_.size(); ++i)
    if (!fed_[i]) ++buckets_[bucket_of_[i].second].ready;
  start_ready_buckets();
  overlap_.started_during_backward = static_cast<int64_t>(next_start_);
}

LeafReadyFn GradientAverager::leaf_ready_hook() {
  if (!active()) return nullptr;
  return [this](const GradNode& leaf) { on_leaf_ready(leaf); };
}

void GradientAverager::on_leaf_ready(const GradNode& leaf) {
  TL_CHECK(in_step_, ValueError, "data-parallel: the gradient hook ran outside begin() ... finish()");
  if (const auto* slot = find(&leaf)) {  // other leaves (e.g. an input with a gradient) are not ours
    Bucket& b = buckets_[slot->second];
    if (++b.ready == b.params.size()) {
      const size_t before = next_start_;
      start_ready_buckets();
      overlap_.started_during_backward += static_cast<int64_t>(next_start_ - before);
    }
  }
  progress();
}

// Starts the complete buckets from next_start_ on, in order, stopping at the first incomplete one.
void GradientAverager::start_ready_buckets() {
  for (; next_start_ < buckets_.size() && buckets_[next_start_].ready == buckets_[next_start_].params.size();
       ++next_start_)
    start(buckets_[next_start_], next_start_);
}

// Copies the bucket's gradients (zeros for a parameter without one) into its buffer and starts the sum.
void GradientAverager::start(Bucket& b, size_t index) {
  const Device device = b.flat.device();
  TL_CHECK(device == Device::CPU || nccl_, ValueError, "data-parallel: CUDA gradients need the NCCL backend");
  char* base = static_cast<char*>(b.flat.data());
  size_t offset = 0;
  for (const auto& [name, p] : b.params) {
    const size_t bytes = p.value().nbytes();
    const Tensor& g = p.grad();
    if (g.defined()) {
      TL_CHECK(g.device() == device && g.nbytes() == bytes, ValueError, "data-parallel: the gradient of ", name,
               " is not a ", device_name(device), " tensor of its parameter's size");
      copy_bytes(base + offset, g.data(), bytes, device);
    } else {
      zero_bytes(base + offset, bytes, device);
    }
    offset += bytes;
  }
  if (nccl_ && device == Device::CUDA) {
    nccl_->start_mean(b.flat, index);
  } else {
    dist_.start_all_reduce_sum(b.flat, b.request);
  }
}

// Lets MPI advance the reductions in flight (the earliest first; skipping those already done).
void GradientAverager::progress() {
  while (first_pending_ < next_start_ && dist_.test(buckets_[first_pending_].request)) ++first_pending_;
  for (size_t i = first_pending_ + 1; i < next_start_; ++i) dist_.test(buckets_[i].request);
}

// The sum into the mean, in place (a CPU float32 / float64 buffer).
void GradientAverager::scale(Tensor& flat, double factor) {
  if (flat.dtype() == DType::F64) {
    for (double *x = flat.data_as<double>(), *end = x + flat.numel(); x != end; ++x) *x *= factor;
  } else {
    const float f = static_cast<float>(factor);
    for (float *x = flat.data_as<float>(), *end = x + flat.numel(); x != end; ++x) *x *= f;
  }
}

// Backward is over: every gradient is final, every bucket starts (those not started yet).
void GradientAverager::end_backward() {
  TL_CHECK(in_step_, ValueError, "data-parallel: finish() without begin()");
  in_step_ = false;  // also when a wait after this throws: the step is abandoned then
  for (Bucket& b : buckets_) b.ready = b.params.size();
  start_ready_buckets();
  if (nccl_) nccl_->end_step(at_.epoch, at_.step);  // the previous step's reductions ended (or the timeout)
}

void GradientAverager::finish(bool empty_batch) {
  if (!active()) return;
  end_backward();
  for (size_t i = 0; i < buckets_.size(); ++i) complete(buckets_[i], i, empty_batch);
  last_overlap_ = overlap_;
}

// Whether each parameter updates is known now (complete() gives a mean to the gradients that exist, and creates
// none without empty_batch), so the optimizer plans the step before the first wait.
void GradientAverager::finish_and_step(Optimizer& opt) {
  if (!active()) {
    opt.step();
    return;
  }
  end_backward();
  opt.begin_parts(parts_for(opt));
  for (size_t i = 0; i < buckets_.size(); ++i) {
    complete(buckets_[i], i, false);
    opt.step_part(i);
    progress();  // the later buckets advance between the updates
  }
  opt.step_part(buckets_.size());  // the optimizer's parameters of no bucket (none when it holds the model's)
  last_overlap_ = overlap_;
}

const std::vector<std::vector<Optimizer::ParamSlot>>& GradientAverager::parts_for(const Optimizer& opt) {
  if (parts_opt_ == &opt && parts_hold(opt)) return parts_;
  parts_.assign(buckets_.size(), {});
  parts_nodes_.assign(buckets_.size(), {});
  for (size_t k = 0; k < buckets_.size(); ++k)
    for (const auto& [name, p] : buckets_[k].params)
      if (const auto slot = opt.slot_of(p)) {
        parts_[k].push_back(*slot);
        parts_nodes_[k].push_back(p.node().get());
      }
  parts_opt_ = &opt;
  return parts_;
}

// Whether every slot still holds the parameter it was found for (another optimizer at the same address does not).
bool GradientAverager::parts_hold(const Optimizer& opt) const {
  for (size_t k = 0; k < parts_.size(); ++k)
    for (size_t j = 0; j < parts_[k].size(); ++j) {
      const Optimizer::ParamSlot& s = parts_[k][j];
      if (s.group >= opt.num_groups() || s.index >= opt.group_params(s.group).size() ||
          opt.group_params(s.group)[s.index].node().get() != parts_nodes_[k][j])
        return false;
    }
  return true;
}

void GradientAverager::average(const nn::Module& model, int epoch, int64_t step, bool empty_batch) {
  if (!active()) return;
  start_step(model, epoch, step);
  finish(empty_batch);
}

// Waits for the bucket's sum, then scales it into the mean and copies it back into the gradients. NCCL averages
// itself; the compute stream waits for it (no host sync).
void GradientAverager::complete(Bucket& b, size_t index, bool empty_batch) {
  const Device device = b.flat.device();
  if (device == Device::CUDA) {
    nccl_->wait_on_compute_stream(index);
  } else {
    dist_.wait(b.request, b.what, &at_);  // the message is built only on a timeout
    scale(b.flat, 1.0 / dist_.world_size());
  }
  const char* base = static_cast<const char*>(b.flat.data());
  size_t offset = 0;
  for (const auto& [name, p] : b.params) {
    const size_t bytes = p.value().nbytes();
    const Tensor& grad = p.grad();
    if (grad.defined() && grad.is_unique()) {
      copy_bytes(grad.data(), base + offset, bytes, device);
    } else if (grad.defined() || empty_batch) {
      // A new tensor (in the layout of its parameter, as gradients are) where there was none, or where the gradient
      // shares its storage (a backward may hand the same tensor to two inputs): the mean must not reach the other.
      Tensor g = Tensor::empty(p.value().shape(), b.dtype, device, p.value().layout());
      copy_bytes(g.data(), base + offset, bytes, device);
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

namespace {
// SkippedImage lists as bytes: per image its position, then the path's and the reason's sizes and bytes.
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
uint64_t get_u64(const std::string& in, size_t& at, const std::string& what) {
  TL_CHECK(at + sizeof(uint64_t) <= in.size(), ValueError, what, ": a rank sent a truncated list");
  uint64_t v;
  std::memcpy(&v, in.data() + at, sizeof v);
  at += sizeof v;
  return v;
}
std::string get_str(const std::string& in, size_t& at, const std::string& what) {
  const uint64_t n = get_u64(in, at, what);
  TL_CHECK(n <= in.size() - at, ValueError, what, ": a rank sent a truncated list");
  at += n;
  return in.substr(at - n, n);
}
}  // namespace

std::vector<io::SkippedImage> gather_skipped(const Distributed& dist, const std::vector<io::SkippedImage>& mine,
                                             const std::string& what) {
  if (dist.world_size() == 1) return mine;
  std::string bytes;
  for (const io::SkippedImage& s : mine) {
    put_u64(bytes, static_cast<uint64_t>(s.position));
    put_u64(bytes, s.path.size());
    bytes += s.path;
    put_u64(bytes, s.reason.size());
    bytes += s.reason;
  }
  std::vector<io::SkippedImage> all;
  for (const std::string& part : dist.all_gather_bytes(bytes, what))
    for (size_t at = 0; at < part.size();) {
      io::SkippedImage s;
      s.position = static_cast<int64_t>(get_u64(part, at, what));
      s.path = get_str(part, at, what);
      s.reason = get_str(part, at, what);
      all.push_back(std::move(s));
    }
  std::sort(all.begin(), all.end(), [](const io::SkippedImage& a, const io::SkippedImage& b) {
    return a.position < b.position;
  });
  std::set<std::string> seen;
  std::vector<io::SkippedImage> once;
  for (io::SkippedImage& s : all)
    if (seen.insert(s.path).second) once.push_back(std::move(s));
  return once;
}

namespace {
// MPI sends CPU float32 / float64 tensors: a CUDA (training on GPUs) or a bfloat16 / float16 tensor travels as a
// host copy in float32 (exact for those), written back in place. Only at the start and before val phases.
void broadcast_any(const Distributed& dist, Tensor& t, const std::string& what) {
  if (t.device() == Device::CPU && (t.dtype() == DType::F32 || t.dtype() == DType::F64)) {
    dist.broadcast(t, 0, what);
    return;
  }
  const DType wide = t.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor host = t.to(Device::CPU, wide, Layout::NCHW);
  dist.broadcast(host, 0, what);
  t.copy_(host);
}
}  // namespace

void broadcast_parameters(const Distributed& dist, const nn::Module& model) {
  if (dist.world_size() == 1) return;
  for (auto& [name, p] : model.named_parameters())
    broadcast_any(dist, p.mutable_value(), "broadcast of rank 0's start weights (" + name + ")");
  nn::invalidate_derived_state();  // written directly: caches derived from the weights are stale
}

void broadcast_buffers(const Distributed& dist, nn::Module& model) {
  if (dist.world_size() == 1) return;
  for (const nn::StateEntry& e : model.state())  // state() also invalidates caches derived from the buffers
    if (e.buffer && (e.buffer->dtype() == DType::F32 || e.buffer->dtype() == DType::F64 ||
                     is_floating_half(e.buffer->dtype())))
      broadcast_any(dist, *e.buffer, "broadcast of rank 0's buffers (" + e.name + ")");
}

int enable_sync_bn(const Distributed& dist, nn::Module& model, const StepPosition* at) {
  int layers = 0;
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
      bn->sync = {&dist, "all-reduce of the batch-norm statistics of " + name + " (--sync-bn)", at};
      ++layers;
    }
  return layers;
}

}  // namespace tl::train
