// Classification metrics accumulated where the logits are, so that a training step never waits for the device:
// each batch's loss sum, sample and correct counts, confusion matrix and non-finite-loss count are added to
// tensors on the run's device (a CUDA kernel, or a loop on the CPU), and read to the host once per phase with
// read_into(). The same ranking rules as ClassificationMetrics (kernels/metrics_rank.h), so both give the same
// counts.
//
// During a phase, lagged() gives the running totals without waiting for the step just launched: on CUDA it
// returns the totals copied after the previous call (waiting only for that copy, which the device finished long
// ago unless the host runs far ahead) and starts a new asynchronous copy; on the CPU the totals are exact. The
// trainer checks for a non-finite loss with it, one step late on CUDA (the weights that step updated are never
// saved: the check runs before every checkpoint too, with exact()).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "train/metrics.h"

namespace tl::train {

class RunningMetrics {
 public:
  RunningMetrics(int num_classes, Device device);
  ~RunningMetrics();
  RunningMetrics(const RunningMetrics&) = delete;
  RunningMetrics& operator=(const RunningMetrics&) = delete;

  // One batch: logits (N, C) and labels (N, int32 or int64) on the device, `loss` the batch's mean loss (one
  // float32 or float64 value on the device). Labels outside [0, C) are counted and reported by read_into().
  void add(const Tensor& logits, const Tensor& labels, const Tensor& loss);

  struct Totals {
    double loss_sum = 0;            // sum of batch loss * batch size
    int64_t nonfinite_batches = 0;  // batches whose loss was NaN or infinite
    int64_t count = 0;              // samples
    int64_t correct = 0;            // top-1 correct
    double mean_loss() const;
    double accuracy() const;
  };
  // See the top of this file.
  Totals lagged();
  Totals exact();

  // Adds everything since the last reset() to `m` (one copy to the host) and resets. Throws ValueError when a
  // label was outside [0, C).
  void read_into(ClassificationMetrics& m);
  void reset();

 private:
  int num_classes_, top_k_;
  Device device_;
  Tensor counts_;  // uint64 (as int64): C*C confusion, top-k correct, bad labels
  Tensor sums_;    // float64: loss * N, non-finite batches, samples, top-1 correct
  double* host_sums_ = nullptr;  // CUDA: pinned copy of sums_, written by the copy that `copied_` marks
  void* copied_ = nullptr;       // cudaEvent_t
  bool copy_pending_ = false;
};

}  // namespace tl::train
