// Data-parallel training over core/distributed.h: the gradient averaging after each backward pass (in buckets),
// the metrics summed over the ranks, and the start weights made identical on every rank.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/distributed.h"
#include "core/nccl.h"
#include "io/loader.h"
#include "layers/module.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace tl::train {

// Averages the gradients of the trainable parameters over the ranks, as PyTorch's DistributedDataParallel: the
// parameters in reverse registration order (the order backward produces their gradients) are grouped into buckets
// of about `bucket_bytes` (one dtype each); each bucket's gradients are copied into one flat buffer, summed over
// the ranks (one all-reduce), scaled by 1 / world size and copied back. Frozen parameters have no gradient and are
// left out, so a frozen backbone sends nothing. The buckets are rebuilt when the trainable set changes (gradual
// unfreezing).
//
// Overlap with backward (DDP's Reducer): begin() before the backward pass, leaf_ready_hook() given to
// Tape::backward, finish() after it. The hook counts a bucket's parameters whose gradients are final; when a bucket
// is complete its all-reduce starts at once (non-blocking) and backward goes on. Buckets start strictly in order
// (bucket k only after buckets 0..k-1), as all ranks must issue their collectives in the same order: a bucket that
// completes early waits for its predecessors. Each hook call also lets MPI progress the reductions in flight.
// Parameters that get no gradient in a step (unused by its forward pass; PyTorch's find_unused_parameters) are
// found in the tape by begin() and count as ready at once, so that they hold back no bucket. finish() starts
// whatever is left, then waits for every bucket in order (the deadline of --dist-timeout), scales and copies back.
// The copies and the sums are those of a reduction after backward, so the result is the same to the bit.
// A trainable parameter without a gradient (none arrived in this step, on every rank alike) adds zeros and keeps
// no gradient.
// CUDA gradients go through `nccl` (core/nccl.h; each bucket on its communication stream, ordered by events, no
// host sync; NCCL's average, so no scaling here); CPU gradients through MPI. With `nccl` the averager works also
// with one rank (the NCCL path checked against a run without it); without, one rank makes every call a no-op.
class GradientAverager {
 public:
  static constexpr int64_t kBucketBytes = 25 << 20;  // PyTorch DDP's bucket_cap_mb
  explicit GradientAverager(const Distributed& dist, int64_t bucket_bytes = kBucketBytes, NcclComm* nccl = nullptr)
      : dist_(dist), bucket_bytes_(bucket_bytes), nccl_(nccl) {}
  // `epoch` and `step` (0-based) complete the error messages ("at epoch 2 step 17").
  // `tape` holds the step's forward pass: its trainable parameters that none of its entries feeds get no gradient
  // in this backward pass (unused in this step) and count as ready now.
  void begin(const nn::Module& model, int epoch, int64_t step, const Tape& tape);
  // For Tape::backward between begin() and finish(); empty (no hook at all) when inactive. It refers to this object.
  LeafReadyFn leaf_ready_hook();
  // `empty_batch`: this rank had no image in this step (all skipped, --on-bad-image skip) but takes part in the
  // reduction with zeros, and every trainable parameter gets the mean, so that it updates as the other ranks do.
  void finish(bool empty_batch = false);
  // finish() and the update, bucket by bucket (the "the optimizer waits only for the buckets it needs"):
  // `opt` plans the whole step first (Optimizer::begin_parts, one part per bucket), then as each bucket's mean is
  // in (in bucket order, the order they were started) its parameters update while the later buckets still reduce
  // (on CUDA the bucket's kernels wait on the compute stream for that bucket's all-reduce alone); parameters of no
  // bucket update last. The same updates, bit for bit, as finish() then opt.step(): nothing between the two reads
  // every gradient (no clipping by a global norm; the loss's NaN/Inf check runs before backward). Inactive (one
  // rank, no NCCL): opt.step(). `opt` must keep its parameter groups while this averager keeps its buckets.
  void finish_and_step(Optimizer& opt);
  // On CUDA the host checks each step's reductions one step later (core/nccl.h): drain() checks the last ones, at
  // the end of a train phase, so that a rank that hangs then times out instead of blocking the next host sync.
  void drain() {
    if (nccl_) nccl_->drain();
  }
  // begin() and finish() without a backward pass between them: every bucket reduced after it.
  void average(const nn::Module& model, int epoch, int64_t step, bool empty_batch = false);
  // (Re)builds the buckets when the trainable set differs from the one they were built for (begin() calls it).
  void plan(const nn::Module& model);
  // The buckets in use: parameter names per bucket, first reduced first.
  std::vector<std::vector<std::string>> bucket_names() const;
  // The last finished step's overlap: buckets in all, and how many of them started before backward ended (in
  // begin() or from the hook; the rest start in finish()).
  struct Overlap {
    int64_t buckets = 0, started_during_backward = 0;
  };
  Overlap last_overlap() const { return last_overlap_; }

