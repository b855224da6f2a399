// Weights loading with a report, and saving with metadata (see weights.h).
#include "models/weights.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/utf8.h"

namespace tl::models {
namespace {
bool in_head(const std::string& name, const std::string& head) { return name.rfind(head + ".", 0) == 0; }
}  // namespace

std::string LoadReport::summary() const {
  std::ostringstream os;
  os << "loaded " << loaded.size() << " tensors";
  auto list = [&os](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n" << what << " (" << v.size() << "):";
    for (const auto& s : v) os << "\n  " << s;
  };
  list("skipped, shape mismatch", skipped);
  list("missing from the file, kept as initialised", missing);
  list("unexpected in the file, ignored", unexpected);
  return os.str();
}

void check_finite_weights(const io::TensorFile& file) {
  std::vector<std::string> bad;
  for (const std::string& name : file.names) {
    const Tensor& t = file.at(name);
    if (t.dtype() == DType::I32 || t.dtype() == DType::I64) continue;
    const Tensor f = t.to(DType::F32);
    const float* p = f.data_as<float>();
    int64_t nan = 0, inf = 0;
    for (int64_t i = 0; i < f.numel(); ++i) {
      if (std::isnan(p[i])) ++nan;
      else if (std::isinf(p[i])) ++inf;
    }
    if (nan + inf > 0)
      bad.push_back(detail::concat(name, " ", shape_str(t.shape()), ": ", nan, " NaN and ", inf, " infinite of ",
                                   f.numel(), " values"));
  }
  if (bad.empty()) return;
  std::ostringstream os;
  os << "the weights hold NaN or infinite values in " << bad.size() << " tensor" << (bad.size() > 1 ? "s" : "")
     << ":";
  for (size_t i = 0; i < bad.size() && i < 8; ++i) os << "\n  " << bad[i];
  if (bad.size() > 8) os << "\n  ... and " << bad.size() - 8 << " more";
  os << "\nThe file comes from a diverged run or is corrupted: use an earlier checkpoint, or load it anyway with "
        "--allow-nonfinite-weights.";
  throw ValueError(os.str());
}

LoadReport load_weights(Model& model, const io::TensorFile& file, const LoadOptions& options) {
  if (!options.allow_nonfinite) check_finite_weights(file);
  LoadReport report;
  std::vector<std::string> problems;
  const std::string head = model.head_name();
  std::set<std::string> known;
  for (nn::StateEntry& e : model.state()) {
    known.insert(e.name);
    if (!file.has(e.name)) {
      report.missing.push_back(e.name);
      // Files older than PyTorch 0.4.1 have no num_batches_tracked; PyTorch loads them with the counter at 0.
      if (!in_head(e.name, head) && !e.counter) problems.push_back("missing " + e.name);
      continue;
    }
    const Tensor& src = file.at(e.name);
    if (src.shape() != e.shape()) {
      std::string line = e.name + ": file " + shape_str(src.shape()) + " vs model " + shape_str(e.shape());
      report.skipped.push_back(line);
      if (!in_head(e.name, head)) problems.push_back("shape mismatch " + line);
      continue;
    }
    if (e.counter) {
      *e.counter = static_cast<int64_t>(src.item());
    } else {
      TL_CHECK(src.dtype() != DType::I32 && src.dtype() != DType::I64, IOError, "tensor '", e.name,
               "' is an integer tensor, expected floating point");
      Tensor& dst = e.param ? e.param->mutable_value() : *e.buffer;
      dst.copy_(src);
    }
    report.loaded.push_back(e.name);
  }
  for (const std::string& name : file.names) {
    if (known.count(name)) continue;
    report.unexpected.push_back(name);
    if (!in_head(name, head)) problems.push_back("unexpected " + name);
  }
  if (!problems.empty() && !options.allow_mismatch) {
    std::ostringstream os;
    os << "the weights do not fit " << model.arch() << " (" << problems.size() << " problems outside the head '"
       << head << "'";
    auto it = file.metadata.find("arch");
    if (it != file.metadata.end()) os << "; the file says arch=" << it->second;
    os << "):";
    for (size_t i = 0; i < problems.size() && i < 8; ++i) os << "\n  " << problems[i];
    if (problems.size() > 8) os << "\n  ... and " << problems.size() - 8 << " more";
    os << "\nCheck --arch, or allow partial loading explicitly.";
    throw ValueError(os.str());
  }
  return report;
}

LoadReport load_weights(Model& model, const std::string& path, const LoadOptions& options) {
  try {
    return load_weights(model, io::read_safetensors(path), options);
  } catch (const ValueError& e) {
    throw ValueError(path + ": " + e.what());
  }
}

std::vector<std::pair<std::string, Tensor>> state_dict(Model& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (nn::StateEntry& e : model.state()) {
    if (e.counter) {
      out.emplace_back(e.name, Tensor::from_values({static_cast<double>(*e.counter)}, {}, DType::I64));
    } else {
      const Tensor& t = e.param ? e.param->value() : *e.buffer;
      out.emplace_back(e.name, t.to(Device::CPU, t.dtype(), Layout::NCHW));
    }
  }
  return out;
}

void save_weights(Model& model, const std::string& path, const std::vector<std::string>& class_names,
                  const std::map<std::string, std::string>& extra_metadata) {
  std::map<std::string, std::string> meta = extra_metadata;
  meta["format"] = "tlengine";
  meta["arch"] = model.arch();
  meta["num_classes"] = std::to_string(model.num_classes());
  if (!class_names.empty()) meta["classes"] = io::encode_names(class_names);
  io::write_safetensors(path, state_dict(model), meta);
}

}  // namespace tl::models
