// A procedural image data set for tests and the built-in example: an ImageFolder tree of JPEG/PNG images of
// N classes of distinguishable synthetic patterns (stripes at a class-specific orientation, rings,
// checkerboards, dots, ...) with random colours, phases, positions, sizes and noise, all from a seed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/image.h"

namespace tl::io {

struct SyntheticOptions {
  int num_classes = 4;
  int first_class = 0;       // classes first_class .. first_class + num_classes - 1 (a disjoint set for fine-tuning)
  int train_per_class = 24;
  int val_per_class = 8;     // 0: no val/ folder
  int min_side = 80;         // image sides are drawn in [min_side, max_side]
  int max_side = 160;
  std::string format = "mixed";  // "jpg", "png" or "mixed" (alternating)
  int jpeg_quality = 90;
  uint64_t seed = 0;
};

// The name of class `c`: "<index>_<pattern>", e.g. "00_hstripes"; names sort in class order.
std::string synthetic_class_name(int c);
// One image of class `c`; same (c, size, seed) gives the same pixels.
Image synthetic_image(int c, int height, int width, uint64_t seed);
// Writes root/train/<class>/*.{jpg,png} (and root/val/... when val_per_class > 0); returns the class names.
// Existing files of the same name are overwritten.
std::vector<std::string> write_synthetic_image_folder(const std::string& root, const SyntheticOptions& options);

}  // namespace tl::io
