// Tape-based reverse-mode autograd (see autograd.h for the design and the gradient contract).
#include "core/autograd.h"

#include <algorithm>

namespace tl {
namespace {
thread_local Tape* tls_tape = nullptr;
thread_local bool tls_grad_enabled = true;
thread_local bool tls_recomputing = false;
}  // namespace

Variable::Variable(Tensor value, bool requires_grad) : data_(std::make_shared<Data>()) {
  data_->value = std::move(value);
  data_->node = std::make_shared<GradNode>();
  data_->node->requires_grad = requires_grad;
}

const Tensor& Variable::value() const {
  TL_CHECK(defined(), ValueError, "use of an undefined Variable");
  return data_->value;
}
Tensor& Variable::mutable_value() {
  TL_CHECK(defined(), ValueError, "use of an undefined Variable");
  return data_->value;
}
bool Variable::requires_grad() const { return defined() && data_->node && data_->node->requires_grad; }
const Tensor& Variable::grad() const {
  static const Tensor none;
  return (defined() && data_->node) ? data_->node->grad : none;
}
void Variable::set_grad(const Tensor& g) {
  TL_CHECK(defined() && data_->node, ValueError, "set_grad on a Variable that takes no gradient");
  if (g.defined()) check_same_shape(value(), g, "set_grad");
  data_->node->grad = g;
}
void Variable::zero_grad() {
  if (defined() && data_->node) data_->node->grad = Tensor();
}
void Variable::retain_grad() {
  if (defined() && data_->node) data_->node->retain = true;
}
const std::shared_ptr<GradNode>& Variable::node() const {
  TL_CHECK(defined(), ValueError, "use of an undefined Variable");
  return data_->node;
}
Variable Variable::make_result(Tensor value, std::shared_ptr<GradNode> node) {
  Variable v;
  v.data_ = std::make_shared<Data>();
  v.data_->value = std::move(value);
  v.data_->node = std::move(node);
  return v;
}

Parameter::Parameter(Tensor value, std::string name, bool trainable) : Variable(std::move(value), trainable) {
  data_->name = std::move(name);
}
void Parameter::set_trainable(bool trainable) {
  TL_CHECK(defined(), ValueError, "set_trainable on an undefined Parameter");
  data_->node->requires_grad = trainable;
  if (!trainable) data_->node->grad = Tensor();
}
const std::string& Parameter::name() const {
  TL_CHECK(defined(), ValueError, "name of an undefined Parameter");
  return data_->name;
}

Tape& Tape::current() {
  if (tls_tape) return *tls_tape;
  thread_local Tape default_tape;
  return default_tape;
}

size_t Tape::saved_bytes() const {
  size_t total = 0;
  for (const TapeEntry& e : entries_) total += e.saved_bytes;
  return total;
}

void Tape::record(TapeEntry entry) {
  entries_.push_back(std::move(entry));
  if (entries_.size() >= prune_at_) {
    prune_dead_entries();
    prune_at_ = std::max<size_t>(64, entries_.size() * 2);
  }
}

// An entry whose output Variable is gone (and that no later entry consumed) can never receive a gradient.
// Dropping it releases its inputs, which may make earlier entries dead too: walk from the back.
void Tape::prune_dead_entries() {
  for (size_t i = entries_.size(); i-- > 0;) {
    if (entries_[i].output.expired()) entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

// Every leaf that needs a gradient with the index of the earliest entry feeding it: the walk in reverse order
// accumulates into it for the last time there. Sorting (leaf, index) pairs finds each leaf's minimum without a map.
void Tape::find_leaf_last_uses() {
  leaf_last_use_.clear();
  for (size_t i = 0; i < entries_.size(); ++i) {
    for (const auto& in : entries_[i].inputs)
      if (in && in->is_leaf && in->requires_grad) leaf_last_use_.emplace_back(i, in.get());
    for (const auto& in : entries_[i].inner_leaves)
      if (in->requires_grad) leaf_last_use_.emplace_back(i, in.get());
  }
  std::sort(leaf_last_use_.begin(), leaf_last_use_.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second < b.second : a.first < b.first;
  });
  leaf_last_use_.erase(std::unique(leaf_last_use_.begin(), leaf_last_use_.end(),
                                   [](const auto& a, const auto& b) { return a.second == b.second; }),
                       leaf_last_use_.end());
  std::sort(leaf_last_use_.begin(), leaf_last_use_.end());
}

// One entry of the reverse walk: its backward fills the input gradients (see the contract in autograd.h).
void Tape::run_entry(TapeEntry& e, const GradNode* root) {
  std::shared_ptr<GradNode> out = e.output.lock();
  if (!out || !out->grad.defined()) return;
  std::vector<GradSlot> slots(e.inputs.size());
  BackwardRecord rec{e.op, std::vector<bool>(e.inputs.size(), false)};
  for (size_t k = 0; k < e.inputs.size(); ++k) {
    const auto& in = e.inputs[k];
    if (!in || !in->requires_grad) continue;
    slots[k].needed = true;
    rec.input_grad_computed[k] = true;
    // Accumulate in place only into a gradient nobody else shares (an aliased grad_out must not change).
    if (in->grad.defined() && in->grad.is_unique()) {
      slots[k].accumulate = true;
      slots[k].grad = in->grad;
    }
  }
  Tensor grad_out = out->grad;
  if (!out->is_leaf && !out->retain && out.get() != root) out->grad = Tensor();
  e.backward(grad_out, slots);
  grad_out = Tensor();
  for (size_t k = 0; k < e.inputs.size(); ++k) {
    if (!slots[k].needed) continue;
    GradNode& in = *e.inputs[k];
    TL_CHECK(slots[k].grad.defined(), Error, "backward of op '", e.op, "' produced no gradient for input ", k);
    if (slots[k].accumulate) continue;  // added in place
    if (in.grad.defined()) {
      Tensor sum = in.grad.clone();
      sum.add_(slots[k].grad);
      in.grad = sum;
    } else {
      in.grad = slots[k].grad;
    }
  }
  e.backward = nullptr;  // release saved tensors now
  last_backward_.push_back(std::move(rec));
}

void Tape::backward(const Variable& root, const Tensor& seed, const LeafReadyFn& on_leaf_ready) {
  TL_CHECK(root.defined() && root.requires_grad(), ValueError,
           "backward(): the root does not require a gradient (no trainable parameter feeds it)");
  const std::shared_ptr<GradNode>& root_node = root.node();
  if (seed.defined()) {
    check_same_shape(root.value(), seed, "backward seed");
    root_node->grad = seed;
  } else {
    root_node->grad = Tensor::full(root.shape(), 1.0, root.value().dtype(), root.value().device(), root.value().layout());
  }
  last_backward_.clear();
  leaf_last_use_.clear();
  if (on_leaf_ready) find_leaf_last_uses();
  size_t ready = leaf_last_use_.size();  // leaf_last_use_[ready, end) have been reported
  for (size_t i = entries_.size(); i-- > 0;) {
    run_entry(entries_[i], root_node.get());
    for (; ready > 0 && leaf_last_use_[ready - 1].first == i; --ready)
      on_leaf_ready(*leaf_last_use_[ready - 1].second);
  }
  if (!root_node->is_leaf && !root_node->retain) root_node->grad = Tensor();
  entries_.clear();
  leaf_last_use_.clear();
}

TapeScope::TapeScope(Tape& tape) : previous_(tls_tape) { tls_tape = &tape; }
TapeScope::~TapeScope() { tls_tape = previous_; }

NoGradGuard::NoGradGuard() : previous_(tls_grad_enabled) { tls_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { tls_grad_enabled = previous_; }
bool grad_enabled() { return tls_grad_enabled; }

void backward(const Variable& root, const Tensor& seed, const LeafReadyFn& on_leaf_ready) {
  Tape::current().backward(root, seed, on_leaf_ready);
}

bool should_record(std::initializer_list<const Variable*> inputs) {
  if (!tls_grad_enabled) return false;
  for (const Variable* v : inputs)
    if (v && needs_grad(*v)) return true;
  return false;
}

size_t bytes_of(std::initializer_list<Tensor> saved) {
  size_t total = 0;
  for (const Tensor& t : saved)
    if (t.defined()) total += t.nbytes();
  return total;
}

Variable record_op(const char* op, Tensor output, std::initializer_list<const Variable*> inputs, size_t saved_bytes,
                   BackwardFn backward) {
  auto node = std::make_shared<GradNode>();
  node->requires_grad = true;
  node->is_leaf = false;
  TapeEntry e;
  e.op = op;
  for (const Variable* v : inputs) e.inputs.push_back(v && needs_grad(*v) ? v->node() : nullptr);
  e.output = node;
  e.backward = std::move(backward);
  e.saved_bytes = saved_bytes;
  Tape::current().record(std::move(e));
  return Variable::make_result(std::move(output), std::move(node));
}

bool recomputing() { return tls_recomputing; }

namespace {
// The leaves needing a gradient that `tape`'s entries feed, other than `inputs` (each once): the parameters a
// checkpointed function uses.
std::vector<std::shared_ptr<GradNode>> leaves_used_inside(const Tape& tape, const std::vector<Variable>& inputs) {
  std::vector<std::shared_ptr<GradNode>> leaves;
  auto is_input = [&](const GradNode* n) {
    for (const Variable& v : inputs)
      if (v.defined() && v.node().get() == n) return true;
    return false;
  };
  auto add = [&](const std::shared_ptr<GradNode>& in) {
    if (in && in->is_leaf && in->requires_grad && !is_input(in.get()) &&
        std::find(leaves.begin(), leaves.end(), in) == leaves.end())
      leaves.push_back(in);
  };
  for (const TapeEntry& e : tape.entries()) {
    for (const auto& in : e.inputs) add(in);
    for (const auto& in : e.inner_leaves) add(in);  // a checkpoint inside the checkpoint
  }
  return leaves;
}
}  // namespace

Variable checkpoint(const CheckpointFn& fn, const std::vector<Variable>& inputs, const char* op) {
  // The first run records on a tape of its own, only to learn whether anything needs a gradient (the MAC counter
  // also sees which gradients the real step computes); that tape and everything it saved go at once.
  Tensor out;
  bool needs_backward = false;
  TapeEntry e;
  {
    Tape first;
    TapeScope scope(first);
    const Variable y = fn(inputs);
    out = y.value();
    needs_backward = first.size() > 0 && y.requires_grad();
    e.inner_leaves = leaves_used_inside(first, inputs);
  }
  if (!needs_backward) return Variable(out);
  auto node = std::make_shared<GradNode>();
  node->requires_grad = true;
  node->is_leaf = false;
  e.op = op;
  std::vector<Tensor> values;
  std::vector<bool> needs;
  for (const Variable& v : inputs) {
    e.inputs.push_back(needs_grad(v) ? v.node() : nullptr);
    values.push_back(v.value());
    needs.push_back(needs_grad(v));
    e.saved_bytes += v.value().nbytes();  // the inputs are kept (other entries may keep the same tensors)
  }
  e.output = node;
  e.backward = [fn, values, needs](const Tensor& grad_out, std::vector<GradSlot>& slots) {
    Tape again;
    TapeScope scope(again);
    const bool previous = tls_recomputing;
    tls_recomputing = true;
    struct Restore {
      bool previous;
      ~Restore() { tls_recomputing = previous; }
    } restore{previous};
    std::vector<Variable> leaves;
    for (size_t i = 0; i < values.size(); ++i) leaves.emplace_back(values[i], needs[i]);
    const Variable y = fn(leaves);
    again.backward(y, grad_out);
    for (size_t i = 0; i < leaves.size(); ++i)
      if (slots[i].needed) give_grad(slots[i], leaves[i].grad());
  };
  Tape::current().record(std::move(e));
  return Variable::make_result(std::move(out), std::move(node));
}

void give_grad(GradSlot& slot, const Tensor& g) {
  if (!slot.needed) return;
  if (slot.accumulate) {
    slot.grad.add_(g);
  } else {
    slot.grad = g;
  }
}

}  // namespace tl
