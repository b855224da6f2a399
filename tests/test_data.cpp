// Data pipeline tests: image decoding vs PIL, transforms vs torchvision (tests/torch_ref/fx_data.py), ImageFolder
// rules and errors, stratified splits, the synthetic generator, and the threaded loader (determinism, bad
// images, shutdown).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "io/dataset.h"
#include "io/image.h"
#include "io/loader.h"
#include "io/npy.h"
#include "io/synthetic.h"
#include "io/transforms.h"
#include "tl_testing.h"

#ifdef TL_HAVE_LIBJPEG
#include <csetjmp>
#include <cstdio>
#include <jpeglib.h>
#endif

using namespace tl;
using namespace tl::io;
using namespace tl::testing;
namespace fs = std::filesystem;

namespace {

const std::string kImages = std::string(TL_FIXTURE_DIR) + "/data_images/";
// JPEG decoded by libjpeg-turbo with PIL's settings (else the stb_image fallback build).
const bool kLibjpeg = std::string(jpeg_decoder_name()) == "libjpeg-turbo";
// ... and so JPEG pixels equal to PIL's, when this PIL decodes with libjpeg-turbo too (fx_image.py records it;
// a PIL built on IJG libjpeg 9 rounds differently).
bool jpeg_like_pil() { return kLibjpeg && fixture("image").at("pil_libjpeg_turbo").to_doubles().at(0) != 0; }

// A fresh, empty folder for one test.
std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "tl_data_" + name + "_" + std::to_string(getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
void write_all(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

Image image_from_hwc(const Tensor& t) {
  EXPECT_EQ(t.ndim(), 3);
  Image img(static_cast<int>(t.size(1)), static_cast<int>(t.size(0)));
  std::vector<double> v = t.to_doubles();
  for (size_t i = 0; i < v.size(); ++i) img.pixels[i] = static_cast<uint8_t>(v[i]);
  return img;
}

struct PixelDiff {
  int max = 0;
  double mean = 0;
  int64_t count = 0;  // pixels values that differ
};
PixelDiff diff(const Image& a, const Image& b) {
  PixelDiff d;
  if (a.width != b.width || a.height != b.height) return {999, 999, -1};
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const int e = std::abs(int(a.pixels[i]) - int(b.pixels[i]));
    d.max = std::max(d.max, e);
    d.mean += e;
    d.count += e != 0;
  }
  d.mean /= static_cast<double>(a.pixels.size());
  return d;
}
std::string dims(const Image& a) { return std::to_string(a.height) + "x" + std::to_string(a.width); }

// "<case>|<file>[|k]" names of the fixture starting with prefix.
std::vector<std::string> names_with(const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& n : fixture("data").names)
    if (n.rfind(prefix, 0) == 0) out.push_back(n);
  EXPECT_FALSE(out.empty()) << "no fixture entries " << prefix;
  return out;
}
std::string field(const std::string& name, int k) {
  size_t start = 0;
  for (int i = 0; i < k; ++i) start = name.find('|', start) + 1;
  return name.substr(start, name.find('|', start) - start);
}

void expect_io_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "no IOError; expected one containing '" << fragments.front() << "'";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    for (const std::string& f : fragments)
      EXPECT_NE(msg.find(f), std::string::npos) << "expected '" << f << "' in: " << msg;
  }
}

// RandomSource replaying the scripted draws of fx_data.py (its _TorchShim).
class ScriptedSource : public RandomSource {
 public:
  explicit ScriptedSource(std::vector<double> u) : u_(std::move(u)) {}
  float uniform(double lo, double hi) override {
    ++uniforms;
    return static_cast<float>(lo + take() * (hi - lo));
  }
  int64_t randint(int64_t lo, int64_t hi) override {
    ++randints;
    return lo + static_cast<int64_t>(std::floor(take() * static_cast<double>(hi - lo)));
  }
  int uniforms = 0, randints = 0;

 private:
  double take() { return u_.at(pos_++); }
  std::vector<double> u_;
  size_t pos_ = 0;
};

}  // namespace

// ------------------------------------------------------------------------------------------------------------
// Decoding

TEST(DataDecode, FormatsAndColourTypesMatchPIL) {
  int checked = 0;
  for (const std::string& name : names_with("decode|")) {
    const std::string file = field(name, 1);
    const Image ref = image_from_hwc(fixture("data").at(name));
    const Image ours = decode_image(kImages + file);
    ASSERT_EQ(dims(ours), dims(ref)) << file;
    const PixelDiff d = diff(ours, ref);
    const bool jpeg = file.size() > 4 && file.substr(file.size() - 4) == ".jpg";
    if (!jpeg || jpeg_like_pil()) {
      EXPECT_EQ(d.max, 0) << file << ": must decode exactly as PIL (" << jpeg_decoder_name() << ")";
    } else {
      // The fallback build (no libjpeg): stb_image and libjpeg-turbo (PIL) use different IDCT/upsampling/
      // colour-conversion rounding. Measured: max 3, mean < 0.1 grey levels (CMYK: max 1).
      EXPECT_LE(d.max, 4) << file;
      EXPECT_LE(d.mean, 0.25) << file;
    }
    std::cout << "  " << file << ": max diff " << d.max << ", mean " << d.mean << "\n";
    ++checked;
  }
  EXPECT_GE(checked, 17);
  ImageInfo info = read_image_info(kImages + "cmyk_120x80.jpg");
  EXPECT_EQ(info.channels, 4);
  EXPECT_EQ(info.format, "jpeg");
  info = read_image_info(kImages + "greyalpha_64x50.png");
  EXPECT_EQ(info.width, 64);
  EXPECT_EQ(info.height, 50);
  EXPECT_EQ(info.channels, 2);
}

