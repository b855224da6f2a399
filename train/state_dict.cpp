// StateDict accessors and its safetensors file form (see state_dict.h).
#include "train/state_dict.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "io/safetensors.h"

namespace tl::train {
namespace {
// Values live in the file's __metadata__ under this prefix, apart from the writer's own keys ("checksum").
constexpr const char* kValuePrefix = "value:";
}  // namespace

void StateDict::set_double(const std::string& key, double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  values[key] = buf;
}
void StateDict::set_int(const std::string& key, int64_t v) { values[key] = std::to_string(v); }

const std::string& StateDict::get_string(const std::string& key) const {
  auto it = values.find(key);
  TL_CHECK(it != values.end(), ValueError, "state dict has no value '", key,
           "': it was written by a different configuration or version; start without resuming");
  return it->second;
}
double StateDict::get_double(const std::string& key) const {
  const std::string& s = get_string(key);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const bool overflow = errno == ERANGE && std::isinf(v);  // underflow to a subnormal is exact text we wrote
  TL_CHECK(!s.empty() && end == s.c_str() + s.size() && !overflow, ValueError, "state dict value '", key, "' = '",
           s, "' is not a number");
  return v;
}
int64_t StateDict::get_int(const std::string& key) const {
  const std::string& s = get_string(key);
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  TL_CHECK(!s.empty() && end == s.c_str() + s.size() && errno == 0, ValueError, "state dict value '", key, "' = '",
           s, "' is not an integer");
  return static_cast<int64_t>(v);
}
bool StateDict::get_bool(const std::string& key) const {
  const int64_t v = get_int(key);
  TL_CHECK(v == 0 || v == 1, ValueError, "state dict value '", key, "' = ", v, " is not 0 or 1");
  return v == 1;
}
const Tensor& StateDict::get_tensor(const std::string& key) const {
  auto it = tensors.find(key);
  TL_CHECK(it != tensors.end(), ValueError, "state dict has no tensor '", key,
           "': it was written by a different configuration or version; start without resuming");
  return it->second;
}

void StateDict::insert(const std::string& prefix, const StateDict& other) {
  for (const auto& [k, t] : other.tensors) tensors[prefix + k] = t;
  for (const auto& [k, v] : other.values) values[prefix + k] = v;
}
StateDict StateDict::extract(const std::string& prefix) const {
  StateDict out;
  for (auto it = tensors.lower_bound(prefix); it != tensors.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it)
    out.tensors[it->first.substr(prefix.size())] = it->second;
  for (auto it = values.lower_bound(prefix); it != values.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it)
    out.values[it->first.substr(prefix.size())] = it->second;
  return out;
}

void save_state_dict(const std::string& path, const StateDict& state) {
  std::vector<std::pair<std::string, Tensor>> tensors(state.tensors.begin(), state.tensors.end());
  std::map<std::string, std::string> metadata;
  for (const auto& [k, v] : state.values) metadata[kValuePrefix + k] = v;
  io::write_safetensors(path, tensors, metadata);
}

namespace {
StateDict from_tensor_file(io::TensorFile file) {
  StateDict out;
  out.tensors = std::move(file.tensors);
  const std::string prefix = kValuePrefix;
  for (const auto& [k, v] : file.metadata)
    if (k.compare(0, prefix.size(), prefix) == 0) out.values[k.substr(prefix.size())] = v;
  return out;
}
}  // namespace

StateDict load_state_dict(const std::string& path) { return from_tensor_file(io::read_safetensors(path)); }

StateDict load_state_dict_memory(const void* data, size_t size, const std::string& name) {
  return from_tensor_file(io::read_safetensors_memory(data, size, name));
}

}  // namespace tl::train
