// Procedural ImageFolder generator (see synthetic.h).
#include "io/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "io/transforms.h"

namespace tl::io {
namespace {

constexpr double kPi = 3.14159265358979323846;
const char* const kPatterns[] = {"hstripes", "vstripes", "diagstripes", "antidiagstripes",
                                 "rings",    "checkers", "dots",        "blob"};
constexpr int kNumPatterns = 8;

double smooth_square(double phase) {  // a soft-edged square wave in [0, 1]
  const double s = std::sin(phase);
  return 0.5 + 0.5 * std::clamp(s * 3.0, -1.0, 1.0);
}

}  // namespace

std::string synthetic_class_name(int c) {
  char buf[64];
  const int band = c / kNumPatterns;
  if (band == 0) std::snprintf(buf, sizeof buf, "%02d_%s", c, kPatterns[c % kNumPatterns]);
  else std::snprintf(buf, sizeof buf, "%02d_%s%d", c, kPatterns[c % kNumPatterns], band + 1);
  return buf;
}

Image synthetic_image(int c, int height, int width, uint64_t seed) {
  TL_CHECK(c >= 0 && height > 0 && width > 0, ValueError, "synthetic_image: bad class or size");
  Rng rng(seed, 0x5E17ULL, static_cast<uint64_t>(c));
  const int pattern = c % kNumPatterns, band = c / kNumPatterns;
  // Colours far enough apart to keep the pattern visible.
  double fg[3], bg[3];
  do {
    for (int k = 0; k < 3; ++k) {
      fg[k] = rng.next_double() * 255.0;
      bg[k] = rng.next_double() * 255.0;
    }
  } while (std::fabs(fg[0] - bg[0]) + std::fabs(fg[1] - bg[1]) + std::fabs(fg[2] - bg[2]) < 180.0);
  const double side = std::min(height, width);
  const double period = side * (0.12 + 0.08 * rng.next_double()) / (1.0 + 0.7 * band);
  const double phase = rng.next_double() * 2 * kPi;
  const double jitter = (rng.next_double() - 0.5) * (20.0 * kPi / 180.0);  // +-10 degrees
  const double cx = width * (0.3 + 0.4 * rng.next_double()), cy = height * (0.3 + 0.4 * rng.next_double());
  const double rx = side * (0.2 + 0.2 * rng.next_double()), ry = side * (0.2 + 0.2 * rng.next_double());
  const double checker_angle = rng.next_double() * kPi / 2;
  const double noise = 6.0 + 10.0 * rng.next_double();

  Image img(width, height);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      double t = 0;
      auto stripes = [&](double angle_deg) {
        const double a = angle_deg * kPi / 180.0 + jitter;
        return smooth_square(2 * kPi * (x * std::sin(a) + y * std::cos(a)) / period + phase);
      };
      switch (pattern) {
        case 0: t = stripes(0); break;     // horizontal bands (vary with y)
        case 1: t = stripes(90); break;    // vertical bands
        case 2: t = stripes(45); break;
        case 3: t = stripes(135); break;
        case 4: t = smooth_square(2 * kPi * std::hypot(x - cx, y - cy) / period + phase); break;
        case 5: {
          const double u = (x * std::cos(checker_angle) + y * std::sin(checker_angle)) / period;
          const double v = (-x * std::sin(checker_angle) + y * std::cos(checker_angle)) / period;
          t = (static_cast<int64_t>(std::floor(u)) + static_cast<int64_t>(std::floor(v))) % 2 == 0 ? 1.0 : 0.0;
          break;
        }
        case 6: {
          const double g = period * 1.6;
          const double dx = std::fmod(x + phase * g, g) - g / 2, dy = std::fmod(y + phase * g, g) - g / 2;
          t = std::hypot(dx, dy) < period * 0.45 ? 1.0 : 0.0;
          break;
        }
        default: {
          const double ex = (x - cx) / rx, ey = (y - cy) / ry;
          t = ex * ex + ey * ey < 1.0 ? 1.0 : 0.0;
          break;
        }
      }
      uint8_t* p = img.at(y, x);
      for (int k = 0; k < 3; ++k) {
        const double n = (rng.next_double() - 0.5) * 2 * noise;
        p[k] = static_cast<uint8_t>(std::clamp(std::lround(bg[k] * (1 - t) + fg[k] * t + n), 0L, 255L));
      }
    }
  }
  return img;
}

std::vector<std::string> write_synthetic_image_folder(const std::string& root, const SyntheticOptions& o) {
  TL_CHECK(o.num_classes >= 1, ValueError, "synthetic data: need at least 1 class");
  TL_CHECK(o.train_per_class >= 1 && o.val_per_class >= 0, ValueError, "synthetic data: bad image counts");
  TL_CHECK(o.min_side >= 8 && o.max_side >= o.min_side, ValueError, "synthetic data: bad image sizes");
  TL_CHECK(o.format == "jpg" || o.format == "png" || o.format == "mixed", ValueError,
           "synthetic data: format must be jpg, png or mixed, got '", o.format, "'");
  std::vector<std::string> classes;
  TL_CHECK(o.first_class >= 0, ValueError, "synthetic data: first_class must be >= 0");
  for (int c = 0; c < o.num_classes; ++c) classes.push_back(synthetic_class_name(o.first_class + c));
  Rng sizes(o.seed, 0x512E5ULL, 0);
  for (const std::string split : {"train", "val"}) {
    const int per_class = split == "train" ? o.train_per_class : o.val_per_class;
    if (per_class == 0) continue;
    for (int c = 0; c < o.num_classes; ++c) {
      const std::string dir = root + "/" + split + "/" + classes[static_cast<size_t>(c)];
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) throw IOError(detail::concat("cannot create folder '", dir, "': ", ec.message()));
      for (int i = 0; i < per_class; ++i) {
        const int h = static_cast<int>(sizes.randint(o.min_side, o.max_side + 1));
        const int w = static_cast<int>(sizes.randint(o.min_side, o.max_side + 1));
        const uint64_t image_seed = sizes.next_u64();
        const bool png = o.format == "png" || (o.format == "mixed" && i % 2 == 1);
        char name[64];
        std::snprintf(name, sizeof name, "%s_%04d.%s", split.c_str(), i, png ? "png" : "jpg");
        write_image(dir + "/" + name, synthetic_image(o.first_class + c, h, w, image_seed), o.jpeg_quality);
      }
    }
  }
  return classes;
}

}  // namespace tl::io
