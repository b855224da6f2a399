// StateDict: the resumable state of a training component (optimizer, learning-rate schedule) as named tensors
// plus named scalar values, and its file form (safetensors: tensors as tensors, values in __metadata__).
// Values are stored as text: doubles with 17 significant digits, so they read back bit-identically.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"

namespace tl::train {

struct StateDict {
  std::map<std::string, Tensor> tensors;      // CPU tensors, owned (never aliases of live state)
  std::map<std::string, std::string> values;  // scalars and names, as text

  void set_double(const std::string& key, double v);
  void set_int(const std::string& key, int64_t v);
  void set_bool(const std::string& key, bool v) { set_int(key, v ? 1 : 0); }
  void set_string(const std::string& key, const std::string& v) { values[key] = v; }

  bool has_value(const std::string& key) const { return values.count(key) != 0; }
  bool has_tensor(const std::string& key) const { return tensors.count(key) != 0; }
  // These throw ValueError naming the key when it is missing or does not parse.
  double get_double(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const Tensor& get_tensor(const std::string& key) const;

  // Copies every entry of `other` under `prefix` (e.g. "optimizer."), to put several components in one file.
  void insert(const std::string& prefix, const StateDict& other);
  // The entries whose key starts with `prefix`, with the prefix removed (the inverse of insert).
  StateDict extract(const std::string& prefix) const;
};

// Writes atomically (temporary file, fsync, rename). Throws IOError naming the file on failure.
void save_state_dict(const std::string& path, const StateDict& state);
// Throws IOError naming the file when it is missing, truncated or corrupt.
StateDict load_state_dict(const std::string& path);
// The same over a file already in memory (`size` bytes at `data`); `name` stands for the file in errors.
StateDict load_state_dict_memory(const void* data, size_t size, const std::string& name);

}  // namespace tl::train
