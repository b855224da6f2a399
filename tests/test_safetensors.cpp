// Weights files in the safetensors layout: round trip, and a clear IOError (never a crash) for bad files.
#include <cstdio>
#include <fstream>

#include "io/safetensors.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {
std::string tmp_path(const std::string& name) { return ::testing::TempDir() + "tl_" + name + ".safetensors"; }
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
void write_all(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\x01');
}
void expect_io_error(const std::string& path, const std::string& fragment) {
  try {
    io::read_safetensors(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const IOError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << msg;
  }
}
}  // namespace

TEST(Safetensors, RoundTripKeepsValuesDtypesAndMetadata) {
  const std::string p = tmp_path("roundtrip");
  Tensor a = Tensor::randn({2, 3, 4, 5}, 1).to_layout(Layout::NHWC);  // stored as logical NCHW
  Tensor b = Tensor::randn({7}, 2, DType::F64);
  Tensor c = Tensor::from_values({1, 2, 3}, {3}, DType::I32);
  io::write_safetensors(p, {{"a", a}, {"b", b}, {"c", c}}, {{"arch", "resnet18"}});
  io::TensorFile f = io::read_safetensors(p);
  EXPECT_EQ(f.names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(f.metadata.at("arch"), "resnet18");
  EXPECT_EQ(f.at("a").to_doubles(), a.to_doubles());
  EXPECT_EQ(f.at("b").dtype(), DType::F64);
  EXPECT_EQ(f.at("b").to_doubles(), b.to_doubles());
  EXPECT_EQ(f.at("c").to_doubles(), c.to_doubles());
  EXPECT_THROW(f.at("missing"), IOError);
  std::remove(p.c_str());
}

TEST(Safetensors, BadFilesGiveClearErrors) {
  const std::string good = tmp_path("good");
  io::write_safetensors(good, {{"w", Tensor::randn({4, 4}, 1)}});
  const std::string bytes = read_all(good);

  const std::string p = tmp_path("bad");
  write_all(p, bytes.substr(0, bytes.size() - 10));  // truncated data
  expect_io_error(p, "outside");
  write_all(p, bytes.substr(0, 5));  // shorter than the length field
  expect_io_error(p, "too short");
  write_all(p, "");  // zero bytes
  expect_io_error(p, "too short");
  write_all(p, bytes + "xx");  // trailing bytes
  expect_io_error(p, "trailing");
  write_all(p, raw_file("{not json", 0));
  expect_io_error(p, "JSON");
  std::string huge(8, '\xff');  // header length 2^64-1
  write_all(p, huge + "{}");
  expect_io_error(p, "header length");
  write_all(p, raw_file(R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}})", 60));  // shape lies
  expect_io_error(p, "declares shape");
  write_all(p, raw_file(R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", 4));
  expect_io_error(p, "unsupported dtype");
  write_all(p, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));  // overlap
  expect_io_error(p, "gap or overlap");
  write_all(p, raw_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}})", 4));
  expect_io_error(p, "overflows");
  expect_io_error(tmp_path("does_not_exist"), "cannot open");
  std::remove(p.c_str());
  std::remove(good.c_str());
}

TEST(Safetensors, ChecksumCatchesFlippedDataBytes) {
  const std::string p = tmp_path("checksum");
  io::write_safetensors(p, {{"w", Tensor::randn({16}, 3)}});
  EXPECT_EQ(io::read_safetensors(p).metadata.at("checksum").rfind("crc32:", 0), 0u);
  std::string bytes = read_all(p);
  bytes[bytes.size() - 3] ^= 0x40;  // one bit of the last float
  write_all(p, bytes);
  expect_io_error(p, "checksum mismatch");
  std::remove(p.c_str());
}
