// The in-memory forms of the readers (read_safetensors_memory, read_npy_memory, load_state_dict_memory): the same
// result as reading the file, clear IOErrors naming the buffer for every prefix of a valid file, and the inputs
// fuzzing found (tests/fuzz), kept here as regression tests.
#include <fstream>

#include "io/image.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "tl_testing.h"
#include "train/state_dict.h"

using namespace tl;
using namespace tl::testing;

namespace {
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
// Every strict prefix of `bytes` is refused with an IOError that names `name` (and nothing else is thrown).
template <typename Read>
void expect_prefixes_refused(const std::string& bytes, const Read& read, const std::string& what) {
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string prefix = bytes.substr(0, n);
    try {
      read(prefix.data(), prefix.size());
      ADD_FAILURE() << what << ": the " << n << "-byte prefix was accepted";
      return;
    } catch (const IOError& e) {
      if (!contains(e.what(), "mem:" + what)) {
        ADD_FAILURE() << what << ": the error does not name the buffer: " << e.what();
        return;
      }
    }
  }
}
}  // namespace

TEST(ReadersMemory, SafetensorsFromMemoryEqualsTheFile) {
  const std::string path = test_dir("readers_memory") + "/a.safetensors";
  const Tensor a = Tensor::randn({2, 3}, 1), b = Tensor::from_values({4, 5}, {2}, DType::I64);
  io::write_safetensors(path, {{"a", a}, {"b", b}}, {{"note", "x"}});
  const std::string bytes = read_all(path);
  const io::TensorFile m = io::read_safetensors_memory(bytes.data(), bytes.size(), "mem:st");
  EXPECT_EQ(m.names, io::read_safetensors(path).names);
  expect_close(m.at("a"), a, 0.0, "a");
  EXPECT_EQ(m.at("b").to_doubles(), (std::vector<double>{4, 5}));
  EXPECT_EQ(m.metadata.at("note"), "x");
  expect_prefixes_refused(bytes, [](const char* p, size_t n) { io::read_safetensors_memory(p, n, "mem:st"); }, "st");
}

TEST(ReadersMemory, NpyFromMemoryEqualsTheFile) {
  const std::string path = test_dir("readers_memory") + "/a.npy";
  const Tensor t = Tensor::randn({2, 1, 3}, 2);
  io::write_npy(path, t);
  const std::string bytes = read_all(path);
  expect_close(io::read_npy_memory(bytes.data(), bytes.size(), "mem:npy"), t, 0.0, "npy");
  expect_prefixes_refused(bytes, [](const char* p, size_t n) { io::read_npy_memory(p, n, "mem:npy"); }, "npy");
}

TEST(ReadersMemory, StateDictFromMemoryEqualsTheFile) {
  const std::string path = test_dir("readers_memory") + "/s.ckpt";
  train::StateDict sd;
  sd.set_double("lr", 0.125);
  sd.tensors["w"] = Tensor::randn({3}, 3);
  train::save_state_dict(path, sd);
  const std::string bytes = read_all(path);
  const train::StateDict m = train::load_state_dict_memory(bytes.data(), bytes.size(), "mem:ckpt");
  EXPECT_EQ(m.get_double("lr"), 0.125);
  expect_close(m.get_tensor("w"), sd.tensors["w"], 0.0, "w");
  expect_prefixes_refused(bytes, [](const char* p, size_t n) { train::load_state_dict_memory(p, n, "mem:ckpt"); },
                          "ckpt");
}

