// Loading weights into a model and saving them: by name and shape, with a report of what was loaded, skipped
// (shape mismatch), missing and unexpected. A mismatch anywhere but the head is an error unless allowed.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "models/model.h"

namespace tl::models {

struct LoadOptions {
  // Accept mismatches outside the head (missing, unexpected or differently shaped tensors). Off by default:
  // a checkpoint of another architecture must not half-load silently.
  bool allow_mismatch = false;
  // Accept NaN or infinite values in floating-point tensors (--allow-nonfinite-weights). Off by default: such a
  // file (a diverged run, a corrupted download) would silently give NaN outputs.
  bool allow_nonfinite = false;
};

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> skipped;     // "name: file [a, b] vs model [c, d]"
  std::vector<std::string> missing;     // in the model, not in the file (keep their initial values)
  std::vector<std::string> unexpected;  // in the file, not in the model
  bool dropped_aux = false;             // the file has no auxiliary classifiers, so the model dropped its own
  std::string summary() const;          // multi-line, for the CLI
};

// Reads any weights file tlengine accepts, recognised by its content (not its extension): a tlengine .bin
// (safetensors with metadata), a plain safetensors file (timm, Hugging Face), or a PyTorch .pth state dict or
// checkpoint (zip or legacy layout, read natively by io/pth.h; nothing in it is executed). Foreign files get
// tlengine's names (normalize_state: "module." prefixes, legacy DenseNet names) and metadata "arch" and
// "num_classes" when detect_arch recognises them. Anything else throws IOError saying what the file looks like.
// train, eval and predict open weights through this.
io::TensorFile read_weights_file(const std::string& path);
// Throws ValueError naming the floating-point tensors of `file` that hold NaN or infinite values (with counts).
void check_finite_weights(const io::TensorFile& file);

// Copies matching tensors into `model` (converting dtype, device and layout). The head ("fc", "classifier",
// "classifier.6") may mismatch in shape: it then keeps its fresh initialisation (a new class count).
// Unless options.allow_nonfinite, a file with NaN or infinite values is refused (check_finite_weights).
LoadReport load_weights(Model& model, const io::TensorFile& file, const LoadOptions& options = {});
LoadReport load_weights(Model& model, const std::string& path, const LoadOptions& options = {});  // any format

// The model's state dict (parameters, buffers, num_batches_tracked as int64 scalars) as CPU tensors in
// torchvision order.
std::vector<std::pair<std::string, Tensor>> state_dict(Model& model);
// Writes a tlengine weights file: safetensors with metadata arch, num_classes, class names (JSON list)
// and a checksum. Atomic (temporary file, fsync, rename).
void save_weights(Model& model, const std::string& path, const std::vector<std::string>& class_names = {},
                  const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace tl::models
