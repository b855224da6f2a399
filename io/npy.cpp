// .npy reading and writing (see npy.h).
#include "io/npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "io/byte_source.h"

#include "io/files.h"

namespace tl::io {

namespace {
// The value of `key` in the header's dict literal ({'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }):
// the text between `open` and `close` (a quoted string or a tuple), or, with open == 0, the bare word up to the
// next ',' or '}'. A linear scan (std::regex recurses per character and overflows the stack on long headers).
std::string header_value(const std::string& header, const std::string& key, char open, char close,
                         const std::string& path) {
  size_t pos = header.find("'" + key + "'");
  TL_CHECK(pos != std::string::npos, IOError, path, ": no '", key, "' in the .npy header");
  pos = header.find_first_not_of(" \t", pos + key.size() + 2);
  TL_CHECK(pos != std::string::npos && header[pos] == ':', IOError, path, ": no ':' after '", key,
           "' in the .npy header");
  pos = header.find_first_not_of(" \t", pos + 1);
  TL_CHECK(pos != std::string::npos, IOError, path, ": no value for '", key, "' in the .npy header");
  if (open == 0) {
    const size_t end = header.find_first_of(",}", pos);
    TL_CHECK(end != std::string::npos, IOError, path, ": unterminated value of '", key, "' in the .npy header");
    const size_t last = header.find_last_not_of(" \t", end - 1);
    return header.substr(pos, last == std::string::npos || last < pos ? 0 : last + 1 - pos);
  }
  TL_CHECK(header[pos] == open, IOError, path, ": the value of '", key, "' in the .npy header does not start with ",
           open);
  const size_t end = header.find(close, pos + 1);
  TL_CHECK(end != std::string::npos, IOError, path, ": unterminated value of '", key, "' in the .npy header");
  return header.substr(pos + 1, end - pos - 1);
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t") + 1 - a);
}

// "2, 3" / "5," / "" (a scalar) -> the dimensions; anything but decimal numbers is refused.
Shape parse_shape(const std::string& dims, const std::string& path) {
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t end = dims.find(',', start);
    parts.push_back(trim(dims.substr(start, end == std::string::npos ? std::string::npos : end - start)));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (parts.back().empty()) parts.pop_back();  // "(5,)" and "()"
  Shape shape;
  for (const std::string& d : parts) {
    TL_CHECK(!d.empty() && d.size() < 12 && d.find_first_not_of("0123456789") == std::string::npos, IOError, path,
             ": bad dimension '", d.substr(0, 32), "' in the .npy shape (", dims.substr(0, 64), ")");
    shape.push_back(std::stoll(d));
  }
  return shape;
}

// The reader shared by read_npy (a file) and read_npy_memory (a buffer).
Tensor parse_npy(const ByteSource& src) {
  const std::string& path = src.name();
  const uint64_t size = src.size();
  char magic[8];
  TL_CHECK(size >= 10, IOError, path, ": not a NumPy .npy file (", size, " bytes, too short)");
  src.read(0, magic, 8);
  TL_CHECK(std::memcmp(magic, "\x93NUMPY", 6) == 0, IOError, path, ": not a NumPy .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  uint64_t header_len = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  const int len_bytes = major == 1 ? 2 : 4;
  TL_CHECK(major >= 1 && major <= 3, IOError, path, ": unsupported .npy version ", major);
  src.read(8, len, static_cast<uint64_t>(len_bytes));
  for (int i = len_bytes - 1; i >= 0; --i) header_len = (header_len << 8) | len[i];
  const uint64_t data_start = 8 + static_cast<uint64_t>(len_bytes) + header_len;
  TL_CHECK(header_len < (1u << 20) && data_start <= size, IOError, path, ": header length ", header_len,
           " runs past the end of the file");
  std::string header(header_len, '\0');
  src.read(8 + static_cast<uint64_t>(len_bytes), header.data(), header_len);
  const std::string descr = header_value(header, "descr", '\'', '\'', path);
  TL_CHECK(descr == "<f4" || descr == "<f8", IOError, path, ": dtype '", descr.substr(0, 32),
           "' is not supported; save the batch as float32 (np.float32)");
  const std::string fortran = header_value(header, "fortran_order", 0, 0, path);
  TL_CHECK(fortran == "False", IOError, path, ": Fortran-ordered arrays are not supported (fortran_order: ",
           fortran.substr(0, 32), "); save np.ascontiguousarray(a)");
  const Shape shape = parse_shape(header_value(header, "shape", '(', ')', path), path);
  const uint64_t elem = descr == "<f4" ? 4 : 8;
  uint64_t count = 1;
  for (int64_t d : shape) {
    TL_CHECK(d == 0 || count <= (1ULL << 40) / static_cast<uint64_t>(d), IOError, path, ": shape overflows");
    count *= static_cast<uint64_t>(d);
  }
  TL_CHECK(size - data_start == count * elem, IOError, path, ": header says ", shape_str(shape), " (", count * elem,
           " bytes) but the file holds ", size - data_start, " data bytes (truncated or corrupted)");
  Tensor t = Tensor::empty(shape, descr == "<f4" ? DType::F32 : DType::F64);
  src.read(data_start, t.data(), t.nbytes());
  return t.to(DType::F32);
}
}  // namespace

Tensor read_npy(const std::string& path) { return parse_npy(ByteSource::file(path)); }

Tensor read_npy_memory(const void* data, size_t size, const std::string& name) {
  return parse_npy(ByteSource::memory(data, size, name));
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