TEST(DataDecode, BadFilesGiveClearErrors) {
  const std::string d = fresh_dir("badfiles");
  const std::string png = read_all(kImages + "rgb_97x61.png");
  const std::string jpg = read_all(kImages + "rgb_q90_420_333x250.jpg");

  expect_io_error([&] { decode_image(d + "/missing.jpg"); }, {d + "/missing.jpg", "cannot open", "No such file"});
  write_all(d + "/empty.png", "");
  expect_io_error([&] { decode_image(d + "/empty.png"); }, {d + "/empty.png", "empty file"});
  write_all(d + "/text.jpg", "hello, I am not an image\n");
  expect_io_error([&] { decode_image(d + "/text.jpg"); }, {d + "/text.jpg", "not an image file"});
  write_all(d + "/trunc.png", png.substr(0, png.size() / 2));
  expect_io_error([&] { decode_image(d + "/trunc.png"); }, {d + "/trunc.png", "corrupt", "IDAT chunk (cut short)"});
  // Cut inside the header of a zero-length IDAT chunk (stb_image would copy 0 bytes to a null pointer there).
  write_all(d + "/trunc_empty_idat.png", png.substr(0, 33) + std::string("\0\0\0\0IDAT", 8));
  expect_io_error([&] { decode_image(d + "/trunc_empty_idat.png"); }, {d + "/trunc_empty_idat.png", "cut short"});
  write_all(d + "/trunc.jpg", jpg.substr(0, jpg.size() * 2 / 3));
  expect_io_error([&] { decode_image(d + "/trunc.jpg"); }, {d + "/trunc.jpg", "truncated"});
  write_all(d + "/header_only.jpg", jpg.substr(0, 20));
  expect_io_error([&] { decode_image(d + "/header_only.jpg"); }, {d + "/header_only.jpg"});
  std::string corrupt = png;  // damage the IHDR chunk
  for (size_t i = 16; i < 24; ++i) corrupt[i] = '\xFF';
  write_all(d + "/corrupt.png", corrupt);
  expect_io_error([&] { decode_image(d + "/corrupt.png"); }, {d + "/corrupt.png"});
  write_all(d + "/scan.tif", std::string("II*\0", 4) + std::string(100, '\0'));
  expect_io_error([&] { decode_image(d + "/scan.tif"); }, {d + "/scan.tif", "tiff", "cannot decode"});
  fs::create_directories(d + "/folder.jpg");
  expect_io_error([&] { decode_image(d + "/folder.jpg"); }, {d + "/folder.jpg", "directory"});

  // CMYK without the Adobe marker: PIL reads every 4-channel JPEG with Adobe's inverted convention, and so does
  // libjpeg-turbo here (same pixels as with the marker); the stb_image fallback refuses rather than guess.
  std::string cmyk = read_all(kImages + "cmyk_120x80.jpg");
  size_t app14 = cmyk.find("\xFF\xEE");
  ASSERT_NE(app14, std::string::npos);
  const size_t len = (static_cast<unsigned char>(cmyk[app14 + 2]) << 8) | static_cast<unsigned char>(cmyk[app14 + 3]);
  write_all(d + "/cmyk_noadobe.jpg", cmyk.erase(app14, 2 + len));
  if (kLibjpeg)
    EXPECT_EQ(diff(decode_image(d + "/cmyk_noadobe.jpg"), decode_image(kImages + "cmyk_120x80.jpg")).count, 0);
  else
    expect_io_error([&] { decode_image(d + "/cmyk_noadobe.jpg"); }, {d + "/cmyk_noadobe.jpg", "CMYK", "Adobe"});

  // Size limits are checked from the header, before decoding.
  ImageLimits small;
  small.max_pixels = 1000;
  expect_io_error([&] { decode_image(kImages + "rgb_97x61.png", small); }, {"rgb_97x61.png", "61", "limit"});
  small = ImageLimits();
  small.max_side = 90;
  expect_io_error([&] { decode_image(kImages + "rgb_97x61.png", small); }, {"rgb_97x61.png", "limit"});
  std::string huge = png;  // IHDR says 40000 x 40000; only the header is read
  const unsigned char side[4] = {0x00, 0x00, 0x9C, 0x40};
  for (int i = 0; i < 4; ++i) huge[16 + i] = huge[20 + i] = static_cast<char>(side[i]);
  write_all(d + "/huge.png", huge);
  expect_io_error([&] { decode_image(d + "/huge.png"); }, {d + "/huge.png", "40000x40000", "limit"});
  std::string huge_jpg = jpg;  // the frame header says 40000 x 40000
  const size_t sof = huge_jpg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  for (size_t at : {sof + 5, sof + 7}) {
    huge_jpg[at] = static_cast<char>(0x9C);
    huge_jpg[at + 1] = static_cast<char>(0x40);
  }
  write_all(d + "/huge.jpg", huge_jpg);
  expect_io_error([&] { decode_image(d + "/huge.jpg"); }, {d + "/huge.jpg", "40000x40000", "limit"});
  fs::remove_all(d);
}

// Edge cases of tests/torch_ref/fx_image.py: subsampling, progressive, CMYK, EXIF orientation, 16-bit and
// low-bit PNG, gAMA, corrupt and truncated JPEGs. Where PIL decodes a file the pixels must be equal; where PIL
// refuses it (truncated), so must we.
TEST(DataDecode, EdgeCasesMatchPIL) {
  const io::TensorFile& fx = fixture("image");
  const std::string dir = std::string(TL_FIXTURE_DIR) + "/image_files/";
  int exact = 0, refused = 0;
  for (const std::string& name : fx.names) {
    if (name.rfind("pil_refuses|", 0) != 0) continue;
    const std::string file = field(name, 1);
    const bool jpeg = file.substr(file.size() - 4) == ".jpg";
    if (jpeg && !jpeg_like_pil()) continue;  // the stb_image fallback is covered by FormatsAndColourTypesMatchPIL
    if (file == "zlib_bomb_16x16.png") continue;  // PIL decodes it, see below
    if (fx.at(name).to_doubles().at(0) != 0) {
      expect_io_error([&] { decode_image(dir + file); }, {dir + file, jpeg ? "truncated" : "corrupt"});
      ++refused;
      continue;
    }
    const Image ref = image_from_hwc(fx.at("decode|" + file));
    const Image ours = decode_image(dir + file);
    ASSERT_EQ(dims(ours), dims(ref)) << file;
    const PixelDiff d = diff(ours, ref);
    EXPECT_EQ(d.count, 0) << file << ": " << d.count << " values differ from PIL, max " << d.max;
    ++exact;
  }
  if (jpeg_like_pil()) {
    EXPECT_EQ(exact, 24);
    EXPECT_EQ(refused, 6);  // truncated baseline and progressive JPEG, no end-of-image marker, 2 damaged PNGs,
                            // a PNG whose only IDAT chunk is empty
  }
  // EXIF orientation 6 is ignored, as torchvision's loader ignores it: stored 64 wide, 40 high, not rotated.
  const Image exif = decode_image(dir + "exif_orient6_64x40.jpg");
  EXPECT_EQ(exif.width, 64);
  EXPECT_EQ(exif.height, 40);
  // 16-bit grey is PIL mode "I": convert("RGB") clips (0, 1, 254, 255, 256 -> 0, 1, 254, 255, 255), no scaling.
  const Image g16 = decode_image(dir + "grey16_37x23.png");
  const uint8_t expect16[5] = {0, 1, 254, 255, 255};
  for (int x = 0; x < 5; ++x)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(g16.at(0, x)[c], expect16[x]) << "x " << x;
  EXPECT_EQ(read_image_info(dir + "cmyk_53x29.jpg").channels, 4);
  // A 16x16 PNG whose image data inflates to 24 MB: PIL stops reading when its rows are full and decodes it;
  // tlengine refuses it (the stream must fit the header's size).
  EXPECT_EQ(fx.at("pil_refuses|zlib_bomb_16x16.png").to_doubles().at(0), 0);
  expect_io_error([&] { decode_image(dir + "zlib_bomb_16x16.png"); }, {"zlib_bomb_16x16.png", "16x16", "zlib bomb"});
}

