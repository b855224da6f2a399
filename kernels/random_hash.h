// Counter-based random numbers shared by the CPU and CUDA code (dropout masks): a pure function of
// (seed, counter), compiled for host and device, so both produce bit-identical streams with no state.
//
// hash64(seed, counter) = splitmix64 finaliser applied to (mix(seed) + (counter + 1) * golden ratio),
// i.e. element `counter` of the splitmix64 sequence whose state starts at a scrambled seed.
// Decisions are made in integers (no float rounding), e.g. keep_element() below.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TL_HOST_DEVICE inline
#endif

namespace tl::rng {

TL_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

TL_HOST_DEVICE uint64_t hash64(uint64_t seed, uint64_t counter) {
  return mix64(mix64(seed ^ 0x5851F42D4C957F2DULL) + (counter + 1) * 0x9E3779B97F4A7C15ULL);
}

// Drop threshold for probability p in [0, 1]: an element is dropped when the top 32 bits of its hash are
// below it, so P(drop) = threshold / 2^32 (p = 1 gives 2^32: everything dropped).
inline uint64_t drop_threshold(double p) {
  if (p <= 0) return 0;
  if (p >= 1) return 1ULL << 32;
  return static_cast<uint64_t>(p * 4294967296.0 + 0.5);
}

// True when element `index` (logical, row-major NCHW order) survives dropout.
TL_HOST_DEVICE bool keep_element(uint64_t seed, uint64_t offset, uint64_t index, uint64_t threshold) {
  return (hash64(seed, offset + index) >> 32) >= threshold;
}

}  // namespace tl::rng
