// Fused multi-tensor optimizer updates (SGD, Adam/AdamW) and the scalar coefficients both the CPU reference
// (train/optimizer.cpp) and the CUDA kernels use, computed in double exactly as torch.optim 1.13 computes its
// Python-float scalars; each is rounded to the parameter dtype where it meets a tensor, as in PyTorch.
//
// One launch updates many tensors: `tensors` (device array) gives each tensor's parameter, state pointers and
// size; `grads` (device array, same order) its gradient; `chunks` (device array) maps each thread block to one
// chunk of kOptimChunk elements of one tensor. The tables are built by the caller and may be reused across steps.
// The coefficients (lr, bias corrections, SGD's first-update flag) are read from DEVICE memory (`c`, an entry of
// the per-step scalar block, train/step_scalars.h), never taken by value: a captured CUDA graph replays its kernel
// arguments, so by-value coefficients would be those of the captured step. Each is rounded to T in the kernel
// (round to nearest, as the CPU reference's static_cast). Runs on `stream`, never synchronises.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "kernels/optim_coefficients.h"

namespace tl::kernels {

// Launchers: `dtype` is F32 or F64 (all tensors of a launch share it); num_chunks >= 1; `c` a device pointer.
void sgd_multi_tensor(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                      int64_t num_chunks, DType dtype, const SgdCoefficients* c, cudaStream_t stream);
void adam_multi_tensor(const OptimTensor* tensors, const void* const* grads, const OptimChunk* chunks,
                       int64_t num_chunks, DType dtype, const AdamCoefficients* c, cudaStream_t stream);

}  // namespace tl::kernels