// A header claiming a huge image (a decompression bomb, or a corrupt header) is refused from the header, before
// a pixel buffer is allocated: the 100,000 x 100,000 PNG below is 69 bytes; a JPEG header can say 65,500 a side.
TEST(DataDecode, DecompressionBombHeadersRefused) {
  const std::string d = fresh_dir("bomb");
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char((v >> 16) & 0xFF), char((v >> 8) & 0xFF), char(v & 0xFF)};
  };
  auto chunk = [&](const std::string& kind, const std::string& data) {
    std::string crc_in = kind + data;
    uint32_t crc = 0xFFFFFFFFu;  // PNG's CRC-32
    for (unsigned char ch : crc_in) {
      crc ^= ch;
      for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return be32(static_cast<uint32_t>(data.size())) + crc_in + be32(crc ^ 0xFFFFFFFFu);
  };
  const std::string ihdr = be32(100000) + be32(100000) + std::string("\x08\x02\x00\x00\x00", 5);
  const std::string idat("\x78\x9C\x03\x00\x00\x00\x00\x01", 8);  // a (wrong but tiny) zlib stream
  const std::string png = std::string("\x89PNG\r\n\x1A\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", idat) + chunk("IEND", "");
  EXPECT_LT(png.size(), 100u);
  write_all(d + "/bomb.png", png);
  const auto t0 = std::chrono::steady_clock::now();
  expect_io_error([&] { decode_image(d + "/bomb.png"); },
                  {d + "/bomb.png", "100000x100000", "limit of 16384 pixels a side", "decompression bomb",
                   "nothing was decoded"});
  std::string jpg = read_all(kImages + "rgb_q90_420_333x250.jpg");
  const size_t sof = jpg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  for (size_t at : {sof + 5, sof + 7}) {  // 65500 = 0xFFDC, the most libjpeg accepts
    jpg[at] = static_cast<char>(0xFF);
    jpg[at + 1] = static_cast<char>(0xDC);
  }
  write_all(d + "/bomb.jpg", jpg);
  expect_io_error([&] { decode_image(d + "/bomb.jpg"); }, {d + "/bomb.jpg", "65500x65500", "decompression bomb"});
  // Both refusals come from the header: no 30 GB / 12 GB buffer was filled.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  fs::remove_all(d);
}

#ifdef TL_HAVE_LIBJPEG
namespace {
// JPEGs that PIL cannot write (YCCK, arithmetic coding, restart markers, RGB, CMYK without an Adobe marker),
// written with libjpeg's encoder for DataDecode.LibjpegWrittenJpegsMatchPIL.
struct JpegSpec {
  std::string name;
  J_COLOR_SPACE in_space = JCS_RGB;      // JCS_RGB (3 channels given) or JCS_CMYK (4)
  J_COLOR_SPACE file_space = JCS_YCbCr;  // what the file stores: YCbCr, RGB, CMYK or YCCK
  int h_samp = 2, v_samp = 2;            // of the first (and a CMYK/YCCK file's K) component: 2x2 = 4:2:0
  bool arithmetic = false, progressive = false, adobe_marker = true;
  int restart_mcus = 0;
};

struct JpegWriter {
  jpeg_compress_struct c{};
  struct {
    jpeg_error_mgr pub;
    std::jmp_buf jump;
  } err{};
  FILE* f = nullptr;
  ~JpegWriter() {
    jpeg_destroy_compress(&c);
    if (f) std::fclose(f);
  }
};

[[noreturn]] void jpeg_writer_fail(j_common_ptr c) {
  std::longjmp(reinterpret_cast<decltype(JpegWriter::err)*>(c->err)->jump, 1);
}

bool write_jpeg(JpegWriter& w, const std::vector<uint8_t>& pixels, int width, int height, const JpegSpec& s) {
  w.c.err = jpeg_std_error(&w.err.pub);
  w.err.pub.error_exit = jpeg_writer_fail;
  if (setjmp(w.err.jump)) return false;
  jpeg_create_compress(&w.c);
  jpeg_stdio_dest(&w.c, w.f);
  w.c.image_width = width;
  w.c.image_height = height;
  w.c.input_components = s.in_space == JCS_CMYK ? 4 : 3;
  w.c.in_color_space = s.in_space;
  jpeg_set_defaults(&w.c);
  jpeg_set_colorspace(&w.c, s.file_space);
  jpeg_set_quality(&w.c, 90, TRUE);
  for (int i = 0; i < w.c.num_components; ++i) {
    const bool full = i == 0 || i == 3;
    w.c.comp_info[i].h_samp_factor = full ? s.h_samp : 1;
    w.c.comp_info[i].v_samp_factor = full ? s.v_samp : 1;
  }
  w.c.arith_code = s.arithmetic ? TRUE : FALSE;
  w.c.restart_interval = static_cast<unsigned>(s.restart_mcus);
  w.c.write_Adobe_marker = s.adobe_marker ? w.c.write_Adobe_marker : FALSE;
  if (s.progressive) jpeg_simple_progression(&w.c);
  jpeg_start_compress(&w.c, TRUE);
  while (w.c.next_scanline < w.c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(pixels.data()) + size_t(w.c.next_scanline) * width * w.c.input_components;
    jpeg_write_scanlines(&w.c, &row, 1);
  }
  jpeg_finish_compress(&w.c);
  return true;
}

// A smooth, photo-like image with a sharp-edged block and noise, `channels` per pixel.
std::vector<uint8_t> test_pixels(int w, int h, int channels, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0, 12);
  std::vector<uint8_t> p(size_t(w) * h * channels);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c) {
        double v = 128 + 100 * std::sin(0.05 * (c + 1) * x + 0.09 * (3 - c) * y + c);
        if (y < h / 2 && x < w / 3) v = 40 + 60 * c;
        p[(size_t(y) * w + x) * channels + c] = static_cast<uint8_t>(std::clamp(std::lround(v + noise(rng)), 0L, 255L));
      }
  return p;
}
}  // namespace

