// Optimizer: parameter groups, the CPU reference updates, the fused CUDA launches with their cached pointer
// tables, zero_grad and the state dict (see optimizer.h).
#include "train/optimizer.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <tuple>

#include "core/device.h"
#include "kernels/optim_coefficients.h"
#if TL_WITH_CUDA
#include "kernels/optimizer.h"
#endif

namespace tl::train {

// ---------------------------------------------------------------------------------------------------------------
// Kinds and hyper-parameters

const char* optimizer_kind_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::SGD: return "sgd";
    case OptimizerKind::Adam: return "adam";
    case OptimizerKind::AdamW: return "adamw";
  }
  return "?";
}

OptimizerKind parse_optimizer_kind(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (s == "sgd") return OptimizerKind::SGD;
  if (s == "adam") return OptimizerKind::Adam;
  if (s == "adamw") return OptimizerKind::AdamW;
  throw ValueError("unknown optimizer '" + name + "': choose sgd, adam or adamw");
}

HyperParams HyperParams::sgd(double lr, double momentum, double weight_decay, bool nesterov, double dampening) {
  HyperParams h;
  h.lr = lr;
  h.momentum = momentum;
  h.weight_decay = weight_decay;
  h.nesterov = nesterov;
  h.dampening = dampening;
  return h;
}
HyperParams HyperParams::adam(double lr, double weight_decay, double beta1, double beta2, double eps, bool amsgrad) {
  HyperParams h;
  h.lr = lr;
  h.weight_decay = weight_decay;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.amsgrad = amsgrad;
  return h;
}
HyperParams HyperParams::adamw(double lr, double weight_decay, double beta1, double beta2, double eps, bool amsgrad) {
  return adam(lr, weight_decay, beta1, beta2, eps, amsgrad);
}

namespace {
// The checks torch.optim makes in its constructors, with the group named.
void validate_hyper(OptimizerKind kind, const HyperParams& h, const std::string& group) {
  const std::string where = std::string(optimizer_kind_name(kind)) + " group '" + group + "': ";
  TL_CHECK(h.lr >= 0.0, ValueError, where, "invalid learning rate ", h.lr, " (must be >= 0)");
  TL_CHECK(h.weight_decay >= 0.0, ValueError, where, "invalid weight_decay ", h.weight_decay, " (must be >= 0)");
  if (kind == OptimizerKind::SGD) {
    TL_CHECK(h.momentum >= 0.0, ValueError, where, "invalid momentum ", h.momentum, " (must be >= 0)");
    TL_CHECK(!h.nesterov || (h.momentum > 0.0 && h.dampening == 0.0), ValueError, where,
             "Nesterov momentum requires a momentum > 0 and zero dampening");
  } else {
    TL_CHECK(h.eps >= 0.0, ValueError, where, "invalid eps ", h.eps, " (must be >= 0)");
    TL_CHECK(h.beta1 >= 0.0 && h.beta1 < 1.0, ValueError, where, "invalid beta1 ", h.beta1, " (must be in [0, 1))");
    TL_CHECK(h.beta2 >= 0.0 && h.beta2 < 1.0, ValueError, where, "invalid beta2 ", h.beta2, " (must be in [0, 1))");
  }
}

HyperParams resolve(const ParamGroup& g, const HyperParams& d) {
  HyperParams h = d;
  h.lr = g.lr.value_or(d.lr);
  h.weight_decay = g.weight_decay.value_or(d.weight_decay);
  h.momentum = g.momentum.value_or(d.momentum);
  h.dampening = g.dampening.value_or(d.dampening);
  h.nesterov = g.nesterov.value_or(d.nesterov);
  h.beta1 = g.beta1.value_or(d.beta1);
  h.beta2 = g.beta2.value_or(d.beta2);
  h.eps = g.eps.value_or(d.eps);
  h.amsgrad = g.amsgrad.value_or(d.amsgrad);
  return h;
}

// ---------------------------------------------------------------------------------------------------------------
// CPU reference updates: the same operations, in the same order and dtype, as the kernels and PyTorch.

template <typename T>
void sgd_cpu(T* p, const T* g, T* buf, int64_t n, const kernels::SgdCoefficients& c) {
  const T neg_lr = static_cast<T>(c.neg_lr), wd = static_cast<T>(c.weight_decay), mom = static_cast<T>(c.momentum),
          omd = static_cast<T>(c.one_minus_dampening);
  const bool use_wd = c.weight_decay != 0.0, use_momentum = c.momentum != 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T pv = p[i];
    T d = g[i];
    if (use_wd) d = d + wd * pv;
    if (use_momentum) {
      T b;
      if (c.first) {
        b = d;
      } else {
        b = buf[i] * mom;
        b = b + omd * d;
      }
      buf[i] = b;
      d = c.nesterov ? d + mom * b : b;
    }
    p[i] = pv + neg_lr * d;
  }
}

