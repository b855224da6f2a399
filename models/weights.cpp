// Weights loading with a report, and saving with metadata (see weights.h).
#include "models/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/pth.h"
#include "io/utf8.h"
#include "models/convert.h"

namespace tl::models {
namespace {

enum class WeightsFormat { Pth, Safetensors, Unknown };
// Recognises the format from the first bytes; `what` describes an unknown file.
WeightsFormat sniff(const std::string& path, std::string* what) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  TL_CHECK(f.good(), IOError, path, ": cannot open file");
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  unsigned char head[512] = {};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(size, sizeof(head)));
  f.read(reinterpret_cast<char*>(head), static_cast<std::streamsize>(n));
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return WeightsFormat::Pth;
  // Safetensors before pickle: a safetensors header length's low byte is 0x80 in 1 file of 256 (a legacy .pth,
  // 0x80 0x02 0x8a ..., never has '{' at byte 8).
  uint64_t header_len = 0;
  for (int i = 7; i >= 0 && n >= 8; --i) header_len = (header_len << 8) | head[i];
  if (n >= 9 && header_len <= size - 8 && head[8] == '{') return WeightsFormat::Safetensors;
  if (n >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) return WeightsFormat::Pth;  // pickle PROTO 2..5
  *what = io::describe_content(head, n);
  return WeightsFormat::Unknown;
}

// tlengine names and, when recognised, metadata arch / num_classes for a foreign state dict.
io::TensorFile normalize_foreign(const io::TensorFile& in, const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> state;
  for (const std::string& n : in.names) state.emplace_back(n, in.at(n));
  try {
    state = normalize_state(state);
  } catch (const ValueError& e) {
    throw IOError(path + ": " + e.what());
  }
  io::TensorFile out;
  out.metadata = in.metadata;
  std::map<std::string, Shape> shapes;
  for (const auto& [k, t] : state) {
    out.names.push_back(k);
    out.tensors[k] = t;
    shapes[k] = t.shape();
  }
  try {
    DetectedArch det = detect_arch(shapes);
    out.metadata["arch"] = det.arch;
    if (det.num_classes > 0) out.metadata["num_classes"] = std::to_string(det.num_classes);
  } catch (const ValueError&) {
    // Unrecognised keys: no arch; loading into a model reports what does not fit.
  }
  return out;
}
}  // namespace

io::TensorFile read_weights_file(const std::string& path) {
  std::string what;
  switch (sniff(path, &what)) {
    case WeightsFormat::Pth: return normalize_foreign(io::read_pth(path), path);
    case WeightsFormat::Safetensors: {
      io::TensorFile f = io::read_safetensors(path);
      return f.metadata.count("arch") ? f : normalize_foreign(f, path);
    }
    case WeightsFormat::Unknown: break;
  }
  throw IOError(path + ": not a weights file tlengine reads: it looks like " + what +
                ". Expected a tlengine .bin, a safetensors file, or a PyTorch .pth state dict saved with "
                "torch.save(model.state_dict(), path)");
}

std::string LoadReport::summary() const {
  std::ostringstream os;
  os << "loaded " << loaded.size() << " tensors";
  if (dropped_aux) os << "; the file has no auxiliary classifiers, so they are dropped (as --no-aux)";
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
  // Weights without the auxiliary classifiers (torchvision's pretrained GoogLeNet as its users save it): the
  // model drops them too, as torchvision does for aux_logits=False.
  if (model.has_aux()) {
    bool any = false;
    for (const std::string& m : model.aux_modules())
      for (const std::string& name : file.names) any = any || name.rfind(m + ".", 0) == 0;
    if (!any) {
      model.drop_aux();
      report.dropped_aux = true;
    }
  }
  std::vector<std::string> problems;
  const std::string head = model.head_name();
  std::set<std::string> known;
  for (nn::StateEntry& e : model.state()) {
    known.insert(e.name);
    if (!file.has(e.name)) {
      report.missing.push_back(e.name);
      // Files older than PyTorch 0.4.1 have no num_batches_tracked; PyTorch loads them with the counter at 0.
      if (!model.in_head(e.name) && !e.counter) problems.push_back("missing " + e.name);
      continue;
    }
    const Tensor& src = file.at(e.name);
    if (src.shape() != e.shape()) {
      std::string line = e.name + ": file " + shape_str(src.shape()) + " vs model " + shape_str(e.shape());
      report.skipped.push_back(line);
      if (!model.in_head(e.name)) problems.push_back("shape mismatch " + line);
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
    if (!model.in_head(name)) problems.push_back("unexpected " + name);
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
    return load_weights(model, read_weights_file(path), options);
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
