// Image decoding and writing with stb_image / stb_image_write (see image.h). This file holds the only
// STB_IMAGE_IMPLEMENTATION and STB_IMAGE_WRITE_IMPLEMENTATION of tlengine.
#include "io/image.h"

#include <algorithm>
#include <cctype>
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

#ifdef TL_HAVE_ZLIB
#include <zlib.h>
#endif

#ifdef TL_HAVE_LIBJPEG
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE and size_t first
#include <jerror.h>
#include <jpeglib.h>
#endif

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
    throw IOError(detail::concat("image '", name, "' says it is ", w, "x", h, " pixels, over the limit of ",
                                 limits.max_side, " pixels a side and ", limits.max_pixels,
                                 " pixels in all: a corrupt header or a decompression bomb; nothing was decoded. If the image is "
                                 "genuine, shrink it (e.g. `convert in.jpg -resize 8192x8192 out.jpg`)"));
}

std::string stb_reason() {
  const char* why = stbi_failure_reason();
  return why ? why : "unknown decoder error";
}

// The container format, after refusing empty files and formats tlengine does not decode.
std::string check_format(const std::vector<uint8_t>& bytes, const std::string& name) {
  if (bytes.empty()) throw IOError(detail::concat("image '", name, "' is an empty file (0 bytes)"));
  const std::string format = sniff_format(bytes);
  if (format == "tiff" || format == "webp" || format == "gif")
    throw IOError(detail::concat("image '", name, "' is a ", format, " file, which tlengine cannot decode (",
                                 kSupported, "); convert it, e.g. with `convert in out.png`"));
  if (format.empty())
    throw IOError(detail::concat("'", name, "' is not an image file (unknown format; ", kSupported, ")"));
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    throw IOError(detail::concat("image '", name, "' is larger than 2 GiB"));
  // stb_image 2.27 overflows an int on longer header numbers (found by fuzzing); PIL refuses such files too.
  if (format == "pnm" && !pnm_header_numbers_ok(bytes))
    throw IOError(detail::concat("PNM image '", name, "' is corrupt: a header number has more than 9 digits"));
  return format;
}

ImageInfo stb_info(const std::vector<uint8_t>& bytes, const std::string& name, const std::string& format) {
  ImageInfo info;
  info.format = format;
  // stb_image 2.27 writes past its arrays for a Huffman table of more than 256 codes (found by fuzzing); libjpeg
  // refuses such a table itself.
  if (format == "jpeg" && !jpeg_huffman_tables_ok(bytes))
    throw IOError(detail::concat("JPEG image '", name, "' is corrupt: a Huffman table has more than 256 codes"));
  if (!stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &info.width, &info.height,
                             &info.channels))
    throw IOError(detail::concat("cannot read the header of ", format, " image '", name, "': ", stb_reason()));
  if (format == "jpeg" && scan_jpeg_markers(bytes).components == 4) info.channels = 4;
  return info;
}

#ifdef TL_HAVE_LIBJPEG
// ---- JPEG through libjpeg-turbo, set up as Pillow's JpegDecode.c does: libjpeg's defaults (islow IDCT, fancy
// upsampling, its own YCbCr/YCCK conversion), RGB out for grey and colour files, CMYK out for 4-channel files.
// Same library, same settings: the pixels equal PIL's Image.open(f).convert("RGB").

// PIL's convert("RGB") of the CMYK pixels libjpeg returns. PIL reads every 4-channel JPEG with Adobe's
// inverted convention (rawmode "CMYK;I": C = 255 - stored) and converts with Pillow's cmyk2rgb,
// R = K' - muldiv255(C, K') where K' = 255 - K = the stored K byte.
void cmyk_to_rgb(const uint8_t* in, uint8_t* out, size_t pixels) {
  for (size_t i = 0; i < pixels; ++i, in += 4, out += 3) {
    const int nk = in[3];
    for (int c = 0; c < 3; ++c) {
      const int t = (255 - in[c]) * nk + 128;
      out[c] = static_cast<uint8_t>(nk - (((t >> 8) + t) >> 8));
    }
  }
}

constexpr int kMaxJpegScans = 1000;  // real progressive files have about 10; thousands of scans is a CPU attack

// libjpeg's error manager. libjpeg is C: its fatal errors leave through longjmp to the setjmp of the function
// that called it (no C++ object lives in the frames skipped), never through a C++ exception.
struct JpegErrors {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool all_rows = false;       // every pixel row has been decoded
  bool premature_end = false;  // the data ran out before that
};

