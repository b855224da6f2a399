// The geometry of a 2-D pooling, shared by the CPU reference (layers/pooling.cpp) and the CUDA kernels; it needs
// no CUDA header, so the CPU-only build (TL_WITH_CUDA == 0) uses it too.
#pragma once
#include <cstdint>

namespace tl::kernels {

// Geometry of a 2-D pooling: input (N, C, H, W), output (N, C, OH, OW), window, stride, left/top padding.
// Windows follow PyTorch: window (oh, ow) covers rows [oh*sh - ph, oh*sh - ph + kh) clipped to the input;
// for the average its divisor is the window clipped to [-ph, H + ph) (count_include_pad) or to [0, H).
struct PoolGeom {
  int64_t N, C, H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw;
};

}  // namespace tl::kernels
