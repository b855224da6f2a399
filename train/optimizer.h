// Optimizers with parameter groups: SGD (momentum, dampening, Nesterov, weight decay), Adam (L2 weight decay
// added to the gradient) and AdamW (decoupled weight decay), amsgrad optional. Each update is the one of
// torch.optim 1.13's single-tensor (foreach=False) implementation, operation by operation, with its scalars
// rounded to the parameter's dtype as PyTorch does, so trajectories match PyTorch on the same gradients.
//
// Skipping: a parameter whose trainable() is false or that has no gradient (grad() undefined) is left alone,
// exactly like PyTorch's `if p.grad is None: continue` (no weight decay, no state, no step count).
// State (momentum_buffer; step, exp_avg, exp_avg_sq, max_exp_avg_sq) is created on a parameter's first update.
//
// Devices: float32/float64 parameters on the CPU (reference loops) or on CUDA, where each step issues one fused
// multi-tensor kernel per (group, dtype) covering all of the group's parameters. Its tables of parameter/state
// pointers, sizes and chunks live in device memory, uploaded once and reused while the pointers stay the same;
// gradient pointers sit in a separate small table that is re-uploaded (from pinned memory, no host sync) only
// when the gradients moved. The learning rate, the bias corrections and SGD's first-update flag of each launch
// are one entry of a per-step coefficient table (train/step_scalars.h) that the kernels read from device memory,
// copied once per step: a schedule may change the lr every step at no cost, and a replayed CUDA graph reads the
// fresh values. The CPU loops read the same entries. (Parameters whose step counts differ, e.g. after unfreezing
// a layer mid-training, or whose momentum buffer does not exist yet, get one more launch per distinct case.)
// CUDA graphs: capture a step only after a warm-up step has built the tables, and keep the gradients where they
// were (as for any captured kernel, the pointers in the tables are what the replayed step uses); each replay
// calls replay_step() first, which does the step's host bookkeeping and copies its coefficients.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "train/state_dict.h"
#include "train/step_scalars.h"

namespace tl::train {

enum class OptimizerKind { SGD, Adam, AdamW };
const char* optimizer_kind_name(OptimizerKind kind);  // "sgd", "adam", "adamw"
// Parses "sgd" / "adam" / "adamw" (case-insensitive); throws ValueError listing the choices.
OptimizerKind parse_optimizer_kind(const std::string& name);

// Hyper-parameters of one group. Fields a kind does not use are ignored (betas for SGD, momentum for Adam).
struct HyperParams {
  double lr = 1e-3;
  double weight_decay = 0.0;
  // SGD
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  // Adam / AdamW
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  bool amsgrad = false;

  // PyTorch's defaults for each optimizer (AdamW's weight decay defaults to 1e-2, Adam's to 0).
  static HyperParams sgd(double lr, double momentum = 0.0, double weight_decay = 0.0, bool nesterov = false,
                         double dampening = 0.0);
  static HyperParams adam(double lr = 1e-3, double weight_decay = 0.0, double beta1 = 0.9, double beta2 = 0.999,
                          double eps = 1e-8, bool amsgrad = false);
  static HyperParams adamw(double lr = 1e-3, double weight_decay = 1e-2, double beta1 = 0.9, double beta2 = 0.999,
                           double eps = 1e-8, bool amsgrad = false);
};

// A parameter group as the user gives it: parameters plus the hyper-parameters that differ from the
// optimizer's defaults (e.g. body lr 1e-3, head lr 1e-2). Frozen parameters may be listed; they are skipped.
struct ParamGroup {
  ParamGroup() = default;
  ParamGroup(std::string name, std::vector<Parameter> params, std::optional<double> lr = std::nullopt)
      : name(std::move(name)), params(std::move(params)), lr(lr) {}

  std::string name;  // used in messages; "group<i>" when empty
  std::vector<Parameter> params;
  std::optional<double> lr, weight_decay, momentum, dampening, beta1, beta2, eps;
  std::optional<bool> nesterov, amsgrad;
};

// Per-parameter optimizer state (undefined tensors until the parameter's first update).
struct ParamState {
  int64_t step = 0;        // updates applied to this parameter
  Tensor momentum_buffer;  // SGD with momentum != 0
  Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;  // Adam/AdamW (max_exp_avg_sq only with amsgrad)
};

class Optimizer {
 public:
  // Throws ValueError for invalid hyper-parameters (as torch.optim does), no groups, an empty group, a parameter
  // listed twice, or a parameter whose dtype is not float32/float64.
  Optimizer(OptimizerKind kind, std::vector<ParamGroup> groups, const HyperParams& defaults);
  ~Optimizer();
  Optimizer(Optimizer&&) noexcept;
  Optimizer& operator=(Optimizer&&) noexcept;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  OptimizerKind kind() const { return kind_; }
  size_t num_groups() const { return groups_.size(); }
  const std::string& group_name(size_t g) const;
  const std::vector<Parameter>& group_params(size_t g) const;
  const HyperParams& group_hyper(size_t g) const;
  double lr(size_t g) const { return group_hyper(g).lr; }
  void set_lr(size_t g, double lr);  // what schedules call; no re-upload, no rebuild
  const ParamState& state(size_t g, size_t i) const;

  // One update of every parameter that trains and has a gradient. Gradients must have the parameter's
  // shape, dtype and device (a different layout is converted). The same as begin_parts({}) then step_part(0).
  void step();