TEST(DataDecode, LibjpegWrittenJpegsMatchPIL) {
  if (!jpeg_like_pil()) GTEST_SKIP() << "this PIL does not decode JPEG with libjpeg-turbo";
  const std::string d = test_dir("image_libjpeg");
  std::vector<JpegSpec> specs;
  auto add = [&](const std::string& name, auto&& set) {
    JpegSpec s;
    s.name = name;
    set(s);
    specs.push_back(s);
  };
  add("ycck_420", [](JpegSpec& s) { s.in_space = JCS_CMYK; s.file_space = JCS_YCCK; });
  add("ycck_444_progressive", [](JpegSpec& s) {
    s.in_space = JCS_CMYK; s.file_space = JCS_YCCK; s.h_samp = s.v_samp = 1; s.progressive = true;
  });
  add("cmyk_no_adobe", [](JpegSpec& s) { s.in_space = JCS_CMYK; s.file_space = JCS_CMYK; s.adobe_marker = false; });
  add("rgb_adobe", [](JpegSpec& s) { s.file_space = JCS_RGB; s.h_samp = s.v_samp = 1; });
  add("arith_420", [](JpegSpec& s) { s.arithmetic = true; });
  add("arith_422_progressive", [](JpegSpec& s) { s.arithmetic = true; s.progressive = true; s.v_samp = 1; });
  add("arith_restart3", [](JpegSpec& s) { s.arithmetic = true; s.restart_mcus = 3; });
  add("restart1_422", [](JpegSpec& s) { s.restart_mcus = 1; s.v_samp = 1; });
  add("restart7_420", [](JpegSpec& s) { s.restart_mcus = 7; });
  add("restart2_444_progressive", [](JpegSpec& s) { s.restart_mcus = 2; s.h_samp = s.v_samp = 1; s.progressive = true; });
  add("sub_411", [](JpegSpec& s) { s.h_samp = 4; s.v_samp = 1; });
  add("sub_440", [](JpegSpec& s) { s.h_samp = 1; s.v_samp = 2; });
  std::string args;
  for (size_t i = 0; i < specs.size(); ++i) {
    const JpegSpec& s = specs[i];
    const int w = 45 + 7 * int(i), h = 31 + 5 * int(i);  // odd sizes: partial MCUs at the right and bottom
    JpegWriter writer;
    writer.f = std::fopen((d + "/" + s.name + ".jpg").c_str(), "wb");
    ASSERT_NE(writer.f, nullptr);
    ASSERT_TRUE(write_jpeg(writer, test_pixels(w, h, s.in_space == JCS_CMYK ? 4 : 3, uint32_t(i)), w, h, s))
        << s.name << ": " << writer.err.pub.jpeg_message_table[writer.err.pub.msg_code];
    args += " " + d + "/" + s.name + ".jpg " + d + "/" + s.name + ".npy";
  }
  run_torch_script("pil_decode.py", args);
  for (const JpegSpec& s : specs) {
    const Image ref = image_from_hwc(read_npy(d + "/" + s.name + ".npy"));
    const Image ours = decode_image(d + "/" + s.name + ".jpg");
    ASSERT_EQ(dims(ours), dims(ref)) << s.name;
    const PixelDiff diffs = diff(ours, ref);
    EXPECT_EQ(diffs.count, 0) << s.name << ": " << diffs.count << " values differ from PIL, max " << diffs.max;
  }
  EXPECT_EQ(read_image_info(d + "/ycck_420.jpg").channels, 4);
  EXPECT_EQ(read_image_info(d + "/arith_420.jpg").width, 45 + 7 * 4);
}

// A progressive JPEG whose last scan is repeated 1,100 times (libjpeg only warns about the bogus progression):
// a CPU-exhaustion attack on PIL, refused here after 1,000 scans.
TEST(DataDecode, JpegWithThousandsOfScansRefused) {
  const std::string d = fresh_dir("scans");
  const std::string jpg = read_all(std::string(TL_FIXTURE_DIR) + "/image_files/progressive_422_61x43.jpg");
  const size_t last_sos = jpg.rfind("\xFF\xDA");
  ASSERT_NE(last_sos, std::string::npos);
  std::string scans;
  for (int i = 0; i < 1100; ++i) scans += jpg.substr(last_sos, jpg.size() - 2 - last_sos);
  write_all(d + "/scans.jpg", jpg.substr(0, jpg.size() - 2) + scans + "\xFF\xD9");
  expect_io_error([&] { decode_image(d + "/scans.jpg"); }, {d + "/scans.jpg", "more than 1000 scans"});
  fs::remove_all(d);
}
#endif  // TL_HAVE_LIBJPEG

// ------------------------------------------------------------------------------------------------------------
// Transforms vs torchvision (same images, same parameters)

