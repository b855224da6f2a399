// Fused channel concatenation, batch norm and ReLU (DenseNet's norm1; Pleiss et al. 2017, "Memory-Efficient
// Implementation of DenseNets"):
//   y = relu(batchnorm(concat(chunks, 1)))   one dense (N, C = sum c_k, H, W) tensor in the chunks' layout.
// Nothing is concatenated: every pass reads the chunks where they are (a dense block's chunk list is its block
// buffer). In training mode with batch statistics, a channel's batch mean and variance depend on its own values
// only, so each chunk's statistics are computed once per forward pass, by the first layer that reads the chunk,
// and kept in the block's ChunkStatsCache for the later layers (the unfused path recomputes them over the whole
// concatenation in every layer: O(L^2) passes per block).
//
// Forward (training): mean, biased var of every channel from the cache; y = relu((x - mean) invstd gamma + beta);
// the layer's running statistics and num_batches_tracked update exactly as BatchNorm2d's (unbiased running
// variance, the same momentum rule), except while checkpoint() runs the function again (core/autograd.h
// recomputing()): the first run updated them.
// Backward (dz = dy (y > 0), xhat = (x - mean) invstd recomputed from the chunks, m = N H W):
//   dbeta = sum(dz),  dgamma = sum(dz xhat),  dx_k = gamma invstd (dz - dbeta / m - xhat dgamma / m)
//   for the channels of chunk k, only for chunks that need a gradient (accumulated into a chunk's gradient by the
//   Tape when several layers read it, as concat's gradients are).
// Saved for backward: the chunks (each one tensor shared by every layer of the block that reads it: O(L) per
// block), gamma, the per-channel statistics and y (ReLU's mask is y > 0): one tensor of the concatenation's size per
// layer instead of the concatenation and the ReLU output of the unfused path; its backward allocates no tensor of
// that size either.
// Results: the same numbers as concat -> batch_norm2d -> relu, bit for bit: the same per-channel sums in the same
// order (layers/channel_sums.h for float32, (n, s) order for the float64 reference), the same formulas.
// Supported: CPU float32 and float64, NCHW and NHWC (all chunks in one layout). Everything else runs the unfused
// composition concat -> batch_norm2d -> relu (same results and semantics): eval mode / running statistics
// (--freeze-bn), --sync-bn, CUDA tensors, other dtypes, chunks of different dtypes or layouts.
//
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS, accumulate == true ADDS.
#pragma once
#include <memory>
#include <vector>

#include "core/autograd.h"
#include "layers/batchnorm.h"

namespace tl {

// The batch statistics of the chunks of one dense block's forward pass, by position in the block's chunk list,
// computed on first use. One per block per forward (no state across forwards); checkpoint()'s recomputation reads
// the same object, so it normalises with the very statistics of the first run.
class ChunkStatsCache {
 public:
  // The statistics of chunk k (`chunk` must be the tensor first seen at position k: a ValueError otherwise).
  const BatchMoments& at(size_t k, const Tensor& chunk);
  size_t computed() const { return computed_; }  // how many chunks' statistics were computed (tests)

 private:
  struct Entry {
    std::weak_ptr<Storage> storage;  // with data: identifies the chunk without keeping it alive
    const void* data = nullptr;
    Shape shape;
    BatchMoments moments;
  };
  std::vector<Entry> entries_;
  size_t computed_ = 0;
};

// True when concat_bn_relu runs fused for these chunks and options (else the unfused composition).
bool concat_bn_relu_fused(const std::vector<Variable>& chunks, const BatchNormOptions& opt);

// y = relu(batch_norm2d(concat(chunks, 1), gamma, beta, buffers, opt)); see the top of this file.
Variable concat_bn_relu(const std::vector<Variable>& chunks, const Variable& gamma, const Variable& beta,
                        BatchNormBuffers& buffers, const BatchNormOptions& opt, ChunkStatsCache& cache);

}  // namespace tl