[[noreturn]] void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings about corrupt entropy-coded data are ignored, as Pillow ignores them (same pixels as PIL). Running
// out of data before the last pixel row is remembered: where libjpeg's memory source warns "Premature end of
// JPEG file", Pillow's suspending source asks for more data and PIL raises "image file is truncated" (also for
// a file that only lacks its end-of-image marker, as libjpeg reads past the last block's bits for it). After the
// last row (in jpeg_finish_decompress) Pillow does not mind a missing end, and neither do we.
void jpeg_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegErrors*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !err->all_rows) err->premature_end = true;
}

void jpeg_scan_limit(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number <= kMaxJpegScans) return;
  auto* err = reinterpret_cast<JpegErrors*>(cinfo->err);
  std::snprintf(err->message, sizeof(err->message), "more than %d scans (a hostile progressive file)",
                kMaxJpegScans);
  std::longjmp(err->jump, 1);
}

struct JpegDecoder {
  jpeg_decompress_struct cinfo{};
  JpegErrors err{};
  jpeg_progress_mgr progress{};
  JpegDecoder() = default;
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;
  ~JpegDecoder() { jpeg_destroy_decompress(&cinfo); }  // safe on a zeroed or half-made struct
};

// Reads the markers up to the first scan. false on a libjpeg error (message in d.err).
bool jpeg_header(JpegDecoder& d, const std::vector<uint8_t>& bytes) {
  d.cinfo.err = jpeg_std_error(&d.err.pub);
  d.err.pub.error_exit = jpeg_fail;
  d.err.pub.emit_message = jpeg_message;
  if (setjmp(d.err.jump)) return false;
  jpeg_create_decompress(&d.cinfo);
  d.progress.progress_monitor = jpeg_scan_limit;
  d.cinfo.progress = &d.progress;
  jpeg_mem_src(&d.cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&d.cinfo, TRUE);
  return true;
}

// Decodes every row into out (output_width * output_components bytes a row). false on a libjpeg error.
bool jpeg_pixels(JpegDecoder& d, uint8_t* out) {
  if (setjmp(d.err.jump)) return false;
  jpeg_start_decompress(&d.cinfo);
  const size_t row_bytes = static_cast<size_t>(d.cinfo.output_width) * d.cinfo.output_components;
  while (d.cinfo.output_scanline < d.cinfo.output_height) {
    JSAMPROW row = out + d.cinfo.output_scanline * row_bytes;
    if (jpeg_read_scanlines(&d.cinfo, &row, 1) != 1) {  // a memory source never suspends; be safe anyway
      std::snprintf(d.err.message, sizeof(d.err.message), "the decoder stopped at row %u of %u",
                    d.cinfo.output_scanline, d.cinfo.output_height);
      return false;
    }
  }
  d.err.all_rows = true;
  jpeg_finish_decompress(&d.cinfo);
  return true;
}

[[noreturn]] void throw_jpeg_error(const JpegDecoder& d, const std::string& name) {
  if (d.err.premature_end)
    throw IOError(detail::concat("JPEG image '", name,
                                 "' is truncated: the data ends before the last pixel row (PIL refuses it too, "
                                 "'image file is truncated'); copy or export the file again"));
  throw IOError(detail::concat("cannot decode JPEG image '", name, "': ", d.err.message,
                               " (libjpeg); the file is corrupt or not a JPEG that PIL can read"));
}

void jpeg_open(JpegDecoder& d, const std::vector<uint8_t>& bytes, const std::string& name) {
  if (!jpeg_header(d, bytes) || d.err.premature_end) throw_jpeg_error(d, name);
  const int n = d.cinfo.num_components;
  if (n != 1 && n != 3 && n != 4)
    throw IOError(detail::concat("JPEG image '", name, "' has ", n,
                                 " colour channels; only grey, RGB/YCbCr and CMYK/YCCK are supported (as in PIL)"));
}

ImageInfo jpeg_info(const std::vector<uint8_t>& bytes, const std::string& name) {
  JpegDecoder d;
  jpeg_open(d, bytes, name);
  ImageInfo info;
  info.width = static_cast<int>(d.cinfo.image_width);
  info.height = static_cast<int>(d.cinfo.image_height);
  info.channels = d.cinfo.num_components;
  info.format = "jpeg";
  return info;
}