template <typename T>
T max_nan(T a, T b) { return (a != a || a > b) ? a : b; }

template <typename T>
void adam_cpu(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const kernels::AdamCoefficients& c) {
  const T l2 = static_cast<T>(c.l2), decay = static_cast<T>(c.decay_factor), b1 = static_cast<T>(c.beta1),
          omb1 = static_cast<T>(c.one_minus_beta1), b2 = static_cast<T>(c.beta2),
          omb2 = static_cast<T>(c.one_minus_beta2), bc2s = static_cast<T>(c.bias_correction2_sqrt),
          eps = static_cast<T>(c.eps), nss = static_cast<T>(c.neg_step_size);
  const bool use_l2 = c.l2 != 0.0;
  for (int64_t i = 0; i < n; ++i) {
    T pv = p[i];
    T gv = g[i];
    if (c.decoupled) pv = pv * decay;
    if (use_l2) gv = gv + l2 * pv;
    T mv = m[i] * b1;
    mv = mv + omb1 * gv;
    T vv = v[i] * b2;
    vv = vv + omb2 * gv * gv;
    m[i] = mv;
    v[i] = vv;
    T den = vv;
    if (c.amsgrad) {
      den = max_nan(vmax[i], vv);
      vmax[i] = den;
    }
    den = std::sqrt(den) / bc2s + eps;
    p[i] = pv + nss * mv / den;
  }
}

void* data_or_null(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

#if TL_WITH_CUDA
// ---------------------------------------------------------------------------------------------------------------
// Host -> device copies of the kernel tables through pinned memory: asynchronous, and safe to call again while a
// previous copy is queued (it then waits for that copy, which only happens when tables change step after step).
class PinnedStaging {
 public:
  PinnedStaging() = default;
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  ~PinnedStaging() {
    if (copied_) {
      cudaEventSynchronize(copied_);
      cudaEventDestroy(copied_);
    }
    if (host_) cudaFreeHost(host_);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    if (!copied_) CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventSynchronize(copied_));  // returns at once unless the last copy from host_ is still queued
    if (bytes > capacity_) {
      if (host_) CUDA_CHECK(cudaFreeHost(host_));
      host_ = nullptr;
      capacity_ = std::max(bytes, 2 * capacity_);
      CUDA_CHECK(cudaMallocHost(&host_, capacity_));
    }
    std::memcpy(host_, src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, host_, bytes, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(copied_, stream));
  }

 private:
  void* host_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t copied_ = nullptr;
};

// A device buffer of at least `bytes`, kept while big enough (stream-ordered, so rewriting it after queued
// kernels that read it is safe).
void ensure_device_bytes(Tensor& buffer, size_t bytes) {
  const int64_t words = static_cast<int64_t>((bytes + 7) / 8);
  if (!buffer.defined() || buffer.numel() < words) buffer = Tensor::empty({std::max<int64_t>(words, 1)}, DType::I64,
                                                                          Device::CUDA);
}

// The tables of one fused launch: which tensors (param + state pointers, sizes) and chunks, and the gradients.
struct LaunchTables {
  std::vector<uintptr_t> static_key;  // per tensor: param, state0, state1, state2, numel (what the table holds)
  std::vector<const void*> grad_ptrs;  // what the gradient table holds
  Tensor static_table;                 // OptimTensor[n] then OptimChunk[num_chunks]
  Tensor grad_table;                   // const void*[n]
  int64_t num_chunks = 0;
  PinnedStaging static_staging, grad_staging;
};
#endif  // TL_WITH_CUDA
}  // namespace

