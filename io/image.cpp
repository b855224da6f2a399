// Image decoding and writing with stb_image / stb_image_write (see image.h). This file holds the only
// STB_IMAGE_IMPLEMENTATION and STB_IMAGE_WRITE_IMPLEMENTATION of tlengine.
#include "io/image.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace tl::io {
namespace {

const char* kSupported = "tlengine reads JPEG, PNG, BMP and PPM/PGM files";

std::vector<uint8_t> read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw IOError(detail::concat("image '", path, "' is a directory"));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IOError(detail::concat("cannot open image '", path, "': ", std::strerror(errno)));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IOError(detail::concat("cannot read image '", path, "': ", std::strerror(errno)));
  return bytes;
}

bool starts_with(const std::vector<uint8_t>& b, const char* magic, size_t n, size_t at = 0) {
  return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
}

// The container format from the first bytes (not from the file name, which may lie).
std::string sniff_format(const std::vector<uint8_t>& b) {
  if (starts_with(b, "\xFF\xD8\xFF", 3)) return "jpeg";
  if (starts_with(b, "\x89PNG\r\n\x1A\n", 8)) return "png";
  if (starts_with(b, "BM", 2)) return "bmp";
  if (b.size() >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '6')) return "pnm";
  if (starts_with(b, "II*\0", 4) || starts_with(b, "MM\0*", 4)) return "tiff";
  if (starts_with(b, "RIFF", 4) && starts_with(b, "WEBP", 4, 8)) return "webp";
  if (starts_with(b, "GIF8", 4)) return "gif";
  return "";
}

// What the JPEG marker segments say: component count, Adobe colour transform, and whether the
// entropy-coded data is followed by an end-of-image marker (a truncated file has none; stb_image would
// silently decode the missing part as grey).
struct JpegMarkers {
  int width = 0, height = 0;  // from the frame header
  int components = 0;
  int adobe_transform = -1;  // -1: no Adobe APP14 segment
  bool saw_scan = false;
  bool complete = false;
};

// stb_image 2.27 (Debian 12's libstb-dev) writes past its Huffman arrays when a DHT table declares more than 256
// codes (found by fuzzing; JPEG allows at most 256, libjpeg refuses such files). Walks the marker segments as
// stb_image does (bytes between segments and entropy-coded data skipped; a DHT's tables read until its length is
// used up, even past a short segment) and checks every table before stb_image sees the file.
bool jpeg_huffman_tables_ok(const std::vector<uint8_t>& d) {
  const size_t n = d.size();
  size_t pos = 2;  // after SOI
  while (pos + 1 < n) {
    const uint8_t m = d[pos + 1];
    if (d[pos] != 0xFF || m == 0xFF) { ++pos; continue; }  // padding, entropy-coded data, fill bytes
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD9)) { pos += 2; continue; }  // no length
    if (pos + 4 > n) break;
    const size_t len = (static_cast<size_t>(d[pos + 2]) << 8) | d[pos + 3];
    if (m == 0xC4) {
      int64_t left = static_cast<int64_t>(len) - 2;
      for (size_t t = pos + 4; left > 0 && t < n;) {
        int64_t codes = 0;  // stb_image reads zeros past the end of the data
        for (size_t i = t + 1; i <= t + 16 && i < n; ++i) codes += d[i];
        if (codes > 256) return false;
        t += static_cast<size_t>(17 + codes);
        left -= 17 + codes;
      }
    }
    pos += 2 + std::max<size_t>(len, 2);
  }
  return true;
}

