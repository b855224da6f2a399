// `tlengine predict` (see predict.h).
#include "train/predict.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <ostream>

#include "core/device.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/npy.h"
#include "io/transforms.h"
#include "io/utf8.h"
#include "models/registry.h"
#include "models/weights.h"
#include "train/trainer.h"

namespace tl::train {
namespace fs = std::filesystem;
using nlohmann::json;

LoadedModel load_model(const std::string& path, bool allow_nonfinite) {
  io::TensorFile file = models::read_weights_file(path);
  auto arch = file.metadata.find("arch");
  TL_CHECK(arch != file.metadata.end(), IOError, path,
           ": the file names no architecture in its metadata; convert .pth files with tools/convert_pth");
  // The class count: the main head's weight in the file, whatever the architecture calls its head.
  const std::string& head_weight = models::arch_spec(arch->second).head_weight;
  TL_CHECK(file.has(head_weight), IOError, path, ": no classifier weights (", head_weight, ") in the file");
  const int64_t num_classes = file.at(head_weight).size(0);
  LoadedModel lm;
  lm.model = models::create_model(arch->second, num_classes, 0);
  models::load_weights(*lm.model, file, models::LoadOptions{false, allow_nonfinite});
  auto classes = file.metadata.find("classes");
  if (classes != file.metadata.end()) lm.classes = io::decode_names(classes->second, path);
  if (static_cast<int64_t>(lm.classes.size()) != num_classes) {
    lm.classes.clear();
    for (int64_t i = 0; i < num_classes; ++i) lm.classes.push_back(std::to_string(i));
  }
  return lm;
}

namespace {
// A quoted CSV field (RFC 4180: quotes doubled), escaped for display.
std::string csv_field(const std::string& s) {
  std::string out = "\"";
  for (char ch : io::printable(s)) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    TL_CHECK(fs::exists(in), IOError, in, ": no such file or folder");
    if (fs::is_directory(in)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(in))
        if (e.is_regular_file() && io::has_image_extension(e.path().filename().string())) found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      TL_CHECK(!found.empty(), IOError, in, ": the folder holds no image files");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(in);
    }
  }
  return files;
}
}  // namespace

int64_t run_predict(const PredictOptions& o, std::ostream& out, std::ostream& log) {
  TL_CHECK(o.format == "json" || o.format == "csv", ValueError, "--format must be json or csv, got '", o.format, "'");
  TL_CHECK(o.inputs.empty() != o.npy.empty(), ValueError, "give either image files/folders or --npy, not both");
  const Device dev = parse_device(o.device);
  LoadedModel lm = load_model(o.weights, o.allow_nonfinite_weights);
  const Precision prec = parse_precision("fp32", dev);
  lm.model->to(dev, prec.layout);
  lm.model->eval();
  const int64_t C = static_cast<int64_t>(lm.classes.size());
  const int k = static_cast<int>(std::min<int64_t>(std::max(o.topk, 1), C));

  // Inputs as batches of normalised (B, 3, H, W) float32.
  std::vector<std::string> names;
  std::vector<Tensor> batches;
  if (!o.npy.empty()) {
    Tensor x = io::read_npy(o.npy);
    TL_CHECK(x.ndim() == 4 && x.size(1) == 3, ShapeError, o.npy, ": expected a (N, 3, H, W) batch, got ",
             shape_str(x.shape()));
    for (int64_t i = 0; i < x.size(0); ++i) names.push_back(o.npy + "[" + std::to_string(i) + "]");
    batches.push_back(x);
  } else {
    const models::InputSize in = models::input_size(lm.model->arch(), o.image_size);
    const io::Compose t = o.val_transform == "resize" ? io::eval_resize_transform(in.crop)
                                                      : io::eval_transform(in.resize, in.crop);
    names = expand_inputs(o.inputs);
    TL_CHECK(t.output_size().has_value(), ValueError, "predict: the transform has no fixed output size");
    const io::Size2 size = *t.output_size();
    for (size_t start = 0; start < names.size(); start += static_cast<size_t>(o.batch_size)) {
      const size_t n = std::min(names.size() - start, static_cast<size_t>(o.batch_size));
      Tensor x = Tensor::empty({static_cast<int64_t>(n), 3, size.height, size.width});
      for (size_t i = 0; i < n; ++i) {
        io::Rng rng(0);
        t(io::decode_image(names[start + i]), rng, x.data_as<float>() + i * 3 * size.height * size.width);
      }
      batches.push_back(x);
    }
  }
  NoGradGuard no_grad;
  std::vector<Tensor> all_logits;
  for (const Tensor& x : batches)
    all_logits.push_back(lm.model->forward(Variable(x.to(dev, prec.dtype, prec.layout))).value().to(Device::CPU, DType::F32, Layout::NCHW));

  json result = json::array();
  if (o.format == "csv") out << "file,rank,class,index,probability\n";
  size_t row = 0;
  std::vector<double> flat;
  for (const Tensor& l : all_logits) {
    std::vector<double> v = l.to_doubles();
    flat.insert(flat.end(), v.begin(), v.end());
    for (int64_t i = 0; i < l.size(0); ++i, ++row) {
      const double* z = v.data() + i * C;
      const double mx = *std::max_element(z, z + C);
      double sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += std::exp(z[c] - mx);
      std::vector<int64_t> idx(static_cast<size_t>(C));
      for (int64_t c = 0; c < C; ++c) idx[static_cast<size_t>(c)] = c;
      std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return z[a] > z[b]; });
      json top = json::array();
      for (int r = 0; r < k; ++r) {
        const int64_t c = idx[static_cast<size_t>(r)];
        const double p = std::exp(z[c] - mx) / sum;
        // Names that are not UTF-8 are shown escaped (io/utf8.h), in the CSV as in the JSON.
        const std::string cls = io::printable(lm.classes[static_cast<size_t>(c)]);
        if (o.format == "csv")
          out << csv_field(names[row]) << "," << r + 1 << "," << csv_field(cls) << "," << c << "," << p << "\n";
        top.push_back({{"class", cls}, {"index", c}, {"probability", p}});
      }
      result.push_back({{"file", io::printable(names[row])}, {"top", top}});
    }
  }
  if (o.format == "json") out << result.dump(2) << "\n";
  if (!o.logits.empty()) {
    io::write_npy(o.logits, Tensor::from_values(flat, {static_cast<int64_t>(names.size()), C}));
    log << "wrote logits " << o.logits << " (" << names.size() << " x " << C << ")\n";
  }
  return static_cast<int64_t>(names.size());
}

}  // namespace tl::train