Image decode_jpeg(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits& limits) {
  JpegDecoder d;
  jpeg_open(d, bytes, name);
  check_limits(d.cinfo.image_width, d.cinfo.image_height, name, limits);  // before any pixel buffer exists
  const bool cmyk = d.cinfo.num_components == 4;
  d.cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // grey is replicated, as PIL's L -> RGB
  d.cinfo.dct_method = JDCT_ISLOW;                       // libjpeg's defaults, which PIL keeps (only its draft
  d.cinfo.do_fancy_upsampling = TRUE;                    // mode, never used by torchvision, takes IFAST)
  Image img(static_cast<int>(d.cinfo.image_width), static_cast<int>(d.cinfo.image_height));
  std::vector<uint8_t> cmyk_pixels(cmyk ? img.pixels.size() / 3 * 4 : 0);
  if (!jpeg_pixels(d, cmyk ? cmyk_pixels.data() : img.pixels.data()) || d.err.premature_end)
    throw_jpeg_error(d, name);
  if (cmyk) cmyk_to_rgb(cmyk_pixels.data(), img.pixels.data(), img.pixels.size() / 3);
  return img;
}
#endif  // TL_HAVE_LIBJPEG

// The fallback JPEG checks of the stb_image path (no libjpeg at build time).
void check_jpeg_for_stb(const std::vector<uint8_t>& bytes, const std::string& name) {
  const JpegMarkers jm = scan_jpeg_markers(bytes);
  if (!jm.saw_scan || !jm.complete)
    throw IOError(detail::concat("JPEG image '", name, "' is truncated (no end-of-image marker after the image data)"));
  if (jm.components == 4 && jm.adobe_transform < 0)
    throw IOError(detail::concat("JPEG image '", name,
                                 "' has 4 colour channels (CMYK) but no Adobe marker saying how to convert "
                                 "them to RGB; convert it to an RGB JPEG or PNG"));
  if (jm.components != 1 && jm.components != 3 && jm.components != 4)
    throw IOError(detail::concat("JPEG image '", name, "' has ", jm.components,
                                 " colour channels; only grey, RGB and CMYK are supported"));
}

// A 16-bit single-channel PNG (bit depth 16, colour type 0) is mode "I" in PIL, and convert("RGB") clips each
// value to 255 (it does not scale); every other 16-bit PNG keeps the high byte in PIL, as stb_image does.
bool is_png_grey16(const std::vector<uint8_t>& b) {
  return sniff_format(b) == "png" && b.size() >= 26 && std::memcmp(b.data() + 12, "IHDR", 4) == 0 && b[24] == 16 &&
         b[25] == 0;
}

Image decode_png_grey16(const std::vector<uint8_t>& bytes, const std::string& name) {
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<stbi_us, void (*)(void*)> data(
      stbi_load_16_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels, 1),
      stbi_image_free);
  if (!data) throw IOError(detail::concat("cannot decode png image '", name, "': ", stb_reason()));
  Image img(w, h);
  for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i)
    std::fill_n(img.pixels.data() + 3 * i, 3, static_cast<uint8_t>(std::min<int>(data.get()[i], 255)));
  return img;
}

// ---- PNG integrity, checked as PIL checks it (stb_image checks neither CRCs nor the zlib checksum, and would
// decode corrupt data to garbage where PIL refuses the file).

uint32_t png_crc(const uint8_t* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

enum class ZlibCheck { ok, damaged, too_large, damaged_or_too_large };

#ifdef TL_HAVE_ZLIB
// Inflates the whole stream into a small reused buffer, zlib checking the Adler-32 at its end.
ZlibCheck check_zlib_stream(const std::vector<uint8_t>& z, int64_t bound) {
  z_stream s{};
  if (z.size() > UINT32_MAX || inflateInit(&s) != Z_OK) return ZlibCheck::damaged;
  std::vector<unsigned char> buf(1 << 16);
  s.next_in = const_cast<Bytef*>(z.data());
  s.avail_in = static_cast<uInt>(z.size());
  int64_t total = 0;
  int rc = Z_OK;
  while (rc == Z_OK && total <= bound) {
    s.next_out = buf.data();
    s.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&s, Z_NO_FLUSH);
    total += static_cast<int64_t>(buf.size() - s.avail_out);
  }
  inflateEnd(&s);
  if (total > bound) return ZlibCheck::too_large;
  return rc == Z_STREAM_END ? ZlibCheck::ok : ZlibCheck::damaged;
}
#else
uint32_t adler32(const uint8_t* p, size_t n) {
  uint32_t a = 1, b = 0;
  while (n > 0) {
    const size_t block = std::min<size_t>(n, 5552);  // the most bytes before b can overflow 32 bits
    for (size_t i = 0; i < block; ++i) b += a += p[i];
    a %= 65521;
    b %= 65521;
    p += block;
    n -= block;
  }
  return (b << 16) | a;
}

