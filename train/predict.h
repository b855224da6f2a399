// Inference for `tlengine predict`: a weights file plus images (files or folders) or a NumPy batch in; the top-k
// classes per image as JSON or CSV, and optionally the raw logits as .npy, out.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

#include "models/model.h"

namespace tl::train {

struct PredictOptions {
  std::string weights;              // tlengine weights file (metadata names the architecture and classes)
  std::vector<std::string> inputs;  // image files or folders (searched recursively for image files)
  std::string npy;                  // or a float32 (N, 3, H, W) batch, already normalised
  int topk = 5;
  std::string format = "json";  // json | csv
  std::string logits;           // optional .npy output of the raw logits (N, C)
  std::string device = "auto";
  int64_t batch_size = 32;
  std::string val_transform = "crop";  // crop: Resize(256) + CenterCrop(224); resize: Resize((224, 224))
  int image_size = 0;  // 0: the architecture's (224, inception_v3 299)
  bool allow_nonfinite_weights = false;  // accept weights with NaN / Inf values (refused by default)
};

// A model with the architecture and class names stored in a tlengine weights file, weights loaded.
struct LoadedModel {
  std::unique_ptr<models::Model> model;
  std::vector<std::string> classes;
};
LoadedModel load_model(const std::string& weights_path, bool allow_nonfinite = false);

// Writes the predictions to `out`; returns the number of images.
int64_t run_predict(const PredictOptions& options, std::ostream& out, std::ostream& log);

}  // namespace tl::train