// A .npy header of 200 kB with an unterminated 'descr' string: the header parser used std::regex, whose
// recursion per character overflowed the stack (a crash of `tlengine predict` on a hostile file).
TEST(ReadersMemory, NpyLongHeaderIsAnErrorNotACrash) {
  const std::string header = "{'descr': '" + std::string(200000, 'a') + "', 'fortran_order': False, 'shape': (1,), }\n";
  std::string file = "\x93NUMPY\x02";
  file += '\0';
  for (int i = 0; i < 4; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header + std::string(4, '\0');
  const std::string err = error_of([&] { io::read_npy_memory(file.data(), file.size(), "mem:long"); });
  EXPECT_TRUE(contains(err, "mem:long") && contains(err, "is not supported")) << err.substr(0, 200);
}

// Header parsing of the shape and flags: NumPy's spellings are read, anything else refused by name.
TEST(ReadersMemory, NpyHeaderFields) {
  auto npy = [](const std::string& header, size_t data_bytes) {
    std::string f = "\x93NUMPY\x01";
    f += '\0';
    f += static_cast<char>(header.size() & 0xff);
    f += static_cast<char>(header.size() >> 8);
    return f + header + std::string(data_bytes, '\0');
  };
  auto shape_of = [&](const std::string& header, size_t data_bytes) {
    const std::string f = npy(header, data_bytes);
    return io::read_npy_memory(f.data(), f.size(), "mem:h").shape();
  };
  auto error_for = [&](const std::string& header, size_t data_bytes) {
    const std::string f = npy(header, data_bytes);
    return error_of([&] { io::read_npy_memory(f.data(), f.size(), "mem:h"); });
  };
  EXPECT_EQ(shape_of("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 24), (Shape{2, 3}));
  EXPECT_EQ(shape_of("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }\n", 40), (Shape{5}));
  EXPECT_EQ(shape_of("{'descr':'<f4','fortran_order':False,'shape':()}", 4), (Shape{}));
  EXPECT_TRUE(contains(error_for("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24), "Fortran"));
  EXPECT_TRUE(contains(error_for("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 24), "bad dimension"));
  EXPECT_TRUE(contains(error_for("{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3), }", 24), "bad dimension"));
  EXPECT_TRUE(contains(error_for("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }", 24), "unterminated"));
  EXPECT_TRUE(contains(error_for("{'descr': '<f4', 'fortran_order': False}", 24), "no 'shape'"));
}

// A 403-byte JPEG (found by tests/fuzz/fuzz_image) whose Huffman table declares more than 256 codes: stb_image
// 2.27 wrote past its Huffman arrays while reading the header (an UndefinedBehaviorSanitizer report, a heap
// overflow without it). It must be refused with an IOError naming the image.
TEST(ReadersMemory, JpegWithAnOversizedHuffmanTableIsRefused) {
  const std::vector<uint8_t> jpeg = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43,
    0x00, 0x06, 0x04, 0x05, 0x06, 0x05, 0x04, 0x06, 0x06, 0x05, 0x06, 0x07, 0x07, 0x06, 0x08, 0x0a, 0x10, 0x0a, 0x0a, 0x09, 0x09, 0x0a, 0x14, 0x0e,
    0x0f, 0x0c, 0x10, 0x17, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0, 0x14, 0x18, 0x18, 0x17, 0x14, 0x16, 0x16, 0x1a, 0x1d, 0x25, 0x1f, 0x1a,
    0x1b, 0x23, 0x1c, 0x16, 0x16, 0x20, 0x2c, 0x20, 0x23, 0x26, 0x27, 0x29, 0x2a, 0x29, 0x19, 0x1f, 0x2d, 0x30, 0x2d, 0x28, 0x30, 0x25, 0x28, 0x29,
    0x00, 0x05, 0xff, 0xc4, 0x00, 0x15, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x36, 0x64, 0xa5, 0x3f, 0xff, 0xc4, 0x00,
    0x1a, 0x11, 0x00, 0x02, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x04, 0x41, 0x00, 0x31,
    0x61, 0xff, 0xda, 0x00, 0x08, 0x01, 0x02, 0x01, 0x01, 0x3f, 0x01, 0x91, 0x29, 0x83, 0xe8, 0x55, 0x73, 0x3f, 0xff, 0xc4, 0x00, 0x19, 0x10, 0x00,
    0x02, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x11, 0x22, 0x41, 0xff, 0xda, 0x00,
    0x08, 0x01, 0x01, 0x00, 0x06, 0x3f, 0x02, 0xd3, 0x3a, 0x8a, 0x1d, 0x9f, 0xff, 0xc4, 0x00, 0x19, 0x10, 0x00, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x11, 0x31, 0x41, 0x71, 0x81, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3f,
    0x21, 0xa1, 0xa2, 0x0c, 0x89, 0x48, 0xcd, 0x2e, 0x45, 0x7f, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10,
    0x0f, 0xff, 0xc4, 0x00, 0x19, 0x11, 0x01, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x11, 0x21, 0x71, 0xc1, 0xff, 0xda, 0x00, 0x08, 0x01, 0x03, 0x01, 0x01, 0x3f, 0x10, 0x24, 0xa7, 0x1b, 0xe2, 0x4f, 0xff, 0xc4, 0x00, 0x19, 0x11,
    0x01, 0x01, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x21, 0x11, 0x00, 0x31, 0x51, 0xff, 0xda,
    0x00, 0x08, 0x01, 0x02, 0x01, 0x01, 0x3f, 0x10, 0x47, 0x97, 0x15, 0x0d, 0x42, 0xd7, 0x5e, 0xdf, 0x79, 0xff, 0xc4, 0x00, 0x18, 0x10, 0x01, 0x01,
    0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x11, 0x00, 0x21, 0x41, 0xff, 0xda, 0x00, 0x08, 0x01,
    0x01, 0x00, 0x01, 0x3f, 0x10, 0x58, 0x56, 0xc6, 0x51, 0xd7, 0x1c, 0x82, 0x78, 0xda, 0x82, 0x1c, 0x7f, 0xff, 0xd9,
  };
  ASSERT_EQ(jpeg.size(), 403u);
  const std::string err = error_of([&] { io::decode_image_memory(jpeg, "mem:huffman.jpg"); });
  EXPECT_TRUE(contains(err, "mem:huffman.jpg") && contains(err, "Huffman table")) << err;
  // The same overflow from a table whose 16 counts run past the end of the file (stb_image reads zeros there).
  const std::vector<uint8_t> at_end = {
      0xff, 0xd8, 0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x06,
      0x04, 0x05, 0x3b, 0x06, 0x05, 0x04, 0x06, 0x06, 0x05, 0x06, 0x07, 0x07, 0x06, 0x08, 0x0a, 0x10, 0x0a, 0x0a, 0x09, 0x09, 0x0a, 0x14, 0x0e, 0x0f,
      0x0c, 0x10, 0x17, 0x14, 0x18, 0x18, 0x17, 0x14, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02,
      0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x00, 0x00, 0x35, 0x49, 0x44, 0x41, 0x54, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01,
      0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x4b, 0x7d, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e,
      0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x01, 0x02, 0x03, 0x41, 0x00, 0x12, 0x04, 0x21, 0x31, 0x11, 0x05, 0x06, 0x13,
      0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x63, 0x42, 0x38, 0x42,
      0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x90, 0x11,
      0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x00, 0x00, 0x61, 0x20, 0x00, 0x01, 0x0d, 0xa7, 0x01, 0x03, 0x11, 0x01, 0xff, 0xc4, 0x00, 0x1f, 0x00, 0x00,
      0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
      0x09, 0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7d,
      0x01, 0x02, 0x03, 0x33, 0x74, 0x3f, 0x78, 0xfd, 0x53, 0x5f, 0xff, 0xd9,
  };
  ASSERT_EQ(at_end.size(), 276u);
  const std::string err2 = error_of([&] { io::decode_image_memory(at_end, "mem:huffman_end.jpg"); });
  // libjpeg-turbo (when built with it) refuses the file at its own check of the marker length first.
  const bool stb = std::string(io::jpeg_decoder_name()) == "stb_image";
  EXPECT_TRUE(contains(err2, "mem:huffman_end.jpg") && (!stb || contains(err2, "Huffman table"))) << err2;
}

// A 16-bit PGM (maxval > 255): stb_image 2.27 converted its channels with the 8-bit routine and then read twice
// the bytes it had (a heap overflow found by fuzz_image; the pixels came out with unequal channels). Decoded now
// as a grey image of the right size (stb_image 2.27's 16-bit PNM scaling is its own; only grey is checked here).
TEST(ReadersMemory, SixteenBitPgmDecodesToAGreyImage) {
  const std::string header = "P5\n3 2\n1000\n";
  std::vector<uint8_t> pgm(header.begin(), header.end());
  for (int v : {0x0102, 0x0304, 0x0000, 0x03e8, 0x00ff, 0x0201}) {
    pgm.push_back(static_cast<uint8_t>(v >> 8));
    pgm.push_back(static_cast<uint8_t>(v & 0xff));
  }
  const io::Image img = io::decode_image_memory(pgm, "mem:16bit.pgm");
  ASSERT_EQ(img.width, 3);
  ASSERT_EQ(img.height, 2);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_TRUE(img.pixels[3 * i] == img.pixels[3 * i + 1] && img.pixels[3 * i] == img.pixels[3 * i + 2])
        << "pixel " << i << " is not grey";
}

// A PGM header number too large for an int (stb_image 2.27 overflowed it: undefined behaviour found by fuzzing).
TEST(ReadersMemory, PnmHeaderNumberTooLargeIsRefused) {
  const std::string pgm = "P5\n# comment\n3 99999999999\n255\n" + std::string(6, '\x01');
  const std::string err = error_of([&] { io::decode_image_memory({pgm.begin(), pgm.end()}, "mem:big.pgm"); });
  EXPECT_TRUE(contains(err, "mem:big.pgm") && contains(err, "more than 9 digits")) << err;
  const std::string ok = "P5\n# comment\n3 2\n255\n" + std::string(6, '\x01');
  EXPECT_EQ(io::decode_image_memory({ok.begin(), ok.end()}, "mem:ok.pgm").width, 3);
}

// A zero-length IDAT chunk before a PNG's image data (legal; PIL skips it) made stb_image 2.27 copy 0 bytes to a
// null pointer (undefined behaviour found by CI's fuzz_image run, 2026-12-01), and so did the header of such a
// chunk with the file cut short after it (the second finding). The first decodes as the file without the empty
// chunk, the second is refused as cut short; under tools/sanitize.sh this test also shows the undefined behaviour
// gone.
TEST(ReadersMemory, PngZeroLengthIdatNeverReachesStbImage) {
  io::Image src(5, 7);
  for (size_t i = 0; i < src.pixels.size(); ++i) src.pixels[i] = static_cast<uint8_t>(37 * i + 11);
  const std::string path = scratch_dir("png_empty_idat") + "/src.png";
  io::write_image(path, src);
  const std::string png = read_all(path);
  ASSERT_EQ(png.compare(12, 4, "IHDR"), 0);
  const size_t data_at = 33;  // after the signature and IHDR (8 + 25 bytes)
  const std::string empty_idat("\0\0\0\0IDAT\x35\xAF\x06\x1E", 12);  // length 0, "IDAT", its CRC-32
  const std::string with_empty = png.substr(0, data_at) + empty_idat + png.substr(data_at);
  const io::Image img = io::decode_image_memory({with_empty.begin(), with_empty.end()}, "mem:empty_idat.png");
  ASSERT_EQ(img.width, 5);
  ASSERT_EQ(img.height, 7);
  EXPECT_EQ(img.pixels, src.pixels);
  // The fuzzer's input: IHDR, then the first 9 bytes of a zero-length IDAT chunk.
  const std::string cut = png.substr(0, data_at) + empty_idat.substr(0, 9);
  std::string err = error_of([&] { io::decode_image_memory({cut.begin(), cut.end()}, "mem:cut.png"); });
  EXPECT_TRUE(contains(err, "mem:cut.png") && contains(err, "cut short")) << err;
  // Only empty image data: refused, as PIL refuses it.
  const std::string none = png.substr(0, data_at) + empty_idat + png.substr(png.size() - 12);
  err = error_of([&] { io::decode_image_memory({none.begin(), none.end()}, "mem:none.png"); });
  EXPECT_TRUE(contains(err, "mem:none.png") && contains(err, "no image data")) << err;
}
