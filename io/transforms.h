// Image transforms with torchvision 0.14's semantics on PIL images: Resize (PIL's antialiased bilinear,
// bit-exact), CenterCrop (with torchvision's offset rounding and zero padding), RandomResizedCrop (torchvision's
// sampling procedure), RandomHorizontalFlip, and ToTensor + Normalize into a caller's float32 CHW buffer.
// Randomness comes from a RandomSource; the loader gives each sample its own, seeded from
// (seed, epoch, sample index), so results do not depend on thread count or scheduling.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/image.h"

namespace tl::io {

// The random draws a transform needs. uniform() returns a float32 value (as torch's float tensors do).
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  virtual float uniform(double lo, double hi) = 0;        // in [lo, hi)
  virtual int64_t randint(int64_t lo, int64_t hi) = 0;    // in [lo, hi)
};

// A seeded generator (SplitMix64-seeded xoshiro256**). Same seed, same sequence, on every platform.
class Rng : public RandomSource {
 public:
  explicit Rng(uint64_t seed);
  Rng(uint64_t seed, uint64_t stream_a, uint64_t stream_b);  // independent stream, e.g. (seed, epoch, index)
  uint64_t next_u64();
  double next_double();  // [0, 1), 53 bits
  float uniform(double lo, double hi) override;
  int64_t randint(int64_t lo, int64_t hi) override;

 private:
  uint64_t s_[4];
};

// ---- Functional transforms (deterministic) ----

struct Size2 {
  int height = 0;
  int width = 0;
  bool operator==(const Size2& o) const { return height == o.height && width == o.width; }
};
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;  // torchvision's (i, j, h, w)
};

// PIL Image.resize(size, BILINEAR) of the region `box` of `src` (box must lie inside the image):
// separable triangle filter whose support grows with the downscale factor, fixed-point coefficients and
// rounding as Pillow's Resample.c. Equals PIL's img.crop(box).resize((w, h), BILINEAR).
Image resize_bilinear(const Image& src, const CropBox& box, int out_height, int out_width);
Image resize_bilinear(const Image& src, int out_height, int out_width);
// torchvision's output size of Resize(size) for a single int: the shorter side becomes `size`.
Size2 resize_shorter_side_size(int height, int width, int size);
// torchvision F.resize: returns `src` unchanged when it already has the output size.
Image resize(const Image& src, Size2 size);
Image resize_shorter_side(const Image& src, int size);
// torchvision F.crop for a box inside the image.
Image crop(const Image& src, const CropBox& box);
// torchvision F.center_crop: zero padding when the crop is larger than the image, offsets int(round(x / 2.0)).
Image center_crop(const Image& src, Size2 size);
Image hflip(const Image& src);
// torchvision F.resized_crop: crop then resize (PIL bilinear).
Image resized_crop(const Image& src, const CropBox& box, Size2 size);
// torchvision RandomResizedCrop.get_params: 10 attempts with area fraction uniform in `scale` and log-uniform
// aspect ratio in `ratio`, then the centred fallback. Same arithmetic (float32 draws, Python rounding).
CropBox random_resized_crop_params(int height, int width, std::array<double, 2> scale, std::array<double, 2> ratio,
                                   RandomSource& rng);

// ToTensor + Normalize: out[c][y][x] = (pixel / 255 - mean[c]) / std[c] in float32, as torchvision computes it.
// `out` holds 3 * height * width floats.
void to_tensor_normalize(const Image& img, const std::array<float, 3>& mean, const std::array<float, 3>& std,
                         float* out);

// ---- Transform objects (torchvision.transforms classes) ----

class Transform {
 public:
  virtual ~Transform() = default;
  virtual Image apply(const Image& img, RandomSource& rng) const = 0;
  // Output size for an input of size `in` (unknown input: nullopt), or nullopt when it depends on the image.
  virtual std::optional<Size2> output_size(std::optional<Size2> in) const = 0;
  virtual std::string describe() const = 0;
};

class Resize : public Transform {
 public:
  explicit Resize(int shorter_side);  // Resize(256)
  Resize(int height, int width);      // Resize((h, w))
  Image apply(const Image& img, RandomSource& rng) const override;
  std::optional<Size2> output_size(std::optional<Size2> in) const override;
  std::string describe() const override;

 private:
  int shorter_ = 0;
  Size2 size_;
};

class CenterCrop : public Transform {
 public:
  explicit CenterCrop(int size) : CenterCrop(size, size) {}
  CenterCrop(int height, int width);
  Image apply(const Image& img, RandomSource& rng) const override;
  std::optional<Size2> output_size(std::optional<Size2>) const override { return size_; }
  std::string describe() const override;

 private:
  Size2 size_;
};

class RandomResizedCrop : public Transform {
 public:
  explicit RandomResizedCrop(int size, std::array<double, 2> scale = {0.08, 1.0},
                             std::array<double, 2> ratio = {3.0 / 4.0, 4.0 / 3.0});
  Image apply(const Image& img, RandomSource& rng) const override;
  std::optional<Size2> output_size(std::optional<Size2>) const override { return size_; }
  std::string describe() const override;
  CropBox sample(int height, int width, RandomSource& rng) const;

 private:
  Size2 size_;
  std::array<double, 2> scale_, ratio_;
};

class RandomHorizontalFlip : public Transform {
 public:
  explicit RandomHorizontalFlip(double p = 0.5);
  Image apply(const Image& img, RandomSource& rng) const override;
  std::optional<Size2> output_size(std::optional<Size2> in) const override { return in; }
  std::string describe() const override;

 private:
  double p_;
};

// ImageNet statistics used by the torchvision recipe.
constexpr std::array<float, 3> kImageNetMean = {0.485f, 0.456f, 0.406f};
constexpr std::array<float, 3> kImageNetStd = {0.229f, 0.224f, 0.225f};

// Compose([...image transforms..., ToTensor(), Normalize(mean, std)]).
class Compose {
 public:
  Compose(std::vector<std::shared_ptr<Transform>> steps, std::array<float, 3> mean = kImageNetMean,
          std::array<float, 3> std = kImageNetStd);
  // Applies the image steps, then writes the normalised CHW floats to `out`.
  void operator()(const Image& img, RandomSource& rng, float* out) const;
  Image apply_image(const Image& img, RandomSource& rng) const;  // the image steps only
  // The fixed output size, or nullopt when it varies with the input (e.g. Resize(256) alone).
  std::optional<Size2> output_size() const;
  std::string describe() const;
  const std::array<float, 3>& mean() const { return mean_; }
  const std::array<float, 3>& std() const { return std_; }

 private:
  std::vector<std::shared_ptr<Transform>> steps_;
  std::array<float, 3> mean_, std_;
};

// The recipe's pipelines.
Compose train_transform(int size = 224);                        // RandomResizedCrop, RandomHorizontalFlip
Compose eval_transform(int resize_to = 256, int crop = 224);     // Resize(256), CenterCrop(224)
Compose eval_resize_transform(int size = 224);                  // Resize((224, 224))

}  // namespace tl::io
