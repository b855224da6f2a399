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
}