struct Optimizer::CudaCache {
#if TL_WITH_CUDA
  // Key: group, dtype, then the indices (within the group) of the parameters in the launch.
  std::map<std::vector<int64_t>, LaunchTables> launches;
#endif
};

// ---------------------------------------------------------------------------------------------------------------
// Construction and accessors

Optimizer::Optimizer(OptimizerKind kind, std::vector<ParamGroup> groups, const HyperParams& defaults) : kind_(kind) {
  TL_CHECK(!groups.empty(), ValueError, optimizer_kind_name(kind), ": no parameter groups given");
  std::set<const GradNode*> seen;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    ParamGroup& spec = groups[gi];
    Group g;
    g.name = spec.name.empty() ? "group" + std::to_string(gi) : spec.name;
    g.hyper = resolve(spec, defaults);
    validate_hyper(kind, g.hyper, g.name);
    TL_CHECK(!spec.params.empty(), ValueError, optimizer_kind_name(kind), " group '", g.name,
             "' has no parameters: leave the group out or give it parameters");
    for (const Parameter& p : spec.params) {
      TL_CHECK(p.defined(), ValueError, optimizer_kind_name(kind), " group '", g.name, "': undefined parameter");
      TL_CHECK(seen.insert(p.node().get()).second, ValueError, optimizer_kind_name(kind), ": parameter '", p.name(),
               "' appears in more than one parameter group (or twice in group '", g.name, "')");
      const DType dt = p.value().dtype();
      TL_CHECK(dt == DType::F32 || dt == DType::F64, DTypeError, optimizer_kind_name(kind), ": parameter '", p.name(),
               "' is ", dtype_name(dt), "; optimizers update float32 or float64 parameters (keep float32 master "
               "weights for bfloat16/float16 training)");
    }
    g.params = std::move(spec.params);
    g.states.resize(g.params.size());
    groups_.push_back(std::move(g));
  }
}

Optimizer::~Optimizer() = default;
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;

const std::string& Optimizer::group_name(size_t g) const {
  TL_CHECK(g < groups_.size(), ValueError, "optimizer group ", g, " out of range (", groups_.size(), " groups)");
  return groups_[g].name;
}
const std::vector<Parameter>& Optimizer::group_params(size_t g) const {
  TL_CHECK(g < groups_.size(), ValueError, "optimizer group ", g, " out of range (", groups_.size(), " groups)");
  return groups_[g].params;
}
const HyperParams& Optimizer::group_hyper(size_t g) const {
  TL_CHECK(g < groups_.size(), ValueError, "optimizer group ", g, " out of range (", groups_.size(), " groups)");
  return groups_[g].hyper;
}
void Optimizer::set_lr(size_t g, double lr) {
  TL_CHECK(g < groups_.size(), ValueError, "optimizer group ", g, " out of range (", groups_.size(), " groups)");
  TL_CHECK(lr >= 0.0, ValueError, "optimizer group '", groups_[g].name, "': invalid learning rate ", lr);
  groups_[g].hyper.lr = lr;
}
const ParamState& Optimizer::state(size_t g, size_t i) const {
  TL_CHECK(g < groups_.size() && i < groups_[g].states.size(), ValueError, "optimizer state (", g, ", ", i,
           ") out of range");
  return groups_[g].states[i];
}