// stb_image's inflate (slower than zlib's) into a buffer of the most the image may need, then the Adler-32.
ZlibCheck check_zlib_stream(const std::vector<uint8_t>& z, int64_t bound) {
  if (bound >= INT32_MAX || z.size() >= static_cast<size_t>(INT32_MAX) || z.size() < 6) return ZlibCheck::ok;
  std::vector<char> raw(static_cast<size_t>(bound));
  const int got = stbi_zlib_decode_buffer(raw.data(), static_cast<int>(bound), reinterpret_cast<const char*>(z.data()),
                                          static_cast<int>(z.size()));
  if (got < 0) return ZlibCheck::damaged_or_too_large;
  const bool sum_ok = adler32(reinterpret_cast<const uint8_t*>(raw.data()), static_cast<size_t>(got)) ==
                      be32(z.data() + z.size() - 4);
  return sum_ok ? ZlibCheck::ok : ZlibCheck::damaged;
}
#endif

// The most bytes the zlib stream of a PNG with this header may inflate to (scanlines with their filter bytes;
// interlacing adds at most a filter byte and a partial byte per row of each of the 7 passes).
int64_t png_raw_bound(const std::vector<uint8_t>& b) {
  const int64_t w = be32(b.data() + 16), h = be32(b.data() + 20), depth = b[24], type = b[25];
  const int64_t channels = type == 2 ? 3 : type == 4 ? 2 : type == 6 ? 4 : 1;
  return h * (1 + (w * channels * depth + 7) / 8) + 14 * h + 64;
}

// A chunk type for a message: its letters, or ? for other bytes (a damaged file may hold anything there).
std::string printable(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '?';
  return s;
}

[[noreturn]] void throw_broken_png(const std::string& name, const std::string& what) {
  throw IOError(detail::concat("PNG image '", name, "' is corrupt: ", what, "; copy or export the file again"));
}

// What check_png_like_pil found out about the chunks, for the copy stb_image gets (png_for_stb).
struct PngScan {
  size_t data_end = 0;        // where the last IDAT chunk ends (0: no IDAT chunk)
  bool iend_follows = false;  // an IEND chunk right after the image data
  bool empty_idat = false;    // a zero-length IDAT chunk (legal; PIL skips it)
  // stb_image needs its own copy: it refuses a file without IEND (or with an unknown critical chunk after the
  // data), and a zero-length first IDAT makes it copy 0 bytes to a null pointer (undefined behaviour; found by
  // fuzzing), so it must never see one: the copy drops them, and a file cut short before its image data is
  // refused here.
  bool needs_copy() const { return data_end != 0 && (!iend_follows || empty_idat); }
};

// PIL's checks: the CRC of every chunk before the image data ("broken PNG file"; PIL does not check the CRCs of
// IDAT and later chunks), and the zlib stream of the image data, with its Adler-32 ("broken data stream"). The
// stream must inflate to no more than the header's image needs (a zlib bomb is refused; PIL would stop reading).
// PIL reads nothing after the image data (the scan says where it ends and what follows it).
PngScan check_png_like_pil(const std::vector<uint8_t>& b, const std::string& name) {
  std::vector<uint8_t> idat;
  PngScan scan;
  size_t pos = 8;
  while (pos + 12 <= b.size()) {
    const size_t len = be32(b.data() + pos);
    const std::string type(reinterpret_cast<const char*>(b.data()) + pos + 4, 4);
    if (len > b.size() - pos - 12) {  // cut short: after image data the zlib check below reports it
      if (scan.data_end == 0)
        throw_broken_png(name, "the file ends inside its " + printable(type) + " chunk (cut short)");
      break;
    }
    if (type == "IDAT") {
      idat.insert(idat.end(), b.begin() + pos + 8, b.begin() + pos + 8 + len);
      scan.data_end = pos + 12 + len;
      scan.empty_idat = scan.empty_idat || len == 0;
    } else if (scan.data_end == 0 && png_crc(b.data() + pos + 4, len + 4) != be32(b.data() + pos + 8 + len)) {
      throw_broken_png(name, "bad checksum in the " + printable(type) + " chunk (PIL refuses it too)");
    } else if (scan.data_end != 0) {
      scan.iend_follows = type == "IEND" && pos == scan.data_end;
      break;
    }
    pos += 12 + len;
  }
  // stb_image would read a chunk header cut short too (a zero-length IDAT header there is the null-pointer copy).
  if (scan.data_end == 0 && pos < b.size()) throw_broken_png(name, "the file ends inside a chunk header (cut short)");
  if (scan.data_end != 0 && idat.empty()) throw_broken_png(name, "it has no image data (its IDAT chunks are empty)");
  if (idat.size() < 6 || b.size() < 26) return scan;  // too short for a zlib stream: stb_image says so
  const std::string size = std::to_string(be32(b.data() + 16)) + "x" + std::to_string(be32(b.data() + 20));
  switch (check_zlib_stream(idat, png_raw_bound(b))) {
    case ZlibCheck::ok: break;
    case ZlibCheck::damaged: throw_broken_png(name, "the compressed image data is damaged or cut short");
    case ZlibCheck::too_large: throw_broken_png(name, "the compressed image data inflates to more than the " + size +
                                                          " pixels of its header need (a zlib bomb)");
    case ZlibCheck::damaged_or_too_large:
      throw_broken_png(name, "the compressed image data is damaged, cut short, or inflates to more than the " + size +
                                 " pixels of its header need (a zlib bomb)");
  }
  return scan;
}

