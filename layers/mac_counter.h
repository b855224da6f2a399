// Multiply-add counting of the ops that do the arithmetic (conv2d and linear), for the benchmark's FLOP count
// (train/flops.h). While a MacCounter is alive on a thread, every conv2d and linear that thread runs, recorded on
// the tape or not (a folded frozen prefix included), appends what it did: which weight, the multiply-adds per
// sample, and whether the backward pass will compute its data and weight gradients (its input / weight need a
// gradient). Nothing is recorded when no counter is alive; counters nest (the innermost one records).
// Each entry also holds the op's input and output shapes, and batch norm records its shapes too (with no
// multiply-adds, `arithmetic` false): the module tree of `tlengine inspect` (train/inspect.h) reads the output
// shape of every module with a weight from the same forward pass.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace tl {

struct OpMacs {
  const void* weight = nullptr;  // the weight tensor's storage (to name the layer)
  double macs_per_sample = 0;
  bool data_grad = false, weight_grad = false;
  Shape input, output;     // the op's input and output shapes ({} when the op did not say)
  bool arithmetic = true;  // false: a shape-only entry (batch norm), not a conv2d or linear
};

class MacCounter {
 public:
  MacCounter();
  ~MacCounter();
  MacCounter(const MacCounter&) = delete;
  MacCounter& operator=(const MacCounter&) = delete;
  const std::vector<OpMacs>& ops() const { return ops_; }

 private:
  friend void record_macs(const Tensor&, double, bool, bool, const Shape&, const Shape&);
  friend void record_shapes(const Tensor&, const Shape&, const Shape&);
  std::vector<OpMacs> ops_;
  MacCounter* outer_;
};

// Called by the ops: `macs_per_sample` multiply-adds of the layer whose weight is `weight`.
void record_macs(const Tensor& weight, double macs_per_sample, bool data_grad, bool weight_grad,
                 const Shape& input = {}, const Shape& output = {});
// Called by the ops without multiply-adds that have a weight (batch norm): the shapes alone.
void record_shapes(const Tensor& weight, const Shape& input, const Shape& output);

}  // namespace tl
