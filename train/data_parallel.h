// Data-parallel training over core/distributed.h: the gradient averaging after each backward pass (in buckets),
// the metrics summed over the ranks, and the start weights made identical on every rank.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/distributed.h"
#include "layers/module.h"
#include "train/metrics.h"

namespace tl::train {

// Averages the gradients of the trainable parameters over the ranks, as PyTorch's DistributedDataParallel: the
// parameters in reverse registration order (the order backward produces their gradients) are grouped into buckets
// of about `bucket_bytes` (one dtype each); each bucket's gradients are copied into one flat buffer, summed over
// the ranks (one all-reduce), scaled by 1 / world size and copied back. Frozen parameters have no gradient and are
// left out, so a frozen backbone sends nothing. The buckets are rebuilt when the trainable set changes (gradual
// unfreezing). This first version reduces after the whole backward pass (no overlap with it).
// A trainable parameter without a gradient (none arrived in this step, on every rank alike) adds zeros and keeps
// no gradient.
class GradientAverager {
 public:
  explicit GradientAverager(const Distributed& dist, int64_t bucket_bytes = 25 << 20)
      : dist_(dist), bucket_bytes_(bucket_bytes) {}
  // `epoch` and `step` (0-based) complete the error messages ("at epoch 2 step 17"). No-op with one rank.
  // `empty_batch`: this rank had no image in this step (all skipped, --on-bad-image skip) but takes part in the
  // reduction with zeros, and every trainable parameter gets the mean, so that it updates as the other ranks do.
  void average(const nn::Module& model, int epoch, int64_t step, bool empty_batch = false);
  // (Re)builds the buckets when the trainable set differs from the one they were built for (average() calls it).
  void plan(const nn::Module& model);
  // The buckets in use: parameter names per bucket, first reduced first.
  std::vector<std::vector<std::string>> bucket_names() const;

 private:
  struct Bucket {
    DType dtype = DType::F32;
    std::vector<std::pair<std::string, Parameter>> params;
    int64_t numel = 0;
    Tensor flat;  // the bucket's gradients in one buffer, allocated when the buckets are built
  };
  void rebuild(const std::vector<std::pair<std::string, Parameter>>& trainable);
  void reduce(Bucket& b, size_t index, const std::string& when, bool empty_batch);

  const Distributed& dist_;
  int64_t bucket_bytes_;
  std::vector<std::string> names_;  // the trainable set the buckets were built for
  std::vector<Bucket> buckets_;
};

// Sums a phase's metrics (counts, loss sum, confusion) over the ranks, so that every rank holds the whole set's.
void all_reduce_metrics(const Distributed& dist, ClassificationMetrics& m, const std::string& what);

// Rank 0's parameter values to every rank (the same start even if a rank read other weights). No-op with one rank.
void broadcast_parameters(const Distributed& dist, const nn::Module& model);
// Rank 0's floating-point buffers (batch norm running statistics) to every rank, before a val phase: each rank's
// own batches updated its copy, and the val metrics summed over the ranks must come from one model, rank 0's
// (the one its checkpoints hold; DistributedDataParallel's broadcast_buffers gives the same). No-op with one rank.
void broadcast_buffers(const Distributed& dist, nn::Module& model);

// --sync-bn: points every batch norm layer of `model` at `dist` (layers/batchnorm.h BatchNormSync), so that in
// training mode its batch statistics cover the batches of all ranks (PyTorch's SyncBatchNorm). Layers on their
// running statistics (eval, or frozen with --freeze-bn) ignore it; with one rank it changes nothing. Returns the
// number of batch norm layers. `dist` must outlive the model's use.
int enable_sync_bn(const Distributed& dist, nn::Module& model);

}  // namespace tl::train