// stb_image 2.27 reads the PNM header numbers (width, height, maxval) into an int with no overflow check
// (undefined behaviour; found by fuzzing). Reads them as stb_image does (whitespace and '#' comments skipped) and
// refuses a number longer than 9 digits before stb_image sees the file.
bool pnm_header_numbers_ok(const std::vector<uint8_t>& d) {
  auto space = [](uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  size_t i = 2;  // after "P5" / "P6"
  for (int k = 0; k < 3; ++k) {
    for (;;) {
      while (i < d.size() && space(d[i])) ++i;
      if (i >= d.size() || d[i] != '#') break;
      while (i < d.size() && d[i] != '\n' && d[i] != '\r') ++i;
    }
    size_t digits = 0;
    for (; i < d.size() && d[i] >= '0' && d[i] <= '9'; ++i) ++digits;
    if (digits > 9) return false;
  }
  return true;
}

JpegMarkers scan_jpeg_markers(const std::vector<uint8_t>& d) {
  JpegMarkers r;
  size_t pos = 2;  // after SOI
  const size_t n = d.size();
  while (pos + 2 <= n) {
    if (d[pos] != 0xFF) return r;  // malformed: stb_image reports it
    const uint8_t m = d[pos + 1];
    if (m == 0xFF) { ++pos; continue; }  // fill byte
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { pos += 2; continue; }  // markers without a length
    if (m == 0xD9) { r.complete = true; return r; }
    if (pos + 4 > n) return r;
    const size_t len = (static_cast<size_t>(d[pos + 2]) << 8) | d[pos + 3];
    if (len < 2) return r;
    const uint8_t* seg = d.data() + pos + 4;
    const size_t seg_len = std::min(len - 2, n - (pos + 4));
    const bool is_sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
    if (is_sof && seg_len >= 6) {
      r.height = (seg[1] << 8) | seg[2];
      r.width = (seg[3] << 8) | seg[4];
      r.components = seg[5];
    }
    if (m == 0xEE && seg_len >= 12 && std::memcmp(seg, "Adobe", 5) == 0) r.adobe_transform = seg[11];
    if (m == 0xDA) {
      // Scans (several in a progressive file) run to the end-of-image marker; 0xFF 0xD9 cannot occur
      // inside entropy-coded data (0xFF is always stuffed or a restart/segment marker there).
      r.saw_scan = true;
      for (size_t i = pos + 2 + len; i + 1 < n; ++i)
        if (d[i] == 0xFF && d[i + 1] == 0xD9) { r.complete = true; break; }
      return r;
    }
    pos += 2 + len;
  }
  return r;
}

uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
uint32_t le32(const uint8_t* p) { return (uint32_t(p[3]) << 24) | (uint32_t(p[2]) << 16) | (uint32_t(p[1]) << 8) | p[0]; }

// Width and height straight from the header, for the size limit: stb_image refuses images over 2^30 bytes
// with a vague message, and the limit must be checked before anything is decoded. false when unknown.
bool header_size(const std::vector<uint8_t>& b, const std::string& format, int64_t* w, int64_t* h) {
  if (format == "png" && b.size() >= 24 && std::memcmp(b.data() + 12, "IHDR", 4) == 0) {
    *w = be32(b.data() + 16);
    *h = be32(b.data() + 20);
    return true;
  }
  if (format == "bmp" && b.size() >= 26) {
    *w = static_cast<int32_t>(le32(b.data() + 18));
    *h = std::abs(static_cast<int64_t>(static_cast<int32_t>(le32(b.data() + 22))));  // negative: top-down rows
    return true;
  }
  if (format == "jpeg") {
    JpegMarkers jm = scan_jpeg_markers(b);
    *w = jm.width;
    *h = jm.height;
    return jm.components > 0;
  }
  return false;
}

void check_limits(int64_t w, int64_t h, const std::string& name, const ImageLimits& limits) {
  if (w > limits.max_side || h > limits.max_side || w * h > limits.max_pixels)
    throw IOError(detail::concat("image '", name, "' is ", w, "x", h, " pixels, over the limit of ", limits.max_side,
                                 " pixels a side and ", limits.max_pixels,
                                 " pixels in all; shrink it or raise the limit"));
}

std::string stb_reason() {
  const char* why = stbi_failure_reason();
  return why ? why : "unknown decoder error";
}

ImageInfo info_from_bytes(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits* limits) {
  if (bytes.empty()) throw IOError(detail::concat("image '", name, "' is an empty file (0 bytes)"));
  const std::string format = sniff_format(bytes);
  if (format == "tiff" || format == "webp" || format == "gif")
    throw IOError(detail::concat("image '", name, "' is a ", format, " file, which tlengine cannot decode (",
                                 kSupported, "); convert it, e.g. with `convert in out.png`"));
  if (format.empty())
    throw IOError(detail::concat("'", name, "' is not an image file (unknown format; ", kSupported, ")"));
  ImageInfo info;
  info.format = format;
  int64_t header_w = 0, header_h = 0;
  if (limits && header_size(bytes, format, &header_w, &header_h)) check_limits(header_w, header_h, name, *limits);
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    throw IOError(detail::concat("image '", name, "' is larger than 2 GiB"));
  if (format == "pnm" && !pnm_header_numbers_ok(bytes))
    throw IOError(detail::concat("PNM image '", name, "' is corrupt: a header number has more than 9 digits"));
  if (format == "jpeg" && !jpeg_huffman_tables_ok(bytes))
    throw IOError(detail::concat("JPEG image '", name, "' is corrupt: a Huffman table has more than 256 codes"));
  if (!stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &info.width, &info.height,
                             &info.channels))
    throw IOError(detail::concat("cannot read the header of ", format, " image '", name, "': ", stb_reason()));
  if (format == "jpeg") {
    JpegMarkers jm = scan_jpeg_markers(bytes);
    if (jm.components == 4) info.channels = 4;
  }
  return info;
}

}  // namespace

