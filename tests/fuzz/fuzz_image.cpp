// libFuzzer target: io::decode_image_memory (JPEG, PNG, BMP, PPM/PGM, through the format sniffing) must either
// return an image whose size matches its pixels or throw tl::Error; anything else (a crash, a sanitizer report,
// another exception type) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "io/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  tl::io::ImageLimits limits;
  limits.max_side = 4096;
  limits.max_pixels = 4LL * 1000 * 1000;  // keeps each run small; the limit check itself is under test too
  try {
    tl::io::Image img = tl::io::decode_image_memory(bytes, "fuzz-input", limits);
    const size_t expect = static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3;
    if (img.width <= 0 || img.height <= 0 || img.width > limits.max_side || img.height > limits.max_side ||
        img.pixels.size() != expect)
      std::abort();
  } catch (const tl::Error&) {
  }
  return 0;
}
