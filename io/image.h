// Images: decoding JPEG/PNG/BMP/PPM files into 8-bit RGB pixels (stb_image), and writing PNG/JPEG/BMP files.
// Every decoded image is RGB uint8 in HWC order, whatever the file holds (grey, grey+alpha, palette, RGBA,
// CMYK JPEG), converted the way PIL's Image.convert("RGB") does: grey is replicated, alpha is dropped.
// Bad files (missing, empty, corrupt, truncated, too large, unsupported) throw IOError naming the file and reason.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tl::io {

// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // width * height * 3

  Image() = default;
  Image(int w, int h) : width(w), height(h), pixels(static_cast<size_t>(w) * static_cast<size_t>(h) * 3) {}
  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * static_cast<size_t>(width) * 3; }
  const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * static_cast<size_t>(width) * 3; }
  uint8_t* at(int y, int x) { return row(y) + static_cast<size_t>(x) * 3; }
  const uint8_t* at(int y, int x) const { return row(y) + static_cast<size_t>(x) * 3; }
};

// Images larger than this are refused before any pixel is decoded (a corrupt or hostile header could
// otherwise ask for gigabytes).
struct ImageLimits {
  int max_side = 16384;                    // pixels, either dimension
  int64_t max_pixels = 100LL * 1000 * 1000;  // width * height
};

// What a file's header says, without decoding it.
struct ImageInfo {
  int width = 0;
  int height = 0;
  int channels = 0;    // as stored: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA/CMYK
  std::string format;  // "jpeg", "png", "bmp", "pnm", ...
};

ImageInfo read_image_info(const std::string& path);
Image decode_image(const std::string& path, const ImageLimits& limits = {});
// Decodes an in-memory file; `name` is used in error messages.
Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits& limits = {});

// Writes by extension: .png, .jpg/.jpeg (quality 1..100), .bmp. Throws IOError on failure.
void write_image(const std::string& path, const Image& image, int jpeg_quality = 90);

}  // namespace tl::io