TEST(DataTransforms, ResizeMatchesPILBilinear) {
  Rng rng(0);
  const std::map<std::string, std::shared_ptr<Transform>> cases = {
      {"resize256", std::make_shared<Resize>(256)},
      {"resize100", std::make_shared<Resize>(100)},
      {"resize224x224", std::make_shared<Resize>(224, 224)},
      {"resize150x40", std::make_shared<Resize>(150, 40)}};
  int checked = 0;
  for (const auto& [prefix, t] : cases) {
    for (const std::string& name : names_with(prefix + "|")) {
      const std::string file = field(name, 1);
      const Image src = decode_image(kImages + file);
      const Image ref = image_from_hwc(fixture("data").at(name));
      const Image ours = t->apply(src, rng);
      ASSERT_EQ(dims(ours), dims(ref)) << name;
      const PixelDiff d = diff(ours, ref);
      EXPECT_LE(d.max, 1) << name;  // the contract; the implementation follows Pillow exactly
      EXPECT_EQ(d.count, 0) << name << ": " << d.count << " values differ (max " << d.max << ")";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 24);
}

TEST(DataTransforms, CropFlipAndNormalizeMatchTorchvision) {
  Rng rng(0);
  int checked = 0;
  for (const auto& [prefix, t] : std::map<std::string, std::shared_ptr<Transform>>{
           {"centercrop224", std::make_shared<CenterCrop>(224)},
           {"centercrop101x67", std::make_shared<CenterCrop>(101, 67)}}) {
    for (const std::string& name : names_with(prefix + "|")) {
      const Image ours = t->apply(decode_image(kImages + field(name, 1)), rng);
      const Image ref = image_from_hwc(fixture("data").at(name));
      ASSERT_EQ(dims(ours), dims(ref)) << name;
      EXPECT_EQ(diff(ours, ref).count, 0) << name;
      ++checked;
    }
  }
  for (const std::string& name : names_with("hflip|")) {
    const Image ours = hflip(decode_image(kImages + field(name, 1)));
    EXPECT_EQ(diff(ours, image_from_hwc(fixture("data").at(name))).count, 0) << name;
    ++checked;
  }
  // ToTensor + Normalize alone, and the whole val pipeline Resize(256) + CenterCrop(224) + ToTensor + Normalize.
  const Compose val = eval_transform(256, 224);
  const Compose plain({});
  for (const std::string prefix : {"totensor|", "val|"}) {
    for (const std::string& name : names_with(prefix)) {
      const Image src = decode_image(kImages + field(name, 1));
      const Tensor& ref = fixture("data").at(name);
      Tensor ours = Tensor::empty(ref.shape());
      (prefix == std::string("val|") ? val : plain)(src, rng, ours.data_as<float>());
      expect_close(ours, ref, 1e-7, name);  // bit-exact in practice
      ++checked;
    }
  }
  EXPECT_EQ(checked, 30);
  EXPECT_EQ(val.output_size(), (Size2{224, 224}));
}

TEST(DataTransforms, ResizedCropMatchesTorchvision) {
  int checked = 0;
  for (const std::string& name : names_with("resizedcrop|")) {
    const std::string file = field(name, 1);
    const std::vector<double> p =
        fixture("data").at("resizedcrop_params|" + file + "|" + field(name, 2)).to_doubles();
    const CropBox box{int(p[0]), int(p[1]), int(p[2]), int(p[3])};
    const Image ours = resized_crop(decode_image(kImages + file), box, Size2{224, 224});
    const Image ref = image_from_hwc(fixture("data").at(name));
    ASSERT_EQ(dims(ours), dims(ref)) << name;
    const PixelDiff d = diff(ours, ref);
    EXPECT_EQ(d.count, 0) << name << " box (" << box.top << ", " << box.left << ", " << box.height << ", "
                          << box.width << "): max diff " << d.max;
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

// A JPEG file through the whole eval pipeline (decode, Resize(256), CenterCrop(224), ToTensor, Normalize) gives
// torchvision's input tensor; bit-exact now that JPEG pixels equal PIL's (the fallback build is a few levels off).
TEST(DataTransforms, JpegThroughTheValPipelineMatchesTorchvision) {
  if (!jpeg_like_pil()) GTEST_SKIP() << "JPEG not decoded by libjpeg-turbo here, or not in PIL";
  const Tensor& ref = fixture("image").at("val|photo_500x375.jpg");
  const Image src = decode_image(std::string(TL_FIXTURE_DIR) + "/image_files/photo_500x375.jpg");
  EXPECT_EQ(dims(src), "375x500");
  Tensor ours = Tensor::empty(ref.shape());
  Rng rng(0);
  eval_transform(256, 224)(src, rng, ours.data_as<float>());
  expect_close(ours, ref, 1e-7, "val pipeline of a JPEG");
}

TEST(DataTransforms, RandomResizedCropSamplesLikeTorchvision) {
  const io::TensorFile& f = fixture("data");
  const std::vector<double> draws = f.at("rrc.draws").to_doubles(), hw = f.at("rrc.hw").to_doubles(),
                            scale = f.at("rrc.scale").to_doubles(), ratio = f.at("rrc.ratio").to_doubles(),
                            expected = f.at("rrc.out").to_doubles();
  const int64_t n = f.at("rrc.hw").size(0), per = f.at("rrc.draws").size(1);
  int fallbacks = 0, mismatches = 0;
  for (int64_t k = 0; k < n; ++k) {
    ScriptedSource src(std::vector<double>(draws.begin() + k * per, draws.begin() + (k + 1) * per));
    const int h = int(hw[2 * k]), w = int(hw[2 * k + 1]);
    const CropBox b = random_resized_crop_params(h, w, {scale[2 * k], scale[2 * k + 1]},
                                                 {ratio[2 * k], ratio[2 * k + 1]}, src);
    const std::vector<int> got = {b.top, b.left, b.height, b.width};
    const std::vector<int> want = {int(expected[4 * k]), int(expected[4 * k + 1]), int(expected[4 * k + 2]),
                                   int(expected[4 * k + 3])};
    if (got != want && ++mismatches <= 5)
      ADD_FAILURE() << "case " << k << " (" << h << "x" << w << "): got (" << got[0] << ", " << got[1] << ", "
                    << got[2] << ", " << got[3] << "), torchvision (" << want[0] << ", " << want[1] << ", "
                    << want[2] << ", " << want[3] << ")";
    if (src.randints == 0) {
      ++fallbacks;
      EXPECT_EQ(src.uniforms, 20) << "the fallback comes after 10 attempts";
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(fallbacks, 20) << "the fixture must exercise the centre-crop fallback";
  EXPECT_LE(fallbacks, n - 200);

  // With our own generator: always a valid box, and the transform gives the requested size.
  Rng rng(5);
  const RandomResizedCrop rrc(224);
  for (int k = 0; k < 2000; ++k) {
    const int h = 1 + int(rng.randint(0, 500)), w = 1 + int(rng.randint(0, 500));
    const CropBox b = rrc.sample(h, w, rng);
    ASSERT_TRUE(b.top >= 0 && b.left >= 0 && b.height > 0 && b.width > 0 && b.top + b.height <= h &&
                b.left + b.width <= w)
        << h << "x" << w;
  }
  const Image out = rrc.apply(decode_image(kImages + "rgb_97x61.png"), rng);
  EXPECT_EQ(dims(out), "224x224");
}

TEST(DataTransforms, RngFlipAndComposeBasics) {
  Rng a(7, 1, 2), b(7, 1, 2), c(7, 1, 3), d(8, 1, 2);
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next_u64();
    EXPECT_EQ(x, b.next_u64());
    EXPECT_NE(x, c.next_u64());
    EXPECT_NE(x, d.next_u64());
  }
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const float u = a.uniform(2.0, 3.0);
    ASSERT_TRUE(u >= 2.0f && u < 3.0f);
    sum += u;
    const int64_t r = a.randint(-3, 4);
    ASSERT_TRUE(r >= -3 && r < 4);
  }
  EXPECT_NEAR(sum / 10000, 2.5, 0.02);

  const Image img = decode_image(kImages + "rgb_97x61.png");
  EXPECT_EQ(diff(RandomHorizontalFlip(1.0).apply(img, a), hflip(img)).count, 0);
  EXPECT_EQ(diff(RandomHorizontalFlip(0.0).apply(img, a), img).count, 0);
  int flips = 0;
  for (int i = 0; i < 400; ++i) flips += diff(RandomHorizontalFlip(0.5).apply(img, a), img).count != 0;
  EXPECT_NEAR(flips, 200, 50);

  EXPECT_EQ(train_transform(224).output_size(), (Size2{224, 224}));
  EXPECT_EQ(eval_resize_transform(224).output_size(), (Size2{224, 224}));
  EXPECT_FALSE(Compose({std::make_shared<Resize>(256)}).output_size().has_value());
  EXPECT_EQ(resize_shorter_side_size(389, 517, 256), (Size2{256, 340}));  // int(256 * 517 / 389) = 340
  EXPECT_EQ(resize_shorter_side_size(1001, 229, 256), (Size2{1119, 256}));
  EXPECT_THROW(Resize(0), ValueError);
  EXPECT_THROW(RandomResizedCrop(224, {0.5, 0.1}), ValueError);
  EXPECT_THROW(Compose({}, kImageNetMean, {1.f, 0.f, 1.f}), ValueError);
}

// ------------------------------------------------------------------------------------------------------------
// ImageFolder

TEST(DataFolder, SamplesAndClassesMatchTorchvisionImageFolder) {
  const io::TensorFile& f = fixture("data");
  auto text = [&](const std::string& name) {
    std::string s;
    for (double v : f.at(name).to_doubles()) s += static_cast<char>(v);
    return s;
  };
  const std::string root = std::string(TL_FIXTURE_DIR) + "/data_tree";
  const ImageFolder folder = scan_image_folder(root);
  std::string classes, paths;
  for (const std::string& c : folder.classes) classes += (classes.empty() ? "" : "\n") + c;
  for (const Sample& s : folder.samples) paths += (paths.empty() ? "" : "\n") + s.path.substr(root.size() + 1);
  EXPECT_EQ(classes, text("tree.classes"));
  EXPECT_EQ(paths, text("tree.paths"));
  std::vector<double> labels;
  for (const Sample& s : folder.samples) labels.push_back(s.label);
  EXPECT_EQ(labels, f.at("tree.labels").to_doubles());
  EXPECT_EQ(folder.class_counts(), (std::vector<int64_t>{3, 3, 6}));
}

TEST(DataFolder, HiddenEntriesSkippedAndClearErrors) {
  const std::string d = fresh_dir("folder");
  auto touch = [&](const std::string& rel) {
    fs::create_directories(fs::path(d + "/" + rel).parent_path());
    write_all(d + "/" + rel, "x");
  };
  touch("data/train/ants/a.jpg");
  touch("data/train/ants/.hidden.jpg");
  touch("data/train/ants/.cache/b.jpg");
  touch("data/train/bees/c.PNG");
  touch("data/train/.ipynb_checkpoints/d.jpg");
  touch("data/val/ants/e.jpg");
  touch("data/val/bees/f.jpg");
  DataSplits s = load_splits(d + "/data");
  EXPECT_EQ(s.classes, (std::vector<std::string>{"ants", "bees"}));
  ASSERT_EQ(s.train.samples.size(), 2u);
  EXPECT_EQ(s.train.samples[0].path, d + "/data/train/ants/a.jpg");
  EXPECT_EQ(s.train.samples[1].label, 1);
  EXPECT_EQ(s.val.samples.size(), 2u);
  EXPECT_NE(s.description.find("2 classes"), std::string::npos) << s.description;

  expect_io_error([&] { load_splits(d + "/nope"); }, {d + "/nope", "does not exist"});
  expect_io_error([&] { scan_image_folder(d + "/data/train/ants/a.jpg"); }, {"not a folder"});
  fs::create_directories(d + "/flat");
  touch("flat/loose.jpg");
  expect_io_error([&] { scan_image_folder(d + "/flat"); }, {d + "/flat", "no class folders"});
  touch("emptycls/full/x.jpg");
  touch("emptycls/notes/readme.txt");
  fs::create_directories(d + "/emptycls/void");
  expect_io_error([&] { scan_image_folder(d + "/emptycls"); }, {"'notes'", "'void'", "no image files"});
  touch("data/val/wasps/g.jpg");
  touch("data/train/moths/h.jpg");
  expect_io_error([&] { load_splits(d + "/data"); }, {"differ", "only in train/: 'moths'", "only in val/: 'wasps'"});
  EXPECT_THROW(load_splits(d + "/data", 0.2), ValueError);  // val/ exists and a fraction is given
  touch("noval/train/ants/a.jpg");
  expect_io_error([&] { load_splits(d + "/noval"); }, {"no val/ folder", "--val-split"});
  fs::remove_all(d);
}

TEST(DataFolder, StratifiedSplitIsSeededAndKeepsEveryClass) {
  ImageFolder all;
  all.root = "/r";
  all.classes = {"a", "b", "c", "d"};
  const int counts[] = {10, 3, 1, 57};
  for (int c = 0; c < 4; ++c)
    for (int i = 0; i < counts[c]; ++i) all.samples.push_back({"/r/" + all.classes[c] + "/" + std::to_string(i), c});
  auto [train, val] = stratified_split(all, 0.2, 11);
  EXPECT_EQ(val.class_counts(), (std::vector<int64_t>{2, 1, 0, 11}));
  EXPECT_EQ(train.class_counts(), (std::vector<int64_t>{8, 2, 1, 46}));
  std::set<std::string> seen;
  for (const auto* part : {&train, &val}) {
    for (const Sample& s : part->samples) EXPECT_TRUE(seen.insert(s.path).second) << "in both: " << s.path;
    for (size_t i = 1; i < part->samples.size(); ++i) {  // kept in folder order
      const auto pos = [&](const Sample& s) {
        return std::find_if(all.samples.begin(), all.samples.end(), [&](const Sample& x) { return x.path == s.path; });
      };
      EXPECT_LT(pos(part->samples[i - 1]), pos(part->samples[i]));
    }
  }
  EXPECT_EQ(seen.size(), all.samples.size());
  auto [train2, val2] = stratified_split(all, 0.2, 11);
  auto [train3, val3] = stratified_split(all, 0.2, 12);
  auto paths = [](const ImageFolder& f) {
    std::vector<std::string> p;
    for (const Sample& s : f.samples) p.push_back(s.path);
    return p;
  };
  EXPECT_EQ(paths(val), paths(val2));
  EXPECT_NE(paths(val), paths(val3));
  EXPECT_THROW(stratified_split(all, 1.0, 0), ValueError);
  EXPECT_THROW(stratified_split(all, 0.0, 0), ValueError);

  // Through load_splits, from a folder without val/.
  const std::string d = fresh_dir("split");
  SyntheticOptions o;
  o.num_classes = 3;
  o.train_per_class = 5;
  o.val_per_class = 0;
  o.min_side = o.max_side = 16;
  write_synthetic_image_folder(d, o);
  DataSplits s = load_splits(d, 0.4, 3);
  EXPECT_EQ(s.val.class_counts(), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(s.train.class_counts(), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_NE(s.description.find("0.4 of each class"), std::string::npos) << s.description;
  fs::remove_all(d);
}

// ------------------------------------------------------------------------------------------------------------
// Synthetic data

TEST(DataSynthetic, WritesADecodableSeededImageFolder) {
  const std::string d1 = fresh_dir("syn1"), d2 = fresh_dir("syn2");
  SyntheticOptions o;
  o.num_classes = 10;
  o.train_per_class = 3;
  o.val_per_class = 2;
  o.seed = 4;
  const std::vector<std::string> classes = write_synthetic_image_folder(d1, o);
  write_synthetic_image_folder(d2, o);
  EXPECT_EQ(classes.size(), 10u);
  EXPECT_EQ(classes[0], "00_hstripes");
  EXPECT_EQ(classes[9], "09_vstripes2");
  DataSplits s = load_splits(d1);
  EXPECT_EQ(s.classes, classes);
  EXPECT_EQ(s.train.samples.size(), 30u);
  EXPECT_EQ(s.val.samples.size(), 20u);
  int jpg = 0, png = 0;
  for (const Sample& smp : s.train.samples) {
    const Image img = decode_image(smp.path);
    EXPECT_TRUE(img.width >= o.min_side && img.width <= o.max_side && img.height >= o.min_side &&
                img.height <= o.max_side);
    (smp.path.substr(smp.path.size() - 3) == "jpg" ? jpg : png)++;
    EXPECT_EQ(read_all(smp.path), read_all(d2 + smp.path.substr(d1.size()))) << "not reproducible: " << smp.path;
  }
  EXPECT_GT(jpg, 0);
  EXPECT_GT(png, 0);
  // Classes differ in structure, not only colour: horizontal stripes vary down a column, vertical ones along a row.
  const Image h = synthetic_image(0, 64, 64, 1), v = synthetic_image(1, 64, 64, 1);
  auto variation = [](const Image& img, bool along_row) {
    double s = 0;
    for (int i = 1; i < 64; ++i)
      for (int j = 0; j < 64; ++j) {
        const uint8_t* a = along_row ? img.at(j, i) : img.at(i, j);
        const uint8_t* b = along_row ? img.at(j, i - 1) : img.at(i - 1, j);
        s += std::abs(int(a[0]) - int(b[0])) + std::abs(int(a[1]) - int(b[1])) + std::abs(int(a[2]) - int(b[2]));
      }
    return s;
  };
  EXPECT_GT(variation(h, false), 1.5 * variation(h, true));
  EXPECT_GT(variation(v, true), 1.5 * variation(v, false));
  fs::remove_all(d1);
  fs::remove_all(d2);
}

// ------------------------------------------------------------------------------------------------------------
// Loader

namespace {
struct EpochData {
  std::vector<std::vector<float>> images;
  std::vector<std::vector<int32_t>> labels;
  std::vector<std::vector<int64_t>> samples;
};
EpochData run_epoch(DataLoader& loader, int64_t epoch) {
  EpochData e;
  loader.start_epoch(epoch);
  while (const Batch* b = loader.next()) {
    const size_t n = static_cast<size_t>(b->size) * 3 * b->height * b->width;
    e.images.emplace_back(b->images, b->images + n);
    e.labels.emplace_back(b->labels, b->labels + b->size);
    e.samples.emplace_back(b->samples, b->samples + b->size);
  }
  return e;
}
std::string synthetic_set(const std::string& name, int classes, int per_class) {
  const std::string d = fresh_dir(name);
  SyntheticOptions o;
  o.num_classes = classes;
  o.train_per_class = per_class;
  o.val_per_class = 0;
  o.min_side = 40;
  o.max_side = 90;
  write_synthetic_image_folder(d, o);
  return d;
}
}  // namespace

TEST(DataLoader, SameBatchesWithOneAndFourThreads) {
  const std::string d = synthetic_set("det", 3, 7);  // 21 images
  const ImageFolder folder = scan_image_folder(d + "/train");
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = true;
  o.seed = 9;
  o.prefetch = 2;
  o.num_workers = 1;
  DataLoader one(folder.samples, train_transform(32), o);
  o.num_workers = 4;
  o.prefetch = 3;
  DataLoader four(folder.samples, train_transform(32), o);
  EXPECT_EQ(one.batches_per_epoch(), 6);
  const EpochData a0 = run_epoch(one, 0), b0 = run_epoch(four, 0), a1 = run_epoch(one, 1), b1 = run_epoch(four, 1);
  ASSERT_EQ(a0.images.size(), 6u);
  EXPECT_EQ(a0.labels.back().size(), 1u);  // 21 = 5 * 4 + 1
  EXPECT_TRUE(a0.images == b0.images && a0.labels == b0.labels && a0.samples == b0.samples);
  EXPECT_TRUE(a1.images == b1.images && a1.labels == b1.labels && a1.samples == b1.samples);
  EXPECT_NE(a0.samples, a1.samples) << "each epoch has its own order";
  EXPECT_EQ(run_epoch(four, 0).images, a0.images) << "an epoch can be replayed";
  std::set<int64_t> seen;
  for (const auto& batch : a0.samples) seen.insert(batch.begin(), batch.end());
  EXPECT_EQ(seen.size(), 21u) << "every sample exactly once per epoch";
  for (size_t b = 0; b < a0.samples.size(); ++b)
    for (size_t r = 0; r < a0.samples[b].size(); ++r)
      EXPECT_EQ(a0.labels[b][r], folder.samples[static_cast<size_t>(a0.samples[b][r])].label);

  // The loader writes exactly what the pipeline makes of each sample with its (seed, epoch, index) generator.
  const Compose t = train_transform(32);
  std::vector<float> direct(3 * 32 * 32);
  const int64_t id = a1.samples[2][1];
  Rng rng(9, 1, static_cast<uint64_t>(id));
  t(decode_image(folder.samples[static_cast<size_t>(id)].path), rng, direct.data());
  EXPECT_TRUE(std::equal(direct.begin(), direct.end(), a1.images[2].begin() + 3 * 32 * 32));

  // Val: no shuffling, folder order, deterministic transform.
  o.shuffle = false;
  DataLoader val(folder.samples, eval_transform(40, 32), o);
  const EpochData v0 = run_epoch(val, 0), v1 = run_epoch(val, 1);
  EXPECT_EQ(v0.images, v1.images);
  EXPECT_EQ(v0.samples[0], (std::vector<int64_t>{0, 1, 2, 3}));
  fs::remove_all(d);
}

// Decode once: with the decoded-image cache, every epoch gives exactly the batches of decoding every time (random
// crops and flips included), files are read only in the first epoch, and a budget too small for all keeps what fits.
TEST(DataLoader, DecodedImageCacheGivesTheSamePixels) {
  const std::string d = synthetic_set("decode_once", 3, 7);  // 21 images
  const ImageFolder folder = scan_image_folder(d + "/train");
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = true;
  o.seed = 3;
  o.num_workers = 2;
  DataLoader plain(folder.samples, train_transform(32), o);
  o.image_cache_bytes = int64_t{1} << 30;
  DataLoader cached(folder.samples, train_transform(32), o);
  const EpochData p0 = run_epoch(plain, 0), c0 = run_epoch(cached, 0);
  EXPECT_EQ(cached.cached_images(), 21);
  int64_t bytes = 0;
  for (const Sample& s : folder.samples) {
    const ImageInfo info = read_image_info(s.path);
    bytes += int64_t{3} * info.width * info.height;
  }
  EXPECT_EQ(cached.cached_bytes(), bytes);
  // Later epochs come from memory: they still work with the files gone, and equal decoding every time.
  const EpochData p1 = run_epoch(plain, 1), p2 = run_epoch(plain, 2);
  fs::remove_all(d);
  const EpochData c1 = run_epoch(cached, 1), c2 = run_epoch(cached, 2);
  EXPECT_TRUE(p0.images == c0.images && p0.samples == c0.samples);
  EXPECT_TRUE(p1.images == c1.images && p1.samples == c1.samples);
  EXPECT_TRUE(p2.images == c2.images && p2.labels == c2.labels);
  EXPECT_NE(p1.images, p2.images) << "random crops differ between epochs";

  // A budget for about half the images: what fits is kept, the rest decoded every time, same batches.
  const std::string d2 = synthetic_set("decode_once_budget", 3, 7);
  const ImageFolder f2 = scan_image_folder(d2 + "/train");
  o.image_cache_bytes = bytes / 2;
  DataLoader partial(f2.samples, train_transform(32), o);
  o.image_cache_bytes = 0;
  DataLoader plain2(f2.samples, train_transform(32), o);
  EXPECT_EQ(run_epoch(partial, 0).images, run_epoch(plain2, 0).images);
  EXPECT_GT(partial.cached_images(), 0);
  EXPECT_LT(partial.cached_images(), 21);
  EXPECT_LE(partial.cached_bytes(), bytes / 2);
  EXPECT_EQ(run_epoch(partial, 1).images, run_epoch(plain2, 1).images);
  fs::remove_all(d2);

  EXPECT_EQ(parse_image_cache_bytes("off"), 0);
  EXPECT_EQ(parse_image_cache_bytes("1.5"), int64_t{3} << 29);
  EXPECT_GT(parse_image_cache_bytes("auto"), 0);
  EXPECT_THROW(parse_image_cache_bytes("lots"), ValueError);
}

TEST(DataLoader, DropLastAndOptions) {
  const std::string d = synthetic_set("drop", 2, 5);  // 10 images
  const ImageFolder folder = scan_image_folder(d + "/train");
  LoaderOptions o;
  o.batch_size = 4;
  o.drop_last = true;
  o.num_workers = 2;
  DataLoader loader(folder.samples, eval_resize_transform(24), o);
  EXPECT_EQ(loader.batches_per_epoch(), 2);
  const EpochData e = run_epoch(loader, 0);
  ASSERT_EQ(e.labels.size(), 2u);
  EXPECT_EQ(e.labels[1].size(), 4u);
  EXPECT_THROW(DataLoader(folder.samples, Compose({std::make_shared<Resize>(32)}), o), ValueError);
  o.batch_size = 0;
  EXPECT_THROW(DataLoader(folder.samples, eval_resize_transform(24), o), ValueError);
  EXPECT_EQ(parse_on_bad_image("skip"), OnBadImage::Skip);
  EXPECT_THROW(parse_on_bad_image("ignore"), ValueError);
  fs::remove_all(d);
}

TEST(DataLoader, BadImagesFailOrSkip) {
  const std::string d = synthetic_set("bad", 2, 6);  // 12 images
  const std::string cls = d + "/train/" + synthetic_class_name(1);
  write_all(cls + "/zz_empty.png", "");
  write_all(cls + "/zz_text.jpg", "not an image");
  const std::string good = read_all(d + "/train/" + synthetic_class_name(0) + "/train_0000.jpg");
  write_all(cls + "/zz_trunc.jpg", good.substr(0, good.size() / 2));
  const ImageFolder folder = scan_image_folder(d + "/train");
  ASSERT_EQ(folder.samples.size(), 15u);

  LoaderOptions o;
  o.batch_size = 4;
  o.num_workers = 3;
  DataLoader fail(folder.samples, eval_resize_transform(16), o);
  fail.start_epoch(0);
  int batches = 0;
  try {
    while (fail.next()) ++batches;
    ADD_FAILURE() << "no IOError for the bad images";
  } catch (const IOError& e) {
    // The first bad image in epoch order (zz_empty.png, sample 12) is in batch 3.
    EXPECT_NE(std::string(e.what()).find(cls + "/zz_empty.png"), std::string::npos) << e.what();
  }
  EXPECT_EQ(batches, 3);
  EXPECT_EQ(fail.next(), nullptr) << "the epoch is over after the error";
  EXPECT_THROW(run_epoch(fail, 1), IOError) << "a later epoch meets the same bad image";

  o.on_bad_image = OnBadImage::Skip;
  o.shuffle = true;
  DataLoader skip(folder.samples, eval_resize_transform(16), o);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    const EpochData e = run_epoch(skip, epoch);
    size_t total = 0;
    for (const auto& l : e.labels) total += l.size();
    EXPECT_EQ(total, 12u);
    ASSERT_EQ(skip.skipped().size(), 3u);
    std::set<std::string> paths;
    for (const SkippedImage& s : skip.skipped()) {
      paths.insert(s.path);
      EXPECT_NE(s.reason.find(s.path), std::string::npos) << s.reason;
    }
    EXPECT_EQ(paths, (std::set<std::string>{cls + "/zz_empty.png", cls + "/zz_text.jpg", cls + "/zz_trunc.jpg"}));
    EXPECT_NE(skip.skipped_report().find("3 images skipped"), std::string::npos);
  }
  fs::remove_all(d);
}

TEST(DataLoader, ShutsDownCleanlyMidEpoch) {
  const std::string d = synthetic_set("shutdown", 2, 20);  // 40 images
  const ImageFolder folder = scan_image_folder(d + "/train");
  LoaderOptions o;
  o.batch_size = 2;
  o.num_workers = 4;
  o.prefetch = 4;
  o.shuffle = true;
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < 5; ++round) {
    DataLoader loader(folder.samples, train_transform(64), o);
    loader.start_epoch(0);
    ASSERT_NE(loader.next(), nullptr);
    if (round % 2 == 1) {
      loader.start_epoch(1);  // abandon epoch 0 half-way
      int n = 0;
      while (loader.next()) ++n;
      EXPECT_EQ(n, 20);
    } else {
      loader.start_epoch(2);  // and destroy with workers busy prefetching
    }
  }
  { DataLoader never_started(folder.samples, train_transform(64), o); }
  {
    DataLoader idle(folder.samples, train_transform(64), o);
    EXPECT_THROW(idle.next(), ValueError) << "next() before start_epoch()";
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 20.0);
  fs::remove_all(d);
}

TEST(DataLoader, CudaCopiesFromPinnedBatches) {
  TL_REQUIRE_CUDA();
  const std::string d = synthetic_set("cuda", 2, 6);
  const ImageFolder folder = scan_image_folder(d + "/train");
  LoaderOptions o;
  o.batch_size = 5;
  o.num_workers = 2;
  o.prefetch = 2;
  DataLoader loader(folder.samples, eval_transform(40, 32), o);
  const EpochData ref = run_epoch(loader, 0);
  loader.start_epoch(0);
  std::vector<Tensor> on_gpu, labels;
  while (const Batch* b = loader.next()) {
    on_gpu.push_back(b->images_to(Device::CUDA));
    labels.push_back(b->labels_to(Device::CUDA));
  }
  ASSERT_EQ(on_gpu.size(), ref.images.size());
  for (size_t i = 0; i < on_gpu.size(); ++i) {
    std::vector<double> v = on_gpu[i].to(Device::CPU).to_doubles();
    ASSERT_EQ(v.size(), ref.images[i].size());
    for (size_t j = 0; j < v.size(); ++j) ASSERT_EQ(static_cast<float>(v[j]), ref.images[i][j]) << i << " " << j;
    std::vector<double> l = labels[i].to(Device::CPU).to_doubles();
    for (size_t j = 0; j < l.size(); ++j) EXPECT_EQ(int32_t(l[j]), ref.labels[i][j]);
  }
  fs::remove_all(d);
}