 private:
  struct Bucket {
    DType dtype = DType::F32;
    std::vector<std::pair<std::string, Parameter>> params;
    int64_t numel = 0;
    Tensor flat;  // the bucket's gradients in one buffer, allocated when the buckets are built
    size_t ready = 0;  // parameters whose gradient is final in this step
    CollectiveRequest request;
    std::string what;  // "all-reduce of the gradients (bucket 2 of 5)": a timeout adds the step (at_)
  };
  void rebuild(const std::vector<std::pair<std::string, Parameter>>& trainable);
  void start_step(const nn::Module& model, int epoch, int64_t step);
  void mark_unused_ready(const Tape& tape);
  const std::pair<const GradNode*, size_t>* find(const GradNode* leaf) const;
  void on_leaf_ready(const GradNode& leaf);
  void start_ready_buckets();
  void start(Bucket& b, size_t index);
  void progress();
  void complete(Bucket& b, size_t index, bool empty_batch);
  void end_backward();
  const std::vector<std::vector<Optimizer::ParamSlot>>& parts_for(const Optimizer& opt);
  bool parts_hold(const Optimizer& opt) const;
  static void scale(Tensor& flat, double factor);
  bool active() const { return dist_.world_size() > 1 || nccl_ != nullptr; }

  const Distributed& dist_;
  int64_t bucket_bytes_;
  NcclComm* nccl_;
  std::vector<std::string> names_;  // the trainable set the buckets were built for
  std::vector<Bucket> buckets_;
  std::vector<std::pair<const GradNode*, size_t>> bucket_of_;  // each parameter's bucket, sorted by node
  std::vector<char> fed_;  // mark_unused_ready's scratch, by bucket_of_ position
  // finish_and_step: each bucket's parameters as the optimizer's slots, for `parts_opt_` (rebuilt with the buckets,
  // or when the slots no longer hold the parameters they were found for: checked each step, without allocating).
  std::vector<std::vector<Optimizer::ParamSlot>> parts_;
  std::vector<std::vector<const GradNode*>> parts_nodes_;
  const Optimizer* parts_opt_ = nullptr;
  // The step in progress: where (for the messages), the next bucket to start, the first that may still be in flight.
  StepPosition at_;
  size_t next_start_ = 0, first_pending_ = 0;
  bool in_step_ = false;
  Overlap overlap_, last_overlap_;
};

// Sums a phase's metrics (counts, loss sum, confusion) over the ranks, so that every rank holds the whole set's.
void all_reduce_metrics(const Distributed& dist, ClassificationMetrics& m, const std::string& what);

// --on-bad-image skip: every rank's skipped images of a phase (each rank met those of its share), on every rank,
// each image once (a padded share repeats the start of the order) and sorted by SkippedImage::position: the list
// one process with the global batch makes. A collective (`what` names it in a timeout). One rank: `mine`.
std::vector<io::SkippedImage> gather_skipped(const Distributed& dist, const std::vector<io::SkippedImage>& mine,
                                             const std::string& what);

// Rank 0's parameter values to every rank (the same start even if a rank read other weights). No-op with one rank.
// CUDA and half-precision tensors travel as float32 host copies (these two run outside the training steps).
void broadcast_parameters(const Distributed& dist, const nn::Module& model);
// Rank 0's floating-point buffers (batch norm running statistics) to every rank, before a val phase: each rank's
// own batches updated its copy, and the val metrics summed over the ranks must come from one model, rank 0's
// (the one its checkpoints hold; DistributedDataParallel's broadcast_buffers gives the same). No-op with one rank.
void broadcast_buffers(const Distributed& dist, nn::Module& model);

// --sync-bn: points every batch norm layer of `model` at `dist` (layers/batchnorm.h BatchNormSync), so that in
// training mode its batch statistics cover the batches of all ranks (PyTorch's SyncBatchNorm). Layers on their
// running statistics (eval, or frozen with --freeze-bn) ignore it; with one rank it changes nothing. Returns the
// number of batch norm layers. `dist` must outlive the model's use, and so must `at` (may be null), the trainer's
// step position, which completes the messages of the layers' collectives (a timeout names rank, layer, epoch and
// step).
int enable_sync_bn(const Distributed& dist, nn::Module& model, const StepPosition* at = nullptr);

}  // namespace tl::train
