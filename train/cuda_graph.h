// `--cuda-graphs`: the training step (forward, loss, running metrics, backward, optimizer update, zeroing the
// gradients) captured once into a CUDA graph and replayed, so that a step costs one graph launch instead of a few
// hundred kernel launches (what dominates small-batch steps on a fast GPU).
//
// What makes a step replayable (each piece is where it lives):
// - Per-step values are read from device memory, not baked into kernel arguments: the optimizer's lr and bias
//   corrections (train/step_scalars.h, copied before each launch by Optimizer::replay_step()); dropout, whose seed
//   is a kernel argument, and cumulative-average batch norm refuse to be captured (they say so).
// - Addresses stay put: the gradients are zeroed in place (Optimizer::zero_grad(false)) so backward adds into the
//   same storage; the optimizer's pointer tables, the step-scalar block, cuDNN's persistent-BN reserve and the
//   workspace are built by eager warm-up steps of the same shape; the batch is copied into the captured input.
//   A change of any of them (unfreezing, a new table, a grown workspace) is part of the policy's signature, and
//   a changed signature drops every graph (warm-up and capture again).
// - Host-side bookkeeping that a replay skips is redone on the host: the optimizer's step counts and coefficients
//   (Optimizer::replay_step()) and batch norm's num_batches_tracked (CounterReplay adds what the captured step
//   added).
// - Allocations inside the capture come from the stream-ordered pool (graph memory nodes), freed inside it too.
//
// Host-side decisions (GraphPolicy, CounterReplay) have no CUDA dependency and are tested on the CPU; the capture
// and launch (CudaGraphs) exist in CUDA builds only.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "core/tensor.h"

struct CUevent_st;
struct CUgraphExec_st;
struct CUstream_st;

namespace tl::train {

enum class GraphAction {
  Eager,    // run the step as usual (warm-up, or a batch that is never captured)
  Capture,  // capture the step into a graph and launch it
  Replay,   // launch the graph captured for this shape
};
const char* graph_action_name(GraphAction a);

// Which steps warm up, capture, replay or run eagerly. A shape is captured after `warmup_steps` consecutive eager
// steps of that shape during which the signature (everything a graph depends on besides the input shape: the
// trainable set, the optimizer's launch partition and tables, the step-scalar block, the workspace) did not
// change; a batch that is not `capturable` (the last, smaller batch of an epoch) always runs eagerly; a changed
// signature drops every graph.
class GraphPolicy {
 public:
  explicit GraphPolicy(int warmup_steps = 2);
  struct Decision {
    GraphAction action = GraphAction::Eager;
    bool drop_graphs = false;  // the signature changed: destroy every captured graph first
  };
  Decision next(const Shape& shape, bool capturable, const std::vector<int64_t>& signature);
  // A capture failed or must not be used: the shape warms up again.
  void forget(const Shape& shape);
  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }
  int64_t invalidations() const { return invalidations_; }

 private:
  struct PerShape {
    int warm = 0;
    bool captured = false;
  };
  int warmup_steps_;
  std::vector<int64_t> signature_;
  bool has_signature_ = false;
  std::map<Shape, PerShape> shapes_;
  int64_t captures_ = 0, replays_ = 0, invalidations_ = 0;
};

// Host counters a captured step advances (batch norm's num_batches_tracked): record() after the capture keeps
// how much each moved since snapshot(); apply() adds that again for each replay (whose host code does not run).
class CounterReplay {
 public:
  void snapshot(std::vector<int64_t*> counters);
  void record();
  void apply() const;
  bool empty() const { return deltas_.empty(); }

 private:
  std::vector<int64_t*> counters_;
  std::vector<int64_t> before_;
  std::vector<std::pair<int64_t*, int64_t>> deltas_;  // only the counters that moved
};

// A few values folded into a signature: a 64-bit FNV-1a hash of a sequence (e.g. the trainable flags).
int64_t signature_hash(const std::vector<int64_t>& values);

#if TL_WITH_CUDA
// The captured graphs, one per input shape, and the side stream they are captured on. Every method runs on the
// calling thread with cuda::stream() the stream the graphs are launched on.
class CudaGraphs {
 public:
  CudaGraphs();
  ~CudaGraphs();
  CudaGraphs(const CudaGraphs&) = delete;
  CudaGraphs& operator=(const CudaGraphs&) = delete;

  // Captures `step` (stream capture, cudaStreamCaptureModeThreadLocal, on the side stream, which is
  // cuda::stream() while `step` runs) into the graph for `shape`, replacing any. Nothing runs: launch() does.
  // If `step` throws, the capture is ended and discarded and the exception passes on.
  void capture(const Shape& shape, const std::function<void()>& step);
  // Launches the graph of `shape` on cuda::stream() (throws CudaError if there is none).
  void launch(const Shape& shape);
  void clear();
  size_t size() const { return execs_.size(); }

 private:
  CUstream_st* side_ = nullptr;
  CUevent_st* launched_ = nullptr;  // the last launch, which the side stream waits for
  std::map<Shape, CUgraphExec_st*> execs_;
};

class Optimizer;

// The training step under --cuda-graphs: the policy's decision per step, the captured input buffers, the
// counters, the capture and the replay. `body(input, labels)` is the whole step (forward through
// optimizer.zero_grad(false)); it runs eagerly, or under capture with the captured buffers.
class StepGraphs {
 public:
  // `counters`: the host counters the step advances (every batch norm's num_batches_tracked).
  StepGraphs(std::vector<int64_t*> counters, int warmup_steps = 2);
  using Body = std::function<void(const Tensor& input, const Tensor& labels)>;
  using Signature = std::function<std::vector<int64_t>()>;
  // One step on `input` (N, ...) and `labels` (N) on CUDA; `capturable`: false for a batch that always runs
  // eagerly (the last, smaller one). Throws CudaError when the capture changed the signature (something the
  // warm-up should have built was built during the capture).
  void run(const Tensor& input, const Tensor& labels, bool capturable, const Signature& signature, Optimizer& opt,
           const Body& body);
  const GraphPolicy& policy() const { return policy_; }

 private:
  struct Captured {
    Tensor input, labels;  // what the graph reads; each replay copies its batch into them
    CounterReplay counters;
  };
  std::vector<int64_t*> counters_;
  GraphPolicy policy_;
  CudaGraphs graphs_;
  std::map<Shape, Captured> captured_;
};
#endif

}  // namespace tl::train
