// Image transforms with torchvision/PIL semantics (see transforms.h).
#include "io/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/error.h"

namespace tl::io {

// ---------------------------------------------------------------------------------------------------------
// Rng

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
// Python's round() for the values used here: nearest integer, ties to even (the default FP rounding mode).
int py_round(double x) { return static_cast<int>(std::nearbyint(x)); }
}  // namespace

Rng::Rng(uint64_t seed) : Rng(seed, 0, 0) {}

Rng::Rng(uint64_t seed, uint64_t stream_a, uint64_t stream_b) {
  // Mix the three numbers so nearby (seed, epoch, index) triples give unrelated streams.
  uint64_t x = seed;
  uint64_t h = splitmix64(x);
  x = h ^ (stream_a * 0xD1B54A32D192ED03ULL);
  h = splitmix64(x);
  x = h ^ (stream_b * 0x8CB92BA72F3D8DD7ULL);
  for (uint64_t& s : s_) s = splitmix64(x);
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::next_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

float Rng::uniform(double lo, double hi) {
  float v = static_cast<float>(lo + next_double() * (hi - lo));
  // Rounding to float may land on hi; keep the half-open interval.
  if (v >= static_cast<float>(hi) && hi > lo) v = std::nextafter(static_cast<float>(hi), static_cast<float>(lo));
  return v;
}

int64_t Rng::randint(int64_t lo, int64_t hi) {
  TL_CHECK(hi > lo, ValueError, "randint: empty range [", lo, ", ", hi, ")");
  const uint64_t span = static_cast<uint64_t>(hi - lo);
  // Rejection sampling: no modulo bias.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  uint64_t r;
  do r = next_u64(); while (r >= limit);
  return lo + static_cast<int64_t>(r % span);
}

// ---------------------------------------------------------------------------------------------------------
// PIL bilinear resampling (Pillow's Resample.c): per output pixel a normalised triangle filter over the input,
// with support 1 * max(1, in/out); coefficients in fixed point with 22 fraction bits; 8-bit output rounded by
// adding half and shifting, clipped to 0..255. Horizontal pass first, then vertical, with uint8 in between.

namespace {
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coefficients {
  int ksize = 0;
  std::vector<int> first;      // first input index of output pixel i
  std::vector<int> count;      // number of input pixels
  std::vector<int32_t> weights;  // out_size x ksize
};

Coefficients precompute_coefficients(int in_size, int out_size) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // bilinear filter support is 1
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<size_t>(out_size));
  c.count.resize(static_cast<size_t>(out_size));
  c.weights.assign(static_cast<size_t>(out_size) * static_cast<size_t>(c.ksize), 0);
  std::vector<double> k(static_cast<size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      const double w = t < 1.0 ? 1.0 - t : 0.0;
      k[static_cast<size_t>(x)] = w;
      ww += w;
    }
    int32_t* out = &c.weights[static_cast<size_t>(xx) * static_cast<size_t>(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[static_cast<size_t>(x)] / ww : k[static_cast<size_t>(x)];
      out[x] = w < 0 ? static_cast<int32_t>(-0.5 + w * (1 << kPrecisionBits))
                     : static_cast<int32_t>(0.5 + w * (1 << kPrecisionBits));
    }
    c.first[static_cast<size_t>(xx)] = xmin;
    c.count[static_cast<size_t>(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift: floor
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}
}  // namespace

Image resize_bilinear(const Image& src, const CropBox& box, int out_height, int out_width) {
  TL_CHECK(out_height > 0 && out_width > 0, ValueError, "resize: output size must be positive, got ", out_height,
           "x", out_width);
  TL_CHECK(box.top >= 0 && box.left >= 0 && box.height > 0 && box.width > 0 && box.top + box.height <= src.height &&
               box.left + box.width <= src.width,
           ValueError, "resize: box (top ", box.top, ", left ", box.left, ", height ", box.height, ", width ",
           box.width, ") is not inside the ", src.height, "x", src.width, " image");
  const bool need_horizontal = out_width != box.width;
  const bool need_vertical = out_height != box.height;
  const Coefficients vert = precompute_coefficients(box.height, out_height);
  const int y_first = vert.first[0];
  const int y_last = vert.first[static_cast<size_t>(out_height) - 1] + vert.count[static_cast<size_t>(out_height) - 1];

  // The plane the vertical pass reads: the horizontally resampled rows y_first..y_last, or the source box.
  Image horizontal;
  auto plane_row = [&](int y) -> const uint8_t* {
    if (need_horizontal) return horizontal.row(y - y_first);
    return src.at(box.top + y, box.left);
  };
  if (need_horizontal) {
    const Coefficients hor = precompute_coefficients(box.width, out_width);
    horizontal = Image(out_width, y_last - y_first);
    const int32_t* weights = hor.weights.data();
    const int* first = hor.first.data();
    const int* count = hor.count.data();
    const int ksize = hor.ksize;
    for (int y = y_first; y < y_last; ++y) {
      const uint8_t* in = src.at(box.top + y, box.left);
      uint8_t* out = horizontal.row(y - y_first);
      for (int xx = 0; xx < out_width; ++xx) {
        const int32_t* k = weights + static_cast<size_t>(xx) * static_cast<size_t>(ksize);
        const uint8_t* p = in + static_cast<size_t>(first[xx]) * 3;
        const int n = count[xx];
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < n; ++x) {
          const int32_t w = k[x];
          s0 += p[3 * x + 0] * w;
          s1 += p[3 * x + 1] * w;
          s2 += p[3 * x + 2] * w;
        }
        out[xx * 3 + 0] = clip8(s0);
        out[xx * 3 + 1] = clip8(s1);
        out[xx * 3 + 2] = clip8(s2);
      }
    }
  }
  const int plane_width = need_horizontal ? out_width : box.width;
  Image out(plane_width, out_height);
  if (need_vertical) {
    // Row by row: accumulate each input row times its weight into a row of sums (vectorises well).
    const size_t row_values = static_cast<size_t>(plane_width) * 3;
    std::vector<int32_t> sums(row_values);
    for (int yy = 0; yy < out_height; ++yy) {
      const int32_t* k = &vert.weights[static_cast<size_t>(yy) * static_cast<size_t>(vert.ksize)];
      const int ymin = vert.first[static_cast<size_t>(yy)], ycount = vert.count[static_cast<size_t>(yy)];
      std::fill(sums.begin(), sums.end(), 1 << (kPrecisionBits - 1));
      for (int y = 0; y < ycount; ++y) {
        const uint8_t* p = plane_row(ymin + y);
        const int32_t w = k[y];
        int32_t* s = sums.data();
        for (size_t i = 0; i < row_values; ++i) s[i] += p[i] * w;
      }
      uint8_t* o = out.row(yy);
      for (size_t i = 0; i < row_values; ++i) o[i] = clip8(sums[i]);
    }
  } else {
    for (int y = 0; y < out_height; ++y)
      std::memcpy(out.row(y), plane_row(y), static_cast<size_t>(plane_width) * 3);
  }
  return out;
}

Image resize_bilinear(const Image& src, int out_height, int out_width) {
  return resize_bilinear(src, CropBox{0, 0, src.height, src.width}, out_height, out_width);
}

// ---------------------------------------------------------------------------------------------------------
// Functional transforms

Size2 resize_shorter_side_size(int height, int width, int size) {
  TL_CHECK(size > 0, ValueError, "Resize: size must be positive, got ", size);
  const int shorter = std::min(height, width), longer = std::max(height, width);
  const int new_long = static_cast<int>(static_cast<double>(static_cast<int64_t>(size) * longer) / shorter);
  return width <= height ? Size2{new_long, size} : Size2{size, new_long};
}

Image resize(const Image& src, Size2 size) {
  if (src.height == size.height && src.width == size.width) return src;
  return resize_bilinear(src, size.height, size.width);
}

Image resize_shorter_side(const Image& src, int size) {
  return resize(src, resize_shorter_side_size(src.height, src.width, size));
}

Image crop(const Image& src, const CropBox& box) {
  TL_CHECK(box.top >= 0 && box.left >= 0 && box.height > 0 && box.width > 0 && box.top + box.height <= src.height &&
               box.left + box.width <= src.width,
           ValueError, "crop: box (top ", box.top, ", left ", box.left, ", height ", box.height, ", width ", box.width,
           ") is not inside the ", src.height, "x", src.width, " image");
  Image out(box.width, box.height);
  for (int y = 0; y < box.height; ++y)
    std::memcpy(out.row(y), src.at(box.top + y, box.left), static_cast<size_t>(box.width) * 3);
  return out;
}

Image center_crop(const Image& src, Size2 size) {
  TL_CHECK(size.height > 0 && size.width > 0, ValueError, "CenterCrop: size must be positive");
  const Image* img = &src;
  Image padded;
  if (size.width > src.width || size.height > src.height) {
    // torchvision pads with zeros: left/top get the smaller half.
    const int left = size.width > src.width ? (size.width - src.width) / 2 : 0;
    const int top = size.height > src.height ? (size.height - src.height) / 2 : 0;
    const int right = size.width > src.width ? (size.width - src.width + 1) / 2 : 0;
    const int bottom = size.height > src.height ? (size.height - src.height + 1) / 2 : 0;
    padded = Image(src.width + left + right, src.height + top + bottom);  // zero-filled
    for (int y = 0; y < src.height; ++y)
      std::memcpy(padded.at(top + y, left), src.row(y), static_cast<size_t>(src.width) * 3);
    if (padded.width == size.width && padded.height == size.height) return padded;
    img = &padded;
  }
  const int top = py_round((img->height - size.height) / 2.0);
  const int left = py_round((img->width - size.width) / 2.0);
  return crop(*img, CropBox{top, left, size.height, size.width});
}

Image hflip(const Image& src) {
  Image out(src.width, src.height);
  for (int y = 0; y < src.height; ++y) {
    const uint8_t* in = src.row(y);
    uint8_t* o = out.row(y);
    for (int x = 0; x < src.width; ++x) std::memcpy(o + 3 * x, in + 3 * (src.width - 1 - x), 3);
  }
  return out;
}

Image resized_crop(const Image& src, const CropBox& box, Size2 size) {
  if (box.height == size.height && box.width == size.width) return crop(src, box);
  return resize_bilinear(src, box, size.height, size.width);
}

CropBox random_resized_crop_params(int height, int width, std::array<double, 2> scale, std::array<double, 2> ratio,
                                   RandomSource& rng) {
  TL_CHECK(height > 0 && width > 0, ValueError, "RandomResizedCrop: empty image");
  const double area = static_cast<double>(height) * width;
  // torch.log(torch.tensor(ratio)) in float32.
  const double log_lo = std::log(static_cast<float>(ratio[0]));
  const double log_hi = std::log(static_cast<float>(ratio[1]));
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * static_cast<double>(rng.uniform(scale[0], scale[1]));
    const double aspect_ratio = static_cast<double>(std::exp(rng.uniform(log_lo, log_hi)));  // float32 exp
    const int w = py_round(std::sqrt(target_area * aspect_ratio));
    const int h = py_round(std::sqrt(target_area / aspect_ratio));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int i = static_cast<int>(rng.randint(0, height - h + 1));
      const int j = static_cast<int>(rng.randint(0, width - w + 1));
      return CropBox{i, j, h, w};
    }
  }
  // Fallback: central crop with the ratio clamped into range.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  const double min_ratio = std::min(ratio[0], ratio[1]), max_ratio = std::max(ratio[0], ratio[1]);
  int w, h;
  if (in_ratio < min_ratio) {
    w = width;
    h = py_round(w / min_ratio);
  } else if (in_ratio > max_ratio) {
    h = height;
    w = py_round(h * max_ratio);
  } else {
    w = width;
    h = height;
  }
  return CropBox{(height - h) / 2, (width - w) / 2, h, w};
}

