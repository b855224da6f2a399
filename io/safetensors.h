// Reading and writing the safetensors layout: an 8-byte little-endian header length, a JSON header that maps
// each tensor name to {dtype, shape, data_offsets}, then the raw little-endian data.
// The reader validates the whole header before it reads any data and throws IOError naming the file.
// The writer stores a CRC-32 of the data section in __metadata__["checksum"] ("crc32:<hex>", zlib's CRC-32);
// the reader verifies it when present (files from other tools may have none).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tl::io {

struct TensorFile {
  std::vector<std::string> names;         // in file order
  std::map<std::string, Tensor> tensors;  // CPU tensors
  std::map<std::string, std::string> metadata;  // the "__metadata__" entry
  const Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

TensorFile read_safetensors(const std::string& path);
// The same reader over a file already in memory (`size` bytes at `data`); `name` stands for the file in errors.
TensorFile read_safetensors_memory(const void* data, size_t size, const std::string& name);
// Writes atomically: a temporary file beside `path`, fsync, rename. CPU or CUDA tensors; NHWC is stored as NCHW.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tl::io
