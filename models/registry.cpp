// The architecture registry (see registry.h).
#include "models/registry.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <set>

namespace tl::models {
namespace {

// The table, filled by the registrars during static initialisation and read-only afterwards. A function-local
// static, so that it exists before the first registrar runs whatever the order of the translation units.
std::vector<ArchSpec>& table() {
  static std::vector<ArchSpec> specs;
  return specs;
}

// "resnet18" < "resnet34" < "resnet101": digit runs compare by value.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      const std::string na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

}  // namespace

ArchRegistrar::ArchRegistrar(ArchSpec spec) {
  std::vector<ArchSpec>& specs = table();
  for (const ArchSpec& s : specs) {
    if (s.name == spec.name) {  // two files claim one name: a build defect, before main() runs
      std::fprintf(stderr, "tlengine: architecture '%s' is registered twice\n", spec.name.c_str());
      std::abort();
    }
  }
  auto before = [](const ArchSpec& a, const ArchSpec& b) {
    return a.family != b.family ? a.family < b.family : natural_less(a.name, b.name);
  };
  specs.insert(std::upper_bound(specs.begin(), specs.end(), spec, before), std::move(spec));
}

const std::vector<ArchSpec>& arch_specs() { return table(); }

const Shape* shape_at(const StateShapes& s, const std::string& key) {
  auto it = s.find(key);
  return it == s.end() ? nullptr : &it->second;
}

int count_children(const StateShapes& s, const std::string& prefix) {
  std::set<std::string> ids;
  for (const auto& [k, shape] : s) {
    if (k.rfind(prefix, 0) != 0) continue;
    const std::string rest = k.substr(prefix.size());
    ids.insert(rest.substr(0, rest.find('.')));
  }
  return static_cast<int>(ids.size());
}

bool has_shape(const StateShapes& s, const std::string& key, const Shape& shape) {
  const Shape* found = shape_at(s, key);
  return found && *found == shape;
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const ArchSpec& s : arch_specs()) names.push_back(s.name);
  return names;
}

std::string model_names_list() {
  std::string out;
  for (const ArchSpec& s : arch_specs()) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

bool is_model_name(const std::string& arch) {
  for (const ArchSpec& s : arch_specs())
    if (s.name == arch) return true;
  return false;
}

const ArchSpec& arch_spec(const std::string& arch) {
  for (const ArchSpec& s : arch_specs())
    if (s.name == arch) return s;
  throw ValueError("unknown architecture '" + arch + "'; known: " + model_names_list());
}

InputSize input_size(const std::string& arch, int requested) {
  const ArchSpec& spec = arch_spec(arch);
  if (requested <= 0 || requested == spec.input_size)
    return {static_cast<int>(spec.input_size), static_cast<int>(spec.resize_size)};
  return {requested, requested * 256 / 224};
}

std::unique_ptr<Model> create_model(const std::string& arch, int64_t num_classes, uint64_t seed) {
  TL_CHECK(num_classes >= 1, ValueError, "create_model: num_classes must be >= 1, got ", num_classes);
  return arch_spec(arch).create(num_classes, seed);
}

}  // namespace tl::models