  // A step in parts (data-parallel: the parameters of each bucket of averaged gradients update as soon as that
  // bucket's all-reduce ended, while the later buckets still reduce; train/data_parallel.h). begin_parts() checks
  // every gradient (a bad one leaves all parameters untouched) and does the host bookkeeping of the whole step at
  // once: state, step counts, the launches of part k (the parameters `parts[k]` names; every other one forms the
  // last part, index parts.size()), one coefficient table and, on CUDA, its one upload. step_part(k) then runs part
  // k's updates (the CPU loops, or its fused kernels on cuda::stream(), so that they wait only for what was queued
  // there before: a bucket's own all-reduce). Each parameter's update is the one step() makes, bit for bit (updates
  // are per parameter, with the same coefficients), so the parts may run in any order, each once. Whether a
  // parameter updates (it trains and has a gradient) is decided in begin_parts(): a gradient may change its values
  // after it, not whether it exists. A parameter named twice, or a slot out of range, is a ValueError.
  struct ParamSlot {
    size_t group = 0, index = 0;
  };
  void begin_parts(const std::vector<std::vector<ParamSlot>>& parts);
  void step_part(size_t k);
  size_t num_parts() const { return part_begin_.empty() ? 0 : part_begin_.size() - 1; }
  // Where `p` is among the groups (nullopt when no group holds it).
  std::optional<ParamSlot> slot_of(const Parameter& p) const;
  // Drops every parameter's gradient (set_to_none, PyTorch's default), or zeroes it in place (set_to_none =
  // false: PyTorch's zero_grad(set_to_none=False)), so that the next backward adds into the same storage: the
  // gradients keep their addresses from step to step, as a captured CUDA graph needs (train/cuda_graph.h). A
  // gradient that shares its storage with another tensor is replaced by zeros instead (never zeroed under it).
  void zero_grad(bool set_to_none = true);

  // The host side of a step whose kernels a replayed CUDA graph runs (train/cuda_graph.h): every parameter the
  // last step() updated takes one more step (its step count, the coefficient table, queued to the device on
  // cuda::stream() before the graph launch); no parameter, gradient or state tensor is touched. The launches keep
  // the last step()'s partition, so the captured kernels find their entries at the same offsets. (On the CPU it
  // is that bookkeeping alone: tests use it.)
  void replay_step();
  // The coefficient table of the last step() or replay_step(), and the offset of parameter i of group g's entry
  // in it (nullopt when that step did not update the parameter). The entry is a kernels::SgdCoefficients or
  // kernels::AdamCoefficients (kernels/optim_coefficients.h).
  const StepScalars& step_scalars() const { return scalars_; }
  std::optional<size_t> step_scalar_offset(size_t g, size_t i) const;
  // The last step's launch partition as numbers (per launch: group, dtype, device, entry offset, parameters): a
  // captured graph's kernels are only right for the partition they were captured with.
  std::vector<int64_t> launch_layout() const;
#if TL_WITH_CUDA
  StepScalars& step_scalars() { return scalars_; }  // for the graph launcher's flush()
#endif

  // Everything needed to continue exactly: kind, per group its hyper-parameters (the current lr included),
  // parameter names and count, per parameter its step and state tensors (CPU copies).
  // Keys: "kind", "num_groups", "group.<g>.<field>", "group.<g>.param.<i>.name", "state.<g>.<i>.step",
  // "state.<g>.<i>.<momentum_buffer|exp_avg|exp_avg_sq|max_exp_avg_sq>".
  StateDict state_dict() const;
  // Restores a state_dict() of an optimizer of the same kind over the same groups of parameters (same names
  // and shapes). Throws ValueError naming what differs; on error this optimizer is left unchanged.
  void load_state_dict(const StateDict& state);

  // What the CUDA path has done so far (for tests and benchmarks): fused kernel launches, and uploads of the
  // parameter/state tables and of the gradient tables. In steady state only `launches` grows.
  struct CudaStats {
    int64_t launches = 0, table_uploads = 0, grad_table_uploads = 0;
  };
  const CudaStats& cuda_stats() const { return cuda_stats_; }

 private:
  struct Group {
    std::string name;
    std::vector<Parameter> params;
    HyperParams hyper;
    std::vector<ParamState> states;
  };
  struct CudaCache;  // fused-kernel tables, per launch (optimizer.cpp)
  // One fused update: parameters of one group, dtype and device that share the step count (Adam) or the
  // first-update flag (SGD), with the offset of its coefficients in the step's table.
  struct Launch {
    size_t group = 0;
    DType dtype = DType::F32;
    Device device = Device::CPU;
    bool first = false;  // SGD: the momentum buffers are created by this update
    int64_t step = 0;    // the parameters' step count after this update
    std::vector<size_t> params;
    size_t scalars = 0;
  };

  void check_gradients() const;
  void assign_parts(const std::vector<std::vector<ParamSlot>>& parts);
  // Host bookkeeping of the update of group g's parameters in `part`: state, step counts, launches_.
  void plan_group(size_t g, size_t part);
  void fill_step_scalars();   // the table from launches_
  void upload_step_scalars();  // CUDA launches planned: the table to the device (device_scalars_), once per step
  void run_cpu(const Launch& l, size_t i);
  void launch_cuda(size_t first, size_t last);  // launches_[first, last) on CUDA
  OptimizerKind kind_;
  std::vector<Group> groups_;
  std::vector<Launch> launches_;  // of the last step
  std::vector<std::vector<size_t>> part_of_;  // per group and parameter: its part in the step being planned
  std::vector<size_t> part_begin_;  // part k's launches: launches_[part_begin_[k], part_begin_[k + 1])
  StepScalars scalars_;
  const unsigned char* device_scalars_ = nullptr;  // CUDA: the table's device copy for this step's launches
  std::unique_ptr<CudaCache> cuda_cache_;
  CudaStats cuda_stats_;
};

}  // namespace tl::train