void Optimizer::zero_grad(bool set_to_none) {
  for (Group& g : groups_)
    for (Parameter& p : g.params) {
      if (set_to_none || !p.grad().defined()) {
        p.zero_grad();
      } else if (p.grad().is_unique()) {
        Tensor grad = p.grad();  // shares the storage
        grad.zero_();
      } else {
        const Tensor& grad = p.grad();
        p.set_grad(Tensor::zeros(grad.shape(), grad.dtype(), grad.device(), grad.layout()));
      }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// step(): plan (host bookkeeping and the coefficient table), then the CPU loops and the CUDA launches, both of
// which read their coefficients from the table.

void Optimizer::check_gradients() const {
  for (const Group& group : groups_)
    for (const Parameter& param : group.params) {
      if (!param.trainable() || !param.grad().defined()) continue;
      const Tensor& value = param.value();
      const Tensor& grad = param.grad();
      TL_CHECK(grad.shape() == value.shape() && grad.dtype() == value.dtype() && grad.device() == value.device(),
               ValueError, optimizer_kind_name(kind_), ": gradient of parameter '", param.name(), "' is ",
               grad.str(), " but the parameter is ", value.str(),
               "; gradients must match their parameter's shape, dtype and device");
    }
}

void Optimizer::step() {
  begin_parts({});
  step_part(0);
}

void Optimizer::assign_parts(const std::vector<std::vector<ParamSlot>>& parts) {
  part_of_.resize(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) part_of_[g].assign(groups_[g].params.size(), parts.size());
  for (size_t k = 0; k < parts.size(); ++k)
    for (const ParamSlot& s : parts[k]) {
      TL_CHECK(s.group < groups_.size() && s.index < groups_[s.group].params.size(), ValueError,
               optimizer_kind_name(kind_), ": part ", k, " names parameter ", s.index, " of group ", s.group,
               ", which does not exist");
      size_t& part = part_of_[s.group][s.index];
      TL_CHECK(part == parts.size(), ValueError, optimizer_kind_name(kind_), ": parameter '",
               groups_[s.group].params[s.index].name(), "' is named by parts ", part, " and ", k,
               "; each parameter updates once per step");
      part = k;
    }
}

void Optimizer::begin_parts(const std::vector<std::vector<ParamSlot>>& parts) {
  check_gradients();  // every gradient first, so that a bad one leaves all parameters untouched
  assign_parts(parts);
  launches_.clear();
  part_begin_.assign(1, 0);
  for (size_t k = 0; k <= parts.size(); ++k) {
    for (size_t g = 0; g < groups_.size(); ++g) plan_group(g, k);
    part_begin_.push_back(launches_.size());
  }
  fill_step_scalars();
  upload_step_scalars();
}

void Optimizer::upload_step_scalars() {
  device_scalars_ = nullptr;
#if TL_WITH_CUDA
  for (const Launch& l : launches_)
    if (l.device == Device::CUDA) {
      device_scalars_ = scalars_.upload(cuda::stream());  // one copy for all launches of this step
      break;
    }
#endif
}

void Optimizer::step_part(size_t k) {
  TL_CHECK(k < num_parts(), ValueError, optimizer_kind_name(kind_), ": step_part(", k, ") of a step planned in ",
           num_parts(), " part(s) (begin_parts() first)");
  bool any_cuda = false;
  for (size_t li = part_begin_[k]; li < part_begin_[k + 1]; ++li) {
    const Launch& l = launches_[li];
    if (l.device == Device::CUDA) {
      any_cuda = true;
      continue;
    }
    for (size_t i : l.params) run_cpu(l, i);
  }
  if (any_cuda) launch_cuda(part_begin_[k], part_begin_[k + 1]);
}

std::optional<Optimizer::ParamSlot> Optimizer::slot_of(const Parameter& p) const {
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i)
      if (groups_[g].params[i].node() == p.node()) return ParamSlot{g, i};
  return std::nullopt;
}

void Optimizer::replay_step() {
  for (Launch& l : launches_) {
    for (size_t i : l.params) {
      ParamState& st = groups_[l.group].states[i];
      st.step += 1;
      l.step = st.step;  // the same for all of the launch's parameters (they shared it before)
    }
    l.first = false;  // the last step created every momentum buffer of its parameters
  }
  fill_step_scalars();
  upload_step_scalars();
}

std::optional<size_t> Optimizer::step_scalar_offset(size_t g, size_t i) const {
  for (const Launch& l : launches_)
    if (l.group == g && std::find(l.params.begin(), l.params.end(), i) != l.params.end()) return l.scalars;
  return std::nullopt;
}

std::vector<int64_t> Optimizer::launch_layout() const {
  std::vector<int64_t> v;
  for (const Launch& l : launches_) {
    v.insert(v.end(), {static_cast<int64_t>(l.group), static_cast<int64_t>(l.dtype), static_cast<int64_t>(l.device),
                       static_cast<int64_t>(l.scalars), static_cast<int64_t>(l.params.size())});
    for (size_t i : l.params) v.push_back(static_cast<int64_t>(i));
  }
  return v;
}

void Optimizer::plan_group(size_t gi, size_t part) {
  Group& group = groups_[gi];
  const HyperParams& h = group.hyper;
  const bool is_sgd = kind_ == OptimizerKind::SGD;
  const bool use_momentum = is_sgd && h.momentum != 0.0;

  // Parameters of one dtype and device with the same step (Adam) or first-update flag (SGD) share a launch.
  std::map<std::tuple<int, int, int64_t>, Launch> launches;
  for (size_t i = 0; i < group.params.size(); ++i) {
    Parameter& param = group.params[i];
    if (part_of_[gi][i] != part) continue;
    if (!param.trainable() || !param.grad().defined()) continue;  // PyTorch: `if p.grad is None: continue`
    const Tensor& value = param.value();
    ParamState& st = group.states[i];
    const bool first = use_momentum && !st.momentum_buffer.defined();
    const Device dev = value.device();
    if (is_sgd) {
      if (first) st.momentum_buffer = Tensor::empty(value.shape(), value.dtype(), dev, value.layout());
    } else if (!st.exp_avg.defined()) {
      st.exp_avg = Tensor::zeros(value.shape(), value.dtype(), dev, value.layout());
      st.exp_avg_sq = Tensor::zeros(value.shape(), value.dtype(), dev, value.layout());
    }
    if (!is_sgd && h.amsgrad && !st.max_exp_avg_sq.defined())
      st.max_exp_avg_sq = Tensor::zeros(value.shape(), value.dtype(), dev, value.layout());
    st.step += 1;
    const int64_t key = is_sgd ? (first ? 1 : 0) : st.step;
    Launch& l = launches[{static_cast<int>(dev), static_cast<int>(value.dtype()), key}];
    l.group = gi;
    l.dtype = value.dtype();
    l.device = dev;
    l.first = first;
    l.step = st.step;
    l.params.push_back(i);
  }
  for (auto& [key, l] : launches) launches_.push_back(std::move(l));
}

void Optimizer::fill_step_scalars() {
  scalars_.clear();
  for (Launch& l : launches_) {
    const HyperParams& h = groups_[l.group].hyper;
    if (kind_ == OptimizerKind::SGD)
      l.scalars = scalars_.add(kernels::sgd_coefficients(h.lr, h.weight_decay, h.momentum, h.dampening, h.nesterov,
                                                         l.first));
    else
      l.scalars = scalars_.add(kernels::adam_coefficients(h.lr, h.weight_decay, h.beta1, h.beta2, h.eps, l.step,
                                                          kind_ == OptimizerKind::AdamW, h.amsgrad));
  }
}

void Optimizer::run_cpu(const Launch& l, size_t i) {
  const Parameter& param = groups_[l.group].params[i];
  ParamState& st = groups_[l.group].states[i];
  const Tensor& value = param.value();
  Tensor grad = param.grad();  // checked by step()
  if (grad.layout() != value.layout()) grad = grad.to_layout(value.layout());
  const int64_t n = value.numel();
  if (kind_ == OptimizerKind::SGD) {
    const auto c = scalars_.at<kernels::SgdCoefficients>(l.scalars);
    if (value.dtype() == DType::F32)
      sgd_cpu(value.data_as<float>(), grad.data_as<float>(), static_cast<float*>(data_or_null(st.momentum_buffer)), n,
              c);
    else
      sgd_cpu(value.data_as<double>(), grad.data_as<double>(), static_cast<double*>(data_or_null(st.momentum_buffer)),
              n, c);
  } else {
    const auto c = scalars_.at<kernels::AdamCoefficients>(l.scalars);
    if (value.dtype() == DType::F32)
      adam_cpu(value.data_as<float>(), grad.data_as<float>(), st.exp_avg.data_as<float>(),
               st.exp_avg_sq.data_as<float>(), static_cast<float*>(data_or_null(st.max_exp_avg_sq)), n, c);
    else
      adam_cpu(value.data_as<double>(), grad.data_as<double>(), st.exp_avg.data_as<double>(),
               st.exp_avg_sq.data_as<double>(), static_cast<double*>(data_or_null(st.max_exp_avg_sq)), n, c);
  }
}

void Optimizer::launch_cuda(size_t first, size_t last) {
#if TL_WITH_CUDA
  if (!cuda_cache_) cuda_cache_ = std::make_unique<CudaCache>();
  if (cuda_cache_->launches.size() > 64) cuda_cache_->launches.clear();  // bound odd partition patterns
  cudaStream_t stream = cuda::stream();
  const unsigned char* scalars = device_scalars_;  // uploaded by begin_parts()
  const bool is_sgd = kind_ == OptimizerKind::SGD;
  std::vector<Tensor> converted;  // gradients converted to their parameter's layout, freed after the launches
  for (size_t li = first; li < last; ++li) {
    const Launch& l = launches_[li];
    if (l.device != Device::CUDA) continue;
    Group& group = groups_[l.group];
    const std::vector<size_t>& indices = l.params;
    std::vector<int64_t> key = {static_cast<int64_t>(l.group), static_cast<int64_t>(l.dtype)};
    for (size_t i : indices) key.push_back(static_cast<int64_t>(i));
    LaunchTables& t = cuda_cache_->launches[key];

    // Parameter/state table and chunks: rebuilt only when a pointer or size changed.
    std::vector<uintptr_t> static_key;
    static_key.reserve(indices.size() * 5);
    for (size_t i : indices) {
      const ParamState& st = group.states[i];
      const Tensor& s0 = is_sgd ? st.momentum_buffer : st.exp_avg;
      static_key.insert(static_key.end(),
                        {reinterpret_cast<uintptr_t>(group.params[i].value().data()),
                         reinterpret_cast<uintptr_t>(data_or_null(s0)),
                         reinterpret_cast<uintptr_t>(data_or_null(st.exp_avg_sq)),
                         reinterpret_cast<uintptr_t>(data_or_null(st.max_exp_avg_sq)),
                         static_cast<uintptr_t>(group.params[i].value().numel())});
    }
    if (static_key != t.static_key) {
      std::vector<kernels::OptimTensor> tensors;
      std::vector<kernels::OptimChunk> chunks;
      for (size_t k = 0; k < indices.size(); ++k) {
        const uintptr_t* e = &static_key[k * 5];
        tensors.push_back({reinterpret_cast<void*>(e[0]), reinterpret_cast<void*>(e[1]),
                           reinterpret_cast<void*>(e[2]), reinterpret_cast<void*>(e[3]), static_cast<int64_t>(e[4])});
        const int64_t n_chunks = (static_cast<int64_t>(e[4]) + kernels::kOptimChunk - 1) / kernels::kOptimChunk;
        for (int64_t c = 0; c < n_chunks; ++c)
          chunks.push_back({static_cast<int32_t>(k), static_cast<int32_t>(c)});
      }
      const size_t tensor_bytes = tensors.size() * sizeof(kernels::OptimTensor);
      const size_t bytes = tensor_bytes + chunks.size() * sizeof(kernels::OptimChunk);
      std::vector<unsigned char> host(bytes);
      std::memcpy(host.data(), tensors.data(), tensor_bytes);
      if (!chunks.empty()) std::memcpy(host.data() + tensor_bytes, chunks.data(), bytes - tensor_bytes);
      ensure_device_bytes(t.static_table, bytes);
      t.static_staging.copy_to_device(t.static_table.data(), host.data(), bytes, stream);
      t.num_chunks = static_cast<int64_t>(chunks.size());
      t.static_key = std::move(static_key);
      ++cuda_stats_.table_uploads;
    }
    // Gradient table: re-uploaded only when the gradients moved.
    std::vector<const void*> grad_ptrs;
    grad_ptrs.reserve(indices.size());
    for (size_t i : indices) {
      const Tensor& value = group.params[i].value();
      Tensor grad = group.params[i].grad();
      if (grad.layout() != value.layout()) {
        grad = grad.to_layout(value.layout());
        converted.push_back(grad);
      }
      grad_ptrs.push_back(grad.data());
    }
    if (grad_ptrs != t.grad_ptrs) {
      const size_t bytes = grad_ptrs.size() * sizeof(void*);
      ensure_device_bytes(t.grad_table, bytes);
      t.grad_staging.copy_to_device(t.grad_table.data(), grad_ptrs.data(), bytes, stream);
      t.grad_ptrs = std::move(grad_ptrs);
      ++cuda_stats_.grad_table_uploads;
    }
    if (t.num_chunks == 0) continue;  // only empty tensors

    const auto* tensors = static_cast<const kernels::OptimTensor*>(t.static_table.data());
    const auto* chunks = reinterpret_cast<const kernels::OptimChunk*>(
        static_cast<const unsigned char*>(t.static_table.data()) + indices.size() * sizeof(kernels::OptimTensor));
    const auto* grad_table = static_cast<const void* const*>(t.grad_table.data());
    if (is_sgd)
      kernels::sgd_multi_tensor(tensors, grad_table, chunks, t.num_chunks, l.dtype,
                                reinterpret_cast<const kernels::SgdCoefficients*>(scalars + l.scalars), stream);
    else
      kernels::adam_multi_tensor(tensors, grad_table, chunks, t.num_chunks, l.dtype,
                                 reinterpret_cast<const kernels::AdamCoefficients*>(scalars + l.scalars), stream);
    ++cuda_stats_.launches;
  }
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// State dict

namespace {
const char* const kStateTensorNames[] = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
Tensor* state_tensor(ParamState& st, int k) {
  switch (k) {
    case 0: return &st.momentum_buffer;
    case 1: return &st.exp_avg;
    case 2: return &st.exp_avg_sq;
    default: return &st.max_exp_avg_sq;
  }
}
// An owned CPU copy (never an alias of the live state).
Tensor host_copy(const Tensor& t) { return t.is_cuda() ? t.to(Device::CPU) : t.clone(); }

void put_hyper(StateDict& sd, const std::string& p, const HyperParams& h) {
  sd.set_double(p + "lr", h.lr);
  sd.set_double(p + "weight_decay", h.weight_decay);
  sd.set_double(p + "momentum", h.momentum);
  sd.set_double(p + "dampening", h.dampening);
  sd.set_bool(p + "nesterov", h.nesterov);
  sd.set_double(p + "beta1", h.beta1);
  sd.set_double(p + "beta2", h.beta2);
  sd.set_double(p + "eps", h.eps);
  sd.set_bool(p + "amsgrad", h.amsgrad);
}
HyperParams get_hyper(const StateDict& sd, const std::string& p) {
  HyperParams h;
  h.lr = sd.get_double(p + "lr");
  h.weight_decay = sd.get_double(p + "weight_decay");
  h.momentum = sd.get_double(p + "momentum");
  h.dampening = sd.get_double(p + "dampening");
  h.nesterov = sd.get_bool(p + "nesterov");
  h.beta1 = sd.get_double(p + "beta1");
  h.beta2 = sd.get_double(p + "beta2");
  h.eps = sd.get_double(p + "eps");
  h.amsgrad = sd.get_bool(p + "amsgrad");
  return h;
}
}  // namespace

StateDict Optimizer::state_dict() const {
  StateDict sd;
  sd.set_string("kind", optimizer_kind_name(kind_));
  sd.set_int("num_groups", static_cast<int64_t>(groups_.size()));
  for (size_t g = 0; g < groups_.size(); ++g) {
    const Group& group = groups_[g];
    const std::string gp = "group." + std::to_string(g) + ".";
    sd.set_string(gp + "name", group.name);
    sd.set_int(gp + "num_params", static_cast<int64_t>(group.params.size()));
    put_hyper(sd, gp, group.hyper);
    for (size_t i = 0; i < group.params.size(); ++i) {
      sd.set_string(gp + "param." + std::to_string(i) + ".name", group.params[i].name());
      const std::string sp = "state." + std::to_string(g) + "." + std::to_string(i) + ".";
      ParamState st = group.states[i];  // shares the tensors; copied below
      sd.set_int(sp + "step", st.step);
      for (int k = 0; k < 4; ++k) {
        const Tensor* t = state_tensor(st, k);
        if (t->defined()) sd.tensors[sp + kStateTensorNames[k]] = host_copy(*t);
      }
    }
  }
  return sd;
}

void Optimizer::load_state_dict(const StateDict& sd) {
  const std::string what = std::string("loading ") + optimizer_kind_name(kind_) + " optimizer state: ";
  const std::string& kind = sd.get_string("kind");
  TL_CHECK(kind == optimizer_kind_name(kind_), ValueError, what, "the checkpoint holds '", kind,
           "' optimizer state; resume with the same optimizer or start without resuming");
  const int64_t num_groups = sd.get_int("num_groups");
  TL_CHECK(num_groups == static_cast<int64_t>(groups_.size()), ValueError, what, "the checkpoint has ", num_groups,
           " parameter groups, this optimizer has ", groups_.size(),
           "; resume with the same parameter groups (same freezing and learning-rate options)");

  // Build everything first, so that a bad checkpoint leaves this optimizer unchanged.
  std::vector<HyperParams> hypers(groups_.size());
  std::vector<std::vector<ParamState>> states(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    const Group& group = groups_[g];
    const std::string gp = "group." + std::to_string(g) + ".";
    const int64_t num_params = sd.get_int(gp + "num_params");
    TL_CHECK(num_params == static_cast<int64_t>(group.params.size()), ValueError, what, "group '", group.name,
             "' has ", num_params, " parameters in the checkpoint but ", group.params.size(),
             " here; resume with the same model and parameter groups");
    hypers[g] = get_hyper(sd, gp);
    validate_hyper(kind_, hypers[g], group.name);
    states[g].resize(group.params.size());
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor& value = group.params[i].value();
      const std::string& saved_name = sd.get_string(gp + "param." + std::to_string(i) + ".name");
      TL_CHECK(saved_name == group.params[i].name(), ValueError, what, "parameter ", i, " of group '", group.name,
               "' is '", saved_name, "' in the checkpoint but '", group.params[i].name(),
               "' here; resume with the same model and parameter groups");
      const std::string sp = "state." + std::to_string(g) + "." + std::to_string(i) + ".";
      ParamState& st = states[g][i];
      st.step = sd.get_int(sp + "step");
      TL_CHECK(st.step >= 0, ValueError, what, "negative step count for '", saved_name, "'");
      for (int k = 0; k < 4; ++k) {
        const std::string key = sp + kStateTensorNames[k];
        if (!sd.has_tensor(key)) continue;
        const Tensor& saved = sd.tensors.at(key);
        TL_CHECK(saved.shape() == value.shape(), ValueError, what, "'", key, "' of parameter '", saved_name,
                 "' has shape ", shape_str(saved.shape()), " but the parameter has ", shape_str(value.shape()));
        TL_CHECK(saved.dtype() == DType::F32 || saved.dtype() == DType::F64, ValueError, what, "'", key, "' is ",
                 dtype_name(saved.dtype()), ", not a float32/float64 tensor");
        Tensor t = Tensor::empty(value.shape(), value.dtype(), value.device(), value.layout());
        t.copy_(saved);
        *state_tensor(st, k) = t;
      }
      if (kind_ != OptimizerKind::SGD && st.step > 0) {
        TL_CHECK(st.exp_avg.defined() && st.exp_avg_sq.defined(), ValueError, what, "parameter '", saved_name,
                 "' has taken ", st.step, " steps but the checkpoint lacks its exp_avg/exp_avg_sq");
        TL_CHECK(!hypers[g].amsgrad || st.max_exp_avg_sq.defined(), ValueError, what, "parameter '", saved_name,
                 "' uses amsgrad but the checkpoint lacks its max_exp_avg_sq");
      }
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].hyper = hypers[g];
    groups_[g].states = std::move(states[g]);
  }
  cuda_cache_.reset();  // the state tensors are new
  launches_.clear();    // nothing to replay
  part_begin_.clear();
}

}  // namespace tl::train
