// CUDA graphs for the training step (see cuda_graph.h): the host-side policy and counters, and the capture and
// launch of the graphs.
#include "train/cuda_graph.h"

#include "core/device.h"
#include "core/error.h"
#include "train/optimizer.h"
#if TL_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tl::train {

const char* graph_action_name(GraphAction a) {
  switch (a) {
    case GraphAction::Eager: return "eager";
    case GraphAction::Capture: return "capture";
    case GraphAction::Replay: return "replay";
  }
  return "?";
}

GraphPolicy::GraphPolicy(int warmup_steps) : warmup_steps_(warmup_steps) {
  TL_CHECK(warmup_steps >= 1, ValueError, "GraphPolicy: warmup_steps must be >= 1 (cuDNN's algorithm search, the "
           "optimizer's state and tables and the gradients must exist before a capture), got ", warmup_steps);
}

GraphPolicy::Decision GraphPolicy::next(const Shape& shape, bool capturable, const std::vector<int64_t>& signature) {
  Decision d;
  if (!has_signature_ || signature != signature_) {
    for (const auto& [shape, st] : shapes_) d.drop_graphs = d.drop_graphs || st.captured;
    if (d.drop_graphs) ++invalidations_;
    shapes_.clear();  // every shape warms up again under the new signature
    signature_ = signature;
    has_signature_ = true;
  }
  if (!capturable) return d;  // eager, and not a warm-up of a captured shape
  PerShape& s = shapes_[shape];
  if (s.captured) {
    d.action = GraphAction::Replay;
    ++replays_;
  } else if (s.warm >= warmup_steps_) {
    d.action = GraphAction::Capture;
    s.captured = true;
    ++captures_;
  } else {
    ++s.warm;
  }
  return d;
}

void GraphPolicy::forget(const Shape& shape) { shapes_.erase(shape); }

void CounterReplay::snapshot(std::vector<int64_t*> counters) {
  counters_ = std::move(counters);
  before_.clear();
  for (const int64_t* c : counters_) before_.push_back(*c);
  deltas_.clear();
}

void CounterReplay::record() {
  deltas_.clear();
  for (size_t i = 0; i < counters_.size(); ++i)
    if (*counters_[i] != before_[i]) deltas_.emplace_back(counters_[i], *counters_[i] - before_[i]);
}

void CounterReplay::apply() const {
  for (const auto& [counter, delta] : deltas_) *counter += delta;
}

int64_t signature_hash(const std::vector<int64_t>& values) {
  uint64_t h = 1469598103934665603ULL;
  for (int64_t v : values)
    for (int b = 0; b < 8; ++b) {
      h ^= (static_cast<uint64_t>(v) >> (8 * b)) & 0xff;
      h *= 1099511628211ULL;
    }
  return static_cast<int64_t>(h);
}

#if TL_WITH_CUDA
CudaGraphs::CudaGraphs() {
  CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&launched_, cudaEventDisableTiming));
}

CudaGraphs::~CudaGraphs() {
  clear();
  // Storage allocated during a capture is freed on the side stream (core/memory.h): let those frees run first.
  cudaStreamSynchronize(side_);
  cudaStreamDestroy(side_);
  cudaEventDestroy(launched_);
}

void CudaGraphs::clear() {
  for (auto& [shape, exec] : execs_) cudaGraphExecDestroy(exec);
  execs_.clear();
}

void CudaGraphs::capture(const Shape& shape, const std::function<void()>& step) {
  auto it = execs_.find(shape);
  if (it != execs_.end()) {
    cudaGraphExecDestroy(it->second);
    execs_.erase(it);
  }
  {
    // Bind (or create) the cuDNN and cuBLAS handles for the side stream now: creating one allocates with
    // cudaMalloc, which a capture does not allow.
    cuda::StreamGuard guard(side_);
    (void)cuda::cudnn();
    (void)cuda::cublas();
  }
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(side_, cudaStreamCaptureModeThreadLocal));
  try {
    cuda::StreamGuard guard(side_);
    step();
  } catch (...) {
    if (cudaStreamEndCapture(side_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // an invalidated capture leaves its error behind
    throw;
  }
  CUDA_CHECK(cudaStreamEndCapture(side_, &graph));
  cudaGraphExec_t exec = nullptr;
  // AutoFreeOnLaunch: memory the graph allocates and does not free itself is released at the next launch.
  const cudaError_t st = cudaGraphInstantiateWithFlags(&exec, graph, cudaGraphInstantiateFlagAutoFreeOnLaunch);
  cudaGraphDestroy(graph);
  CUDA_CHECK(st);
  execs_[shape] = exec;
}

void CudaGraphs::launch(const Shape& shape) {
  auto it = execs_.find(shape);
  TL_CHECK(it != execs_.end(), CudaError, "CudaGraphs::launch: no graph was captured for input shape ",
           shape_str(shape));
  CUDA_CHECK(cudaGraphLaunch(it->second, cuda::stream()));
  // Storage the capture allocated is freed on the side stream whenever its last Tensor goes: order that after
  // this launch, which may still use it.
  CUDA_CHECK(cudaEventRecord(launched_, cuda::stream()));
  CUDA_CHECK(cudaStreamWaitEvent(side_, launched_, 0));
}

StepGraphs::StepGraphs(std::vector<int64_t*> counters, int warmup_steps)
    : counters_(std::move(counters)), policy_(warmup_steps) {}

void StepGraphs::run(const Tensor& input, const Tensor& labels, bool capturable, const Signature& signature,
                     Optimizer& opt, const Body& body) {
  const std::vector<int64_t> before = signature();
  const GraphPolicy::Decision d = policy_.next(input.shape(), capturable, before);
  if (d.drop_graphs) {
    graphs_.clear();
    captured_.clear();
  }
  if (d.action == GraphAction::Eager) {
    body(input, labels);
    return;
  }
  if (d.action == GraphAction::Capture) {
    Captured& c = captured_[input.shape()];
    c.input = Tensor::empty(input.shape(), input.dtype(), input.device(), input.layout());
    c.labels = Tensor::empty(labels.shape(), labels.dtype(), labels.device(), labels.layout());
    c.input.copy_(input);
    c.labels.copy_(labels);
    c.counters.snapshot(counters_);
    try {
      graphs_.capture(input.shape(), [&] { body(c.input, c.labels); });
      TL_CHECK(signature() == before, CudaError, "--cuda-graphs: the captured step changed what the graph depends "
               "on (the optimizer's tables, the step-scalar block, the workspace or the trainable set), so its replay "
               "would be wrong; this is a bug: please report it, and train without --cuda-graphs meanwhile");
    } catch (...) {
      policy_.forget(input.shape());
      captured_.erase(input.shape());
      throw;
    }
    c.counters.record();
    opt.step_scalars().flush(cuda::stream());  // the coefficients of the step just captured
    graphs_.launch(input.shape());
    return;
  }
  Captured& c = captured_.at(input.shape());
  c.input.copy_(input);
  c.labels.copy_(labels);
  opt.replay_step();  // step counts and coefficients, copied to the device before the launch
  c.counters.apply();
  graphs_.launch(input.shape());
}
#endif

}  // namespace tl::train
