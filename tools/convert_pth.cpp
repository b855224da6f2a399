// tools/convert_pth: PyTorch .pth <-> tlengine weights (safetensors layout).
//
//   convert_pth weights.pth out.bin [--arch NAME]     import a torchvision state dict
//   convert_pth --export weights.bin out.pth           export back to a state dict torchvision loads strictly
//
// Import reads the .pth natively (io/pth.h through models::read_weights_file: a restricted unpickler that runs
// nothing; zip and legacy layouts), so a .pth holding pickled code is refused. Accepted: a plain state dict, a
// checkpoint dict holding one under "state_dict", "model" or "model_state_dict", "module." prefixes, and
// torchvision's legacy DenseNet key names. Python (pybind11, Debian's PyTorch) is embedded only for --export.
#include <pybind11/embed.h>
#include <pybind11/numpy.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>

#include "io/safetensors.h"
#include "models/convert.h"
#include "models/model.h"
#include "models/registry.h"
#include "models/weights.h"

namespace py = pybind11;
using namespace tl;

namespace {

struct ConvertError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

py::module_ import_torch() {
  try {
    return py::module_::import("torch");
  } catch (const py::error_already_set& e) {
    throw ConvertError(std::string("PyTorch is needed to write .pth files (--export) but cannot be imported (") +
                       e.what() + "). On Debian: apt-get install python3-torch");
  }
}

int import_pth(const std::string& in, const std::string& out, const std::string& arch_opt) {
  if (!std::filesystem::exists(in)) throw ConvertError(in + ": no such file");
  // Native reader: nothing in the file is executed (io/pth.h); names normalised, arch detected when possible.
  const io::TensorFile file = models::read_weights_file(in);
  std::map<std::string, Shape> shapes;
  for (const auto& [k, t] : file.tensors) shapes[k] = t.shape();
  models::DetectedArch det;
  try {
    det = models::detect_arch(shapes);
  } catch (const ValueError& e) {
    if (arch_opt.empty()) throw ConvertError(in + ": " + e.what());
  }
  std::string arch = arch_opt.empty() ? det.arch : arch_opt;
  if (!arch_opt.empty() && !det.arch.empty() && det.arch != arch_opt)
    std::cerr << "warning: the keys look like " << det.arch << ", converting as --arch " << arch_opt << "\n";
  const int64_t classes = det.num_classes > 0 ? det.num_classes : 1000;
  auto model = models::create_model(arch, classes, 0);
  models::LoadReport report;
  try {
    report = models::load_weights(*model, file);  // strict: everything must fit, the head included
  } catch (const ValueError& e) {
    throw ConvertError(in + ": refused: " + e.what());
  }
  bool only_counters_missing = true;
  for (const auto& name : report.missing)
    only_counters_missing = only_counters_missing && name.size() > 19 &&
                            name.compare(name.size() - 19, 19, "num_batches_tracked") == 0;
  if (!only_counters_missing || !report.skipped.empty() || !report.unexpected.empty())
    throw ConvertError(in + ": refused: the state dict does not fit " + arch + ":\n" + report.summary());
  models::save_weights(*model, out, {}, {{"source", std::filesystem::path(in).filename().string()}});

  std::printf("%-60s %-20s %s\n", "tensor", "shape", "dtype");
  for (const auto& [k, t] : models::state_dict(*model))
    std::printf("%-60s %-20s %s\n", k.c_str(), shape_str(t.shape()).c_str(), dtype_name(t.dtype()));
  std::printf("wrote %s: %s, %lld classes, %zu tensors\n", out.c_str(), arch.c_str(),
              static_cast<long long>(classes), report.loaded.size());
  return 0;
}

int export_pth(const std::string& in, const std::string& out) {
  io::TensorFile file = io::read_safetensors(in);
  py::module_ torch = import_torch();
  py::module_ np = py::module_::import("numpy");
  py::module_ collections = py::module_::import("collections");
  py::object sd = collections.attr("OrderedDict")();
  for (const std::string& name : file.names) {
    const Tensor& t = file.at(name);
    const char* np_dtype = nullptr;
    switch (t.dtype()) {
      case DType::F32: np_dtype = "float32"; break;
      case DType::F64: np_dtype = "float64"; break;
      case DType::F16: np_dtype = "float16"; break;
      case DType::BF16: np_dtype = "int16"; break;
      case DType::I32: np_dtype = "int32"; break;
      case DType::I64: np_dtype = "int64"; break;
    }
    py::bytes raw(static_cast<const char*>(t.data()), t.nbytes());
    py::object arr = np.attr("frombuffer")(raw, py::arg("dtype") = np_dtype).attr("copy")();
    py::object tt = torch.attr("from_numpy")(arr);
    if (t.dtype() == DType::BF16) tt = tt.attr("view")(torch.attr("bfloat16"));
    py::list shape;
    for (int64_t d : t.shape()) shape.append(d);
    sd[py::str(name)] = tt.attr("reshape")(py::tuple(shape));
  }
  const std::string tmp = out + ".tmp";
  torch.attr("save")(sd, tmp);
  std::filesystem::rename(tmp, out);
  std::printf("wrote %s: %zu tensors\n", out.c_str(), file.names.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Convert PyTorch .pth state dicts to tlengine weights files, and back (--export)."};
  std::string in, out, arch;
  bool do_export = false;
  app.add_option("input", in, "weights.pth to convert (or weights.bin with --export)")->required();
  app.add_option("output", out, "output file")->required();
  app.add_option("--arch", arch, "architecture, when detection from the keys is not wanted");
  app.add_flag("--export", do_export, "tlengine weights -> PyTorch .pth state dict");
  CLI11_PARSE(app, argc, argv);
  if (!arch.empty() && !models::is_model_name(arch)) {
    std::cerr << "convert_pth: unknown --arch '" << arch << "'\n";
    return 2;
  }
  try {
    if (!do_export) return import_pth(in, out, arch);
    py::scoped_interpreter python;  // only to write a .pth
    return export_pth(in, out);
  } catch (const std::exception& e) {
    std::cerr << "convert_pth: " << e.what() << "\n";
    return 1;
  }
}
