// The architecture registry: every architecture is described once, in its own file under models/, by an ArchSpec
// that registers itself when the program starts (Caffe's layer factory). Everything else (train, eval, predict,
// bench, the converter's detection, the CLI help) asks the registry; no other file lists model names.
//
// Adding an architecture: one new models/<family>.cpp with the Model subclass and one `const ArchRegistrar`
// per name, plus its tests. The files under models/ are linked as objects, not through the static library, so a
// registrar is never dropped by the linker (CMakeLists.txt: tlengine_models).
//
// What a spec holds, and what the model instance answers itself (models/model.h):
//   spec:     the torchvision name, the family (README, --help), the factory, the recipe's input size (224; 299
//             for Inception v3) and the eval resize before the centre crop (256; 342).
//   instance: head_names() (the classifiers a new class count replaces, main one first), blocks() (the freeze
//             points of --freeze until=<block>), last_block() (bench --mode last_block), its state dict's names
//             and shapes (which is how detect_arch recognises a file: see models/convert.h).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/model.h"

namespace tl::models {

// A state dict's names and shapes, as detect_arch sees them.
using StateShapes = std::map<std::string, Shape>;

struct ArchSpec {
  std::string name;    // torchvision's function name, e.g. "mobilenet_v2"
  std::string family;  // e.g. "MobileNet V2"
  // A new model for `num_classes` classes, weights initialised as torchvision does (seeded).
  std::function<std::unique_ptr<Model>(int64_t num_classes, uint64_t seed)> create;
  int64_t input_size = 224;   // the crop the recipe trains and evaluates at
  int64_t resize_size = 256;  // eval: resize the shorter side to this, then centre-crop input_size
  // How a state dict of this architecture is recognised from its names and shapes (detect_arch, models/convert.h).
  std::function<bool(const StateShapes&)> matches;
  std::string head_weight;  // the main head's weight: its first dimension is the class count
  std::string probe;        // a key every state dict of the family has (for a family-level message when no name fits)
};

// Helpers for `matches`: the shape at `key` (nullptr when absent); how many distinct children `prefix` has
// ("layer1." -> 2 for resnet18's layer1.0 and layer1.1); `key`'s shape equals `shape`.
const Shape* shape_at(const StateShapes& s, const std::string& key);
int count_children(const StateShapes& s, const std::string& prefix);
bool has_shape(const StateShapes& s, const std::string& key, const Shape& shape);

// Registers a spec at static initialisation; duplicate names abort start-up with a message (a programming error).
class ArchRegistrar {
 public:
  explicit ArchRegistrar(ArchSpec spec);
};

// Every registered architecture, ordered by family then name as registered.
const std::vector<ArchSpec>& arch_specs();
// The spec of `arch`; ValueError listing the known names when there is none.
const ArchSpec& arch_spec(const std::string& arch);
bool is_model_name(const std::string& arch);
std::vector<std::string> model_names();
// "resnet18, resnet34, ..." for messages and --help.
std::string model_names_list();

// The crop and the eval resize for an --image-size of `requested`: 0 (or the architecture's own size) gives the
// architecture's (224 / 256; inception_v3 299 / 342); another size resizes by torchvision's 256/224 ratio.
struct InputSize {
  int crop = 224, resize = 256;
};
InputSize input_size(const std::string& arch, int requested);

// Architectures by torchvision's names. Weights are initialised as torchvision does (seeded).
std::unique_ptr<Model> create_model(const std::string& arch, int64_t num_classes = 1000, uint64_t seed = 0);

}  // namespace tl::models
