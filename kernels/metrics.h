// Host launcher of the metrics kernel (train/running_metrics.h): one batch's classification counts added on the
// device, no host sync. `counts` (C*C + 2 unsigned 64-bit): the confusion matrix [truth * C + predicted], then the
// top-k correct count, then the number of labels outside [0, C) (skipped). `sums` (4 doubles): loss * N, batches
// with a non-finite loss, samples, top-1 correct. `loss` is one value of `loss_dtype` (float32 or float64, the
// batch mean); `logits` row-major (N, C) of `dtype`; `labels` int32.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tl::kernels {
void accumulate_metrics(const void* logits, DType dtype, const int32_t* labels, const void* loss, DType loss_dtype,
                        int64_t n, int64_t c, int k, uint64_t* counts, double* sums, cudaStream_t stream);
}  // namespace tl::kernels
