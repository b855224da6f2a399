// .npy reading and writing (see npy.h).
#include "io/npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>

#include "io/files.h"

namespace tl::io {

Tensor read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  TL_CHECK(f.good(), IOError, path, ": cannot open file");
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  char magic[8];
  TL_CHECK(size >= 10 && f.read(magic, 8) && std::memcmp(magic, "\x93NUMPY", 6) == 0, IOError, path,
           ": not a NumPy .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  uint64_t header_len = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  const int len_bytes = major == 1 ? 2 : 4;
  TL_CHECK(major >= 1 && major <= 3, IOError, path, ": unsupported .npy version ", major);
  f.read(reinterpret_cast<char*>(len), len_bytes);
  for (int i = len_bytes - 1; i >= 0; --i) header_len = (header_len << 8) | len[i];
  const uint64_t data_start = 8 + static_cast<uint64_t>(len_bytes) + header_len;
  TL_CHECK(header_len < (1u << 20) && data_start <= size, IOError, path, ": header length ", header_len,
           " runs past the end of the file");
  std::string header(header_len, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  std::smatch m;
  TL_CHECK(std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')")), IOError, path, ": no 'descr' in header");
  const std::string descr = m[1];
  TL_CHECK(descr == "<f4" || descr == "<f8", IOError, path, ": dtype ", descr,
           " is not supported; save the batch as float32 (np.float32)");
  TL_CHECK(std::regex_search(header, m, std::regex(R"('fortran_order'\s*:\s*(True|False))")) && m[1] == "False",
           IOError, path, ": Fortran-ordered arrays are not supported; save np.ascontiguousarray(a)");
  TL_CHECK(std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")), IOError, path,
           ": no 'shape' in header");
  Shape shape;
  std::string dims = m[1];
  std::regex num(R"(\d+)");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it) {
    const std::string d = it->str();
    TL_CHECK(d.size() < 12, IOError, path, ": dimension ", d, " is too large");
    shape.push_back(std::stoll(d));
  }
  const uint64_t elem = descr == "<f4" ? 4 : 8;
  uint64_t count = 1;
  for (int64_t d : shape) {
    TL_CHECK(d == 0 || count <= (1ULL << 40) / static_cast<uint64_t>(d), IOError, path, ": shape overflows");
    count *= static_cast<uint64_t>(d);
  }
  TL_CHECK(size - data_start == count * elem, IOError, path, ": header says ", shape_str(shape), " (", count * elem,
           " bytes) but the file holds ", size - data_start, " data bytes (truncated or corrupted)");
  Tensor t = Tensor::empty(shape, descr == "<f4" ? DType::F32 : DType::F64);
  f.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(t.nbytes()));
  TL_CHECK(f.good() || t.nbytes() == 0, IOError, path, ": read failed");
  return t.to(DType::F32);
}

void write_npy(const std::string& path, const Tensor& t) {
  Tensor h = t.to(Device::CPU, DType::F32, Layout::NCHW);
  // numpy's tuple spelling: "()", "(a,)", "(a, b)"
  std::string shape = "(";
  for (int i = 0; i < h.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(h.shape()[static_cast<size_t>(i)]);
  shape += h.ndim() == 1 ? ",)" : ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size() & 0xff),
                                 static_cast<unsigned char>(header.size() >> 8)};
  write_file_atomic(path, {{pre, 10}, {header.data(), header.size()}, {h.data(), h.nbytes()}});
}

}  // namespace tl::io