void to_tensor_normalize(const Image& img, const std::array<float, 3>& mean, const std::array<float, 3>& std,
                         float* out) {
  // torchvision: (float(v) / 255 - mean) / std, each step rounded to float32; a table per channel.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    TL_CHECK(std[c] != 0.0f, ValueError, "Normalize: std must not be zero (channel ", c, ")");
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      table[c][v] = (x - mean[c]) / std[c];
    }
  }
  const size_t plane = static_cast<size_t>(img.width) * static_cast<size_t>(img.height);
  float* r = out;
  float* g = out + plane;
  float* b = out + 2 * plane;
  const uint8_t* p = img.pixels.data();
  for (size_t i = 0; i < plane; ++i, p += 3) {
    r[i] = table[0][p[0]];
    g[i] = table[1][p[1]];
    b[i] = table[2][p[2]];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Transform objects

Resize::Resize(int shorter_side) : shorter_(shorter_side) {
  TL_CHECK(shorter_side > 0, ValueError, "Resize: size must be positive, got ", shorter_side);
}
Resize::Resize(int height, int width) : size_{height, width} {
  TL_CHECK(height > 0 && width > 0, ValueError, "Resize: size must be positive, got (", height, ", ", width, ")");
}
Image Resize::apply(const Image& img, RandomSource&) const {
  return shorter_ > 0 ? resize_shorter_side(img, shorter_) : resize(img, size_);
}
std::optional<Size2> Resize::output_size(std::optional<Size2> in) const {
  if (shorter_ == 0) return size_;
  if (!in) return std::nullopt;
  if (in->height == in->width) return Size2{shorter_, shorter_};
  return std::nullopt;  // depends on each image's aspect ratio
}
std::string Resize::describe() const {
  std::ostringstream os;
  if (shorter_ > 0) os << "Resize(" << shorter_ << ")";
  else os << "Resize((" << size_.height << ", " << size_.width << "))";
  return os.str();
}

CenterCrop::CenterCrop(int height, int width) : size_{height, width} {
  TL_CHECK(height > 0 && width > 0, ValueError, "CenterCrop: size must be positive");
}
Image CenterCrop::apply(const Image& img, RandomSource&) const { return center_crop(img, size_); }
std::string CenterCrop::describe() const {
  std::ostringstream os;
  os << "CenterCrop((" << size_.height << ", " << size_.width << "))";
  return os.str();
}

RandomResizedCrop::RandomResizedCrop(int size, std::array<double, 2> scale, std::array<double, 2> ratio)
    : size_{size, size}, scale_(scale), ratio_(ratio) {
  TL_CHECK(size > 0, ValueError, "RandomResizedCrop: size must be positive, got ", size);
  TL_CHECK(scale[0] > 0 && scale[0] <= scale[1], ValueError, "RandomResizedCrop: scale must satisfy 0 < min <= max");
  TL_CHECK(ratio[0] > 0 && ratio[0] <= ratio[1], ValueError, "RandomResizedCrop: ratio must satisfy 0 < min <= max");
}
CropBox RandomResizedCrop::sample(int height, int width, RandomSource& rng) const {
  return random_resized_crop_params(height, width, scale_, ratio_, rng);
}
Image RandomResizedCrop::apply(const Image& img, RandomSource& rng) const {
  return resized_crop(img, sample(img.height, img.width, rng), size_);
}
std::string RandomResizedCrop::describe() const {
  std::ostringstream os;
  os << "RandomResizedCrop(" << size_.height << ", scale=(" << scale_[0] << ", " << scale_[1] << "), ratio=("
     << ratio_[0] << ", " << ratio_[1] << "))";
  return os.str();
}

RandomHorizontalFlip::RandomHorizontalFlip(double p) : p_(p) {
  TL_CHECK(p >= 0 && p <= 1, ValueError, "RandomHorizontalFlip: p must be in [0, 1], got ", p);
}
Image RandomHorizontalFlip::apply(const Image& img, RandomSource& rng) const {
  return rng.uniform(0.0, 1.0) < p_ ? hflip(img) : img;
}
std::string RandomHorizontalFlip::describe() const {
  std::ostringstream os;
  os << "RandomHorizontalFlip(p=" << p_ << ")";
  return os.str();
}

Compose::Compose(std::vector<std::shared_ptr<Transform>> steps, std::array<float, 3> mean, std::array<float, 3> std)
    : steps_(std::move(steps)), mean_(mean), std_(std) {
  for (const auto& s : steps_) TL_CHECK(s != nullptr, ValueError, "Compose: null transform");
  for (float s : std_) TL_CHECK(s != 0.0f, ValueError, "Normalize: std must not be zero");
}

Image Compose::apply_image(const Image& img, RandomSource& rng) const {
  Image cur = img;
  for (const auto& s : steps_) cur = s->apply(cur, rng);
  return cur;
}

void Compose::operator()(const Image& img, RandomSource& rng, float* out) const {
  to_tensor_normalize(apply_image(img, rng), mean_, std_, out);
}

std::optional<Size2> Compose::output_size() const {
  std::optional<Size2> size;
  for (const auto& s : steps_) size = s->output_size(size);
  return size;
}

std::string Compose::describe() const {
  std::ostringstream os;
  os << "Compose(";
  for (const auto& s : steps_) os << s->describe() << ", ";
  os << "ToTensor(), Normalize(mean=[" << mean_[0] << ", " << mean_[1] << ", " << mean_[2] << "], std=[" << std_[0]
     << ", " << std_[1] << ", " << std_[2] << "]))";
  return os.str();
}

Compose train_transform(int size) {
  return Compose({std::make_shared<RandomResizedCrop>(size), std::make_shared<RandomHorizontalFlip>(0.5)});
}
Compose eval_transform(int resize_to, int crop) {
  return Compose({std::make_shared<Resize>(resize_to), std::make_shared<CenterCrop>(crop)});
}
Compose eval_resize_transform(int size) { return Compose({std::make_shared<Resize>(size, size)}); }

}  // namespace tl::io
