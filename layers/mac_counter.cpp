// Multiply-add counting (see mac_counter.h).
#include "layers/mac_counter.h"

namespace tl {
namespace {
// The innermost counter alive on this thread (nullptr: none, the ops record nothing).
thread_local MacCounter* current = nullptr;
}  // namespace

MacCounter::MacCounter() : outer_(current) { current = this; }
MacCounter::~MacCounter() { current = outer_; }

void record_macs(const Tensor& weight, double macs_per_sample, bool data_grad, bool weight_grad, const Shape& input,
                 const Shape& output) {
  if (!current) return;
  current->ops_.push_back({weight.data(), macs_per_sample, data_grad, weight_grad, input, output, true});
}

void record_shapes(const Tensor& weight, const Shape& input, const Shape& output) {
  if (!current) return;
  current->ops_.push_back({weight.data(), 0, false, false, input, output, false});
}

}  // namespace tl
