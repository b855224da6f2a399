// Autograd: Variables (a tensor plus gradient bookkeeping), Parameters with a `trainable` flag, and a Tape.
//
// How it works
// - An op whose inputs all have requires_grad() == false records nothing and saves nothing: its output is a
//   plain Variable. Otherwise it records one TapeEntry: which inputs need a gradient, the tensors its backward
//   needs (only those: a convolution saves its input only if its weight trains), and a backward function.
// - Tape::backward(root) walks the entries in reverse recording order (a valid topological order), calls each
//   backward with a GradSlot per input, and releases each entry's saved tensors as soon as it has run.
// - Gradients of non-leaf Variables are freed once consumed (unless retain_grad()); Parameter gradients
//   accumulate across backward passes until zero_grad().
//
// Gradient contract of every op's backward (also stated in each op's header): for each input slot with
// `needed`, if `accumulate` is true the op ADDS its gradient into slot.grad (cuDNN/cuBLAS beta = 1);
// otherwise it ASSIGNS a new tensor to slot.grad (it may alias grad_out when the gradient is the identity).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tl {

// Gradient bookkeeping shared by all copies of a Variable.
struct GradNode {
  Tensor grad;
  bool requires_grad = false;  // for leaves: the user's flag (a Parameter's `trainable`)
  bool is_leaf = true;
  bool retain = false;  // keep a non-leaf's gradient after backward (tests, debugging)
};

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor value, bool requires_grad = false);

  bool defined() const { return data_ != nullptr; }
  const Tensor& value() const;
  Tensor& mutable_value();  // in-place updates (optimizers); does not record
  const Shape& shape() const { return value().shape(); }
  int64_t size(int dim) const { return value().size(dim); }

  bool requires_grad() const;
  // The accumulated gradient (undefined when none has arrived).
  const Tensor& grad() const;
  void set_grad(const Tensor& g);
  void zero_grad();  // drops the gradient (set to none, as PyTorch's zero_grad default)
  void retain_grad();
  const std::shared_ptr<GradNode>& node() const;

  // Used by ops when recording: a non-leaf output attached to a fresh GradNode.
  static Variable make_result(Tensor value, std::shared_ptr<GradNode> node);

 protected:
  struct Data {
    Tensor value;
    std::shared_ptr<GradNode> node;  // null: no gradient will ever flow here
    std::string name;
  };
  std::shared_ptr<Data> data_;
};

// A learnable tensor of a model. trainable == requires_grad: a frozen Parameter makes the ops that use it
// skip its gradient, and whole frozen prefixes record nothing at all.
class Parameter : public Variable {
 public:
  Parameter() = default;
  Parameter(Tensor value, std::string name, bool trainable = true);
  bool trainable() const { return requires_grad(); }
  void set_trainable(bool trainable);
  const std::string& name() const;
};

// One slot per op input, filled by the op's backward (see the contract above).
struct GradSlot {
  bool needed = false;
  bool accumulate = false;
  Tensor grad;
};
using BackwardFn = std::function<void(const Tensor& grad_out, std::vector<GradSlot>& slots)>;
// Told, during a backward pass, that a leaf's gradient is final for this pass (see Tape::backward).
using LeafReadyFn = std::function<void(const GradNode& leaf)>;

struct TapeEntry {
  std::string op;
  std::vector<std::shared_ptr<GradNode>> inputs;  // null where the input needs no gradient
  std::weak_ptr<GradNode> output;  // weak: an entry whose output died can never receive a gradient
  BackwardFn backward;             // owns the saved tensors
  // Leaves that `backward` accumulates into directly rather than through a slot: the parameters a checkpoint()'s
  // function uses (its recomputation backpropagates into them). Known so that the leaf-ready report covers them.
  std::vector<std::shared_ptr<GradNode>> inner_leaves;
  size_t saved_bytes = 0;
};

// What one backward pass did, entry by entry (for tests and `bench`): which input gradients were computed.
struct BackwardRecord {
  std::string op;
  std::vector<bool> input_grad_computed;
};

