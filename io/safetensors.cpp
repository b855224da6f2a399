// safetensors reader (validating) and atomic writer.
#include "io/safetensors.h"

#include <cstdio>
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/byte_source.h"
#include "io/files.h"

namespace tl::io {
namespace {
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // 100 MiB, as the reference implementation
constexpr const char* kChecksumKey = "checksum";  // "crc32:<8 hex digits>" of the data section (zlib's CRC-32)

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}
std::string checksum_string(uint32_t crc) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", crc);
  return std::string("crc32:") + buf;
}

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F64") *out = DType::F64;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "F16") *out = DType::F16;
  else if (s == "I32") *out = DType::I32;
  else if (s == "I64") *out = DType::I64;
  else return false;
  return true;
}
const char* dtype_tag(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}
}  // namespace

const Tensor& TensorFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  TL_CHECK(it != tensors.end(), IOError, "tensor '", name, "' is not in the file");
  return it->second;
}

namespace {
// The reader shared by read_safetensors (a file) and read_safetensors_memory (a buffer).
TensorFile parse_safetensors(const ByteSource& src) {
  const std::string& path = src.name();
  const uint64_t file_size = src.size();
  TL_CHECK(file_size >= 8, IOError, path, ": file is ", file_size, " bytes, too short for a safetensors header");
  unsigned char len_bytes[8];
  src.read(0, len_bytes, 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  TL_CHECK(header_len <= kMaxHeaderBytes, IOError, path, ": header length ", header_len,
           " exceeds the 100 MiB limit (not a safetensors file, or corrupted)");
  TL_CHECK(header_len <= file_size - 8, IOError, path, ": header length ", header_len, " runs past the end of the ",
           file_size, "-byte file (truncated?)");
  std::string header(header_len, '\0');
  src.read(8, header.data(), header_len);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw IOError(detail::concat(path, ": header is not valid JSON: ", e.what()));
  }
  TL_CHECK(j.is_object(), IOError, path, ": header is not a JSON object");
  const uint64_t data_size = file_size - 8 - header_len;

  struct Entry { std::string name; DType dtype; Shape shape; uint64_t begin, end; };
  std::vector<Entry> entries;
  TensorFile out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      TL_CHECK(v.is_object(), IOError, path, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        TL_CHECK(m.value().is_string(), IOError, path, ": __metadata__ value of '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TL_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), IOError, path,
             ": entry '", name, "' lacks dtype/shape/data_offsets");
    Entry e;
    e.name = name;
    TL_CHECK(v["dtype"].is_string() && parse_dtype(v["dtype"].get<std::string>(), &e.dtype), IOError, path,
             ": tensor '", name, "' has unsupported dtype ", v["dtype"].dump());
    TL_CHECK(v["shape"].is_array(), IOError, path, ": tensor '", name, "' shape is not an array");
    uint64_t count = 1;
    for (const auto& d : v["shape"]) {
      TL_CHECK(d.is_number_unsigned(), IOError, path, ": tensor '", name, "' has a bad dimension ", d.dump());
      uint64_t dim = d.get<uint64_t>();
      TL_CHECK(dim == 0 || count <= std::numeric_limits<uint64_t>::max() / dim / 8, IOError, path, ": tensor '", name,
               "' shape overflows");
      count *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    TL_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), IOError,
             path, ": tensor '", name, "' has bad data_offsets ", off.dump());
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    TL_CHECK(e.begin <= e.end && e.end <= data_size, IOError, path, ": tensor '", name, "' data [", e.begin, ", ",
             e.end, ") lies outside the ", data_size, "-byte data section (truncated or corrupted file)");
    TL_CHECK(e.end - e.begin == count * dtype_size(e.dtype), IOError, path, ": tensor '", name, "' declares shape ",
             shape_str(e.shape), " (", count * dtype_size(e.dtype), " bytes) but its offsets span ", e.end - e.begin,
             " bytes");
    entries.push_back(std::move(e));
  }
  // Offsets must tile the data section exactly: no gaps, no overlaps, no trailing bytes.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  uint64_t expect = 0;
  for (const Entry* e : by_offset) {
    TL_CHECK(e->begin == expect, IOError, path, ": tensor '", e->name, "' starts at byte ", e->begin,
             " of the data section, expected ", expect, " (gap or overlap)");
    expect = e->end;
  }
  TL_CHECK(expect == data_size, IOError, path, ": ", data_size - expect,
           " trailing bytes after the last tensor (corrupted file)");

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::CPU);
    src.read(8 + header_len + e.begin, t.data(), e.end - e.begin);
    out.names.push_back(e.name);
    out.tensors[e.name] = t;
  }
  auto sum = out.metadata.find(kChecksumKey);
  if (sum != out.metadata.end()) {
    uint32_t crc = 0;
    for (const Entry* e : by_offset) crc = crc32_update(crc, out.tensors[e->name].data(), e->end - e->begin);
    TL_CHECK(checksum_string(crc) == sum->second, IOError, path, ": checksum mismatch (file says ", sum->second,
             ", data gives ", checksum_string(crc), "): the file is corrupted; convert or download it again");
  }
  // Names in file order = order of offsets.
  out.names.clear();
  for (const Entry* e : by_offset) out.names.push_back(e->name);
  return out;
}
}  // namespace

TensorFile read_safetensors(const std::string& path) { return parse_safetensors(ByteSource::file(path)); }

TensorFile read_safetensors_memory(const void* data, size_t size, const std::string& name) {
  return parse_safetensors(ByteSource::memory(data, size, name));
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  uint32_t crc = 0;
  nlohmann::ordered_json entries;
  for (const auto& [name, t] : tensors) {
    check_defined(t, "write_safetensors");
    TL_CHECK(name != "__metadata__", ValueError, "write_safetensors: '__metadata__' is not a tensor name");
    Tensor h = t.to(Device::CPU, t.dtype(), Layout::NCHW);
    entries[name] = {{"dtype", dtype_tag(h.dtype())}, {"shape", h.shape()},
                     {"data_offsets", {offset, offset + h.nbytes()}}};
    offset += h.nbytes();
    crc = crc32_update(crc, h.data(), h.nbytes());
    host.push_back(h);
  }
  std::map<std::string, std::string> meta = metadata;
  meta[kChecksumKey] = checksum_string(crc);
  j["__metadata__"] = meta;
  for (auto it = entries.begin(); it != entries.end(); ++it) j[it.key()] = it.value();
  std::string header = j.dump();
  while ((header.size() + 8) % 8 != 0) header.push_back(' ');  // align the data section
  unsigned char len_bytes[8];
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
  std::vector<ByteRange> parts = {{len_bytes, 8}, {header.data(), header.size()}};
  for (const Tensor& h : host) parts.push_back({h.data(), h.nbytes()});
  write_file_atomic(path, parts);
}

}  // namespace tl::io