ImageInfo read_image_info(const std::string& path) { return info_from_bytes(read_file(path), path, nullptr); }

Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits& limits) {
  const ImageInfo info = info_from_bytes(bytes, name, &limits);
  if (info.width <= 0 || info.height <= 0)
    throw IOError(detail::concat("image '", name, "' has an invalid size ", info.width, "x", info.height));
  check_limits(info.width, info.height, name, limits);
  if (info.format == "jpeg") {
    JpegMarkers jm = scan_jpeg_markers(bytes);
    if (!jm.saw_scan || !jm.complete)
      throw IOError(detail::concat("JPEG image '", name,
                                   "' is truncated (no end-of-image marker after the image data)"));
    if (jm.components == 4 && jm.adobe_transform < 0)
      throw IOError(detail::concat("JPEG image '", name,
                                   "' has 4 colour channels (CMYK) but no Adobe marker saying how to convert "
                                   "them to RGB; convert it to an RGB JPEG or PNG"));
    if (jm.components != 1 && jm.components != 3 && jm.components != 4)
      throw IOError(detail::concat("JPEG image '", name, "' has ", jm.components,
                                   " colour channels; only grey, RGB and CMYK are supported"));
  }
  int w = 0, h = 0, channels = 0;
  // stb_image 2.27 converts the channels of a 16-bit PNM with its 8-bit routine and then reads twice the bytes it
  // has (a heap overflow; found by fuzzing): such a file is decoded with its own channel count, made RGB here.
  const bool wide_pnm = info.format == "pnm" && stbi_is_16_bit_from_memory(bytes.data(), static_cast<int>(bytes.size()));
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels, wide_pnm ? 0 : 3),
      stbi_image_free);
  if (!data) throw IOError(detail::concat("cannot decode ", info.format, " image '", name, "': ", stb_reason()));
  Image img(w, h);
  if (wide_pnm && channels == 1) {
    for (size_t i = 0; i < img.pixels.size() / 3; ++i)
      img.pixels[3 * i] = img.pixels[3 * i + 1] = img.pixels[3 * i + 2] = data.get()[i];
  } else {
    TL_CHECK(!wide_pnm || channels == 3, IOError, "cannot decode pnm image '", name, "': ", channels, " channels");
    std::memcpy(img.pixels.data(), data.get(), img.pixels.size());
  }
  return img;
}

Image decode_image(const std::string& path, const ImageLimits& limits) {
  return decode_image_memory(read_file(path), path, limits);
}

void write_image(const std::string& path, const Image& image, int jpeg_quality) {
  TL_CHECK(image.width > 0 && image.height > 0 &&
               image.pixels.size() == static_cast<size_t>(image.width) * image.height * 3,
           IOError, "write_image '", path, "': image has an invalid size ", image.width, "x", image.height);
  std::string ext = path.substr(path.find_last_of('.') == std::string::npos ? path.size() : path.find_last_of('.'));
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  int ok = 0;
  if (ext == ".png")
    ok = stbi_write_png(path.c_str(), image.width, image.height, 3, image.pixels.data(), image.width * 3);
  else if (ext == ".jpg" || ext == ".jpeg")
    ok = stbi_write_jpg(path.c_str(), image.width, image.height, 3, image.pixels.data(),
                        std::clamp(jpeg_quality, 1, 100));
  else if (ext == ".bmp")
    ok = stbi_write_bmp(path.c_str(), image.width, image.height, 3, image.pixels.data());
  else
    throw IOError(detail::concat("write_image '", path, "': unknown extension (use .png, .jpg or .bmp)"));
  if (!ok) throw IOError(detail::concat("cannot write image '", path, "': ", std::strerror(errno)));
}

}  // namespace tl::io