// The file as stb_image can read it: up to the end of the image data, without zero-length IDAT chunks, then IEND.
std::vector<uint8_t> png_for_stb(const std::vector<uint8_t>& b, const PngScan& scan) {
  static const uint8_t kIend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  std::vector<uint8_t> out(b.begin(), b.begin() + 8);
  for (size_t pos = 8; pos < scan.data_end;) {  // the chunks up to data_end were walked whole by the scan
    const size_t len = be32(b.data() + pos);
    if (len != 0 || std::memcmp(b.data() + pos + 4, "IDAT", 4) != 0)
      out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(pos),
                 b.begin() + static_cast<std::ptrdiff_t>(pos + 12 + len));
    pos += 12 + len;
  }
  out.insert(out.end(), kIend, kIend + 12);
  return out;
}

// stb_image's pixels, the checks done.
Image stb_pixels(const std::vector<uint8_t>& bytes, const std::string& name, const std::string& format) {
  if (is_png_grey16(bytes)) return decode_png_grey16(bytes, name);
  int w = 0, h = 0, channels = 0;
  // stb_image 2.27 converts the channels of a 16-bit PNM with its 8-bit routine and then reads twice the bytes it
  // has (a heap overflow; found by fuzzing): such a file is decoded with its own channel count, made RGB here.
  const bool wide_pnm = format == "pnm" && stbi_is_16_bit_from_memory(bytes.data(), static_cast<int>(bytes.size()));
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels, wide_pnm ? 0 : 3),
      stbi_image_free);
  if (!data) throw IOError(detail::concat("cannot decode ", format, " image '", name, "': ", stb_reason()));
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

Image decode_stb(const std::vector<uint8_t>& bytes, const std::string& name, const std::string& format,
                 const ImageLimits& limits) {
  int64_t header_w = 0, header_h = 0;
  if (header_size(bytes, format, &header_w, &header_h)) check_limits(header_w, header_h, name, limits);
  const ImageInfo info = stb_info(bytes, name, format);
  if (info.width <= 0 || info.height <= 0)
    throw IOError(detail::concat("image '", name, "' has an invalid size ", info.width, "x", info.height));
  check_limits(info.width, info.height, name, limits);
  if (format == "jpeg") check_jpeg_for_stb(bytes, name);
  if (format == "png") {
    const PngScan scan = check_png_like_pil(bytes, name);
    if (scan.needs_copy()) return stb_pixels(png_for_stb(bytes, scan), name, format);
  }
  return stb_pixels(bytes, name, format);
}

}  // namespace

const char* jpeg_decoder_name() {
#ifdef TL_HAVE_LIBJPEG
  return "libjpeg-turbo";
#else
  return "stb_image";
#endif
}

ImageInfo read_image_info(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  const std::string format = check_format(bytes, path);
#ifdef TL_HAVE_LIBJPEG
  if (format == "jpeg") return jpeg_info(bytes, path);
#endif
  return stb_info(bytes, path, format);
}

Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, const ImageLimits& limits) {
  const std::string format = check_format(bytes, name);
#ifdef TL_HAVE_LIBJPEG
  if (format == "jpeg") return decode_jpeg(bytes, name, limits);
#endif
  return decode_stb(bytes, name, format, limits);
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
