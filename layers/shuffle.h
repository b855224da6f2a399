// Channel shuffle (ShuffleNet V2; torchvision's channel_shuffle): x (N, C, H, W) is viewed as (N, g, C/g, H, W),
// transposed to (N, C/g, g, H, W) and flattened back, so output channel j * g + i is input channel i * (C/g) + j
// (i < g, j < C/g).
//   forward   channel_shuffle_forward(x, groups) -> y: x's shape, dtype, device and layout (NCHW or NHWC).
//   backward  channel_shuffle_backward(dy, groups, dx, accumulate): the inverse permutation,
//             dx[:, i * (C/g) + j] = dy[:, j * g + i], which is the shuffle with C/g groups. dx takes dy's layout
//             (an accumulated-into dx of the other layout gets dy converted).
//   Requires a 4-D x, groups >= 1 dividing C. groups == 1 or groups == C is the identity (still a copy).
//   CPU: NCHW copies whole (H, W) planes, NHWC gathers each pixel's channels through an index table; any dtype
//   forward, float32/float64 when accumulating. CUDA: one gather kernel (kernels/shuffle.cu), += when accumulating.
//   Autograd: channel_shuffle(x, groups) saves nothing.
//
// Gradient contract (as every backward in layers/): accumulate == false ASSIGNS dx (allocated when undefined),
// accumulate == true ADDS into the existing dx.
#pragma once
#include "core/autograd.h"

namespace tl {
Tensor channel_shuffle_forward(const Tensor& x, int64_t groups);
void channel_shuffle_backward(const Tensor& dy, int64_t groups, Tensor& dx, bool accumulate);
Variable channel_shuffle(const Variable& x, int64_t groups);
}  // namespace tl
