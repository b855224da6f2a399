// Host launchers of tlengine's own pooling kernels (layers/pooling.h has the ops):
//  - direct max/avg pooling forward + backward, used on CUDA where cuDNN cannot express the op
//    (ceil_mode windows that hang past the bottom/right edge) and for average-pool backward;
//  - adaptive average pooling forward + backward (PyTorch bins).
// Backward kernels are gathers (one thread per input element; no atomics, deterministic) and honour the
// gradient contract: accumulate ? dx += g : dx = g. All take NCHW or NHWC (`nhwc`) dense tensors.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "kernels/pool_geom.h"

namespace tl::kernels {

// y = max over each window (first maximum wins; NaN propagates).
void max_pool2d_forward(const void* x, void* y, DType dtype, const PoolGeom& g, bool nhwc, cudaStream_t stream);
// dx(i) (+)= sum of dy over the windows whose first maximum is element i (argmax recomputed from x).
void max_pool2d_backward(const void* x, const void* dy, void* dx, DType dtype, const PoolGeom& g, bool nhwc,
                         bool accumulate, cudaStream_t stream);
// y = window sum / divisor.
void avg_pool2d_forward(const void* x, void* y, DType dtype, const PoolGeom& g, bool count_include_pad, bool nhwc,
                        cudaStream_t stream);
// dx(i) (+)= sum over windows containing i of dy / divisor.
void avg_pool2d_backward(const void* dy, void* dx, DType dtype, const PoolGeom& g, bool count_include_pad, bool nhwc,
                         bool accumulate, cudaStream_t stream);

// Adaptive average pooling: output bin i of a dimension of size H -> OH covers [floor(i*H/OH), ceil((i+1)*H/OH)).
void adaptive_avg_pool2d_forward(const void* x, void* y, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W,
                                 int64_t OH, int64_t OW, bool nhwc, cudaStream_t stream);
void adaptive_avg_pool2d_backward(const void* dy, void* dx, DType dtype, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t OH, int64_t OW, bool nhwc, bool accumulate, cudaStream_t stream);

}  // namespace tl::kernels
