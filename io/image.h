// Images: decoding JPEG/PNG/BMP/PPM files into 8-bit RGB pixels, and writing PNG/JPEG/BMP files (stb_image_write).
// Every decoded image is RGB uint8 in HWC order, whatever the file holds, with the pixels of PIL's
// Image.open(f).convert("RGB") (what torchvision's default loader gives):
// - JPEG is decoded by libjpeg-turbo (the library PIL uses) with PIL's settings: the pixels are equal to PIL's,
//   for grey, YCbCr, RGB, CMYK and YCCK files (4-channel files are read with Adobe's inverted convention and
//   converted like Pillow's cmyk2rgb), baseline, progressive, arithmetic-coded, with restart markers, any
//   chroma subsampling. Built without libjpeg (no libjpeg62-turbo-dev; CMake says so), stb_image decodes JPEG:
//   up to 3 grey levels off PIL, no arithmetic coding, 4-channel files without an Adobe marker refused.
// - PNG, BMP, PPM/PGM are decoded by stb_image, exactly as PIL: grey is replicated, alpha is dropped (not
//   blended), palettes are expanded. 16-bit PNG: RGB/RGBA/grey+alpha keep the high byte of each value; 16-bit
//   grey is PIL mode "I", whose convert("RGB") clips each value to 255 (0..65535 -> min(v, 255): a normal 16-bit
//   photo turns almost white in PIL and here alike). The gAMA, sRGB and iCCP chunks are ignored, as PIL does.
//   PNG integrity as PIL checks it: a bad CRC in a chunk before the image data, or damaged compressed data (zlib
//   stream or its Adler-32), is refused; a bad IDAT/IEND CRC, a missing IEND or junk after the image data is
//   accepted. Image data inflating to more than the header's size needs (a zlib bomb) is refused (PIL stops
//   reading and decodes it). PIL decodes a file damaged only after its last row; we refuse it (rare).
// - EXIF orientation is ignored (the stored pixels, unrotated), as torchvision's loader ignores it (it never
//   calls ImageOps.exif_transpose).
// Bad files throw IOError naming the file and the reason: missing, empty, not an image, unsupported format,
// corrupt, truncated (a JPEG whose data ends before libjpeg has produced the last pixel row, which includes a
// file that lacks only its end-of-image marker: PIL's "image file is truncated" without LOAD_TRUNCATED_IMAGES;
// data missing after the last row is accepted, as PIL accepts it; corrupt entropy-coded data that PIL decodes
// with libjpeg warnings is decoded the same way, to the same pixels), or over ImageLimits.
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

// Images larger than this are refused from the header, before any pixel buffer is allocated: a corrupt or hostile
// header (a "decompression bomb", e.g. a 70-byte PNG saying 100,000 x 100,000) could otherwise ask for gigabytes.
// PIL's own limit is 2 * 89,478,485 pixels (Image.MAX_IMAGE_PIXELS).
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
// "libjpeg-turbo" (JPEG pixels equal PIL's) or "stb_image" (the fallback build).
const char* jpeg_decoder_name();
Image decode_image(const std::string& path, const ImageLimits& limits = {});
// Decodes an in-memory file; `name` is used in error messages.
Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits& limits = {});

// Writes by extension: .png, .jpg/.jpeg (quality 1..100), .bmp. Throws IOError on failure.
void write_image(const std::string& path, const Image& image, int jpeg_quality = 90);

}  // namespace tl::io