class Tape {
 public:
  // The tape ops record onto: the innermost TapeScope's, else a per-thread default.
  static Tape& current();

  size_t size() const { return entries_.size(); }
  size_t saved_bytes() const;
  const std::vector<TapeEntry>& entries() const { return entries_; }
  void clear() { entries_.clear(); }

  void record(TapeEntry entry);
  // Backpropagate from `root` (seed defaults to ones). Consumes the tape.
  // `on_leaf_ready` (optional) is called once for each leaf that needs a gradient (a trainable Parameter) and that
  // an entry of this tape feeds, as soon as its gradient is final for this pass: after the earliest-recorded entry
  // that feeds it has run (its last accumulation, not its first), or was skipped because its output got no gradient
  // (the leaf's gradient may then be undefined). A checkpoint() entry feeds the parameters its function uses
  // (TapeEntry::inner_leaves). Data-parallel training starts a bucket's all-reduce from it while backward goes on
  // (train/data_parallel.h). Leaves that no entry feeds are never reported (entries() tells which are fed).
  void backward(const Variable& root, const Tensor& seed = Tensor(), const LeafReadyFn& on_leaf_ready = nullptr);
  const std::vector<BackwardRecord>& last_backward() const { return last_backward_; }

 private:
  void prune_dead_entries();
  void run_entry(TapeEntry& e, const GradNode* root);
  void find_leaf_last_uses();
  std::vector<TapeEntry> entries_;
  // backward()'s scratch, kept to allocate nothing per pass: (index of the earliest entry feeding a leaf, leaf),
  // ascending by index.
  std::vector<std::pair<size_t, const GradNode*>> leaf_last_use_;
  std::vector<BackwardRecord> last_backward_;
  size_t prune_at_ = 64;
};

// Make `tape` current for this thread while the scope lives.
class TapeScope {
 public:
  explicit TapeScope(Tape& tape);
  ~TapeScope();
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape* previous_;
};

// Inside a NoGradGuard, ops record nothing (evaluation, frozen feature extraction).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
bool grad_enabled();

// backward() on the current tape.
void backward(const Variable& root, const Tensor& seed = Tensor(), const LeafReadyFn& on_leaf_ready = nullptr);

// Activation checkpointing (torch.utils.checkpoint): runs `fn` on `inputs` now, keeping none of its intermediate
// tensors, and records one entry that keeps only the inputs; the backward pass runs `fn` again on them, under its own
// tape, and backpropagates through that. Gradients reach the inputs and every parameter `fn` uses (accumulated into
// them, as any backward does). Costs one more forward of `fn`; saves what its ops would have kept. When nothing in
// `fn` needs a gradient, nothing is recorded. `fn` must compute the same values when run again (no dropout); batch
// norm in training mode uses the same batch statistics and does not update its running statistics a second time
// (see recomputing()). The MAC counter (layers/mac_counter.h) sees the first run only, as the real step would.
using CheckpointFn = std::function<Variable(const std::vector<Variable>&)>;
Variable checkpoint(const CheckpointFn& fn, const std::vector<Variable>& inputs, const char* op = "checkpoint");
// True while checkpoint() runs a function again in the backward pass (ops with side effects skip them).
bool recomputing();

// ---- helpers for op implementations ----
// True when recording is on and at least one input needs a gradient.
bool should_record(std::initializer_list<const Variable*> inputs);
inline bool needs_grad(const Variable& v) { return v.defined() && v.requires_grad(); }
size_t bytes_of(std::initializer_list<Tensor> saved);
// Records `op` with `inputs` (undefined Variables allowed, e.g. a missing bias) and returns the output Variable.
// Call only when should_record() was true.
Variable record_op(const char* op, Tensor output, std::initializer_list<const Variable*> inputs, size_t saved_bytes,
                   BackwardFn backward);
// Stores `g` into a slot following the contract: assign, or add into the existing gradient.
void give_grad(GradSlot& slot, const Tensor& g);

}  // namespace tl
