// `tlengine inspect` (see inspect.h).
#include "train/inspect.h"

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <ostream>
#include <sstream>

#include "core/autograd.h"
#include "core/device.h"
#include "core/error.h"
#include "core/memory.h"
#include "io/utf8.h"
#include "layers/mac_counter.h"
#include "models/registry.h"
#include "models/weights.h"
#include "train/bench.h"
#include "train/flops.h"
#include "train/freeze.h"
#include "train/plot.h"
#include "train/report.h"
#include "train/trainer.h"

namespace tl::train {
namespace {

// The class name of a module without namespaces: "Block", "Sequential", "ResNet".
std::string type_name(const nn::Module& m) {
  const char* mangled = typeid(m).name();
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string name = status == 0 && demangled ? demangled.get() : mangled;
  const size_t colon = name.rfind("::");
  return colon == std::string::npos ? name : name.substr(colon + 2);
}

std::string pair_str(int a, int b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

// The arguments PyTorch's repr prints for the modules with state.
std::string module_args(const nn::Module& m) {
  std::ostringstream os;
  if (const auto* c = dynamic_cast<const nn::Conv2d*>(&m)) {
    const Shape& w = c->weight.shape();
    const Conv2dOptions& o = c->options;
    os << w[1] * o.groups << ", " << w[0] << ", kernel_size=" << pair_str(static_cast<int>(w[2]), static_cast<int>(w[3]))
       << ", stride=" << pair_str(o.stride_h, o.stride_w);
    if (o.pad_h || o.pad_w) os << ", padding=" << pair_str(o.pad_h, o.pad_w);
    if (o.dilation_h != 1 || o.dilation_w != 1) os << ", dilation=" << pair_str(o.dilation_h, o.dilation_w);
    if (o.groups != 1) os << ", groups=" << o.groups;
    if (!c->bias.defined()) os << ", bias=False";
  } else if (const auto* b = dynamic_cast<const nn::BatchNorm2d*>(&m)) {
    os << b->weight.shape()[0] << ", eps=" << b->eps << ", momentum=" << b->momentum;
  } else if (const auto* l = dynamic_cast<const nn::Linear*>(&m)) {
    os << "in_features=" << l->weight.shape()[1] << ", out_features=" << l->weight.shape()[0]
       << ", bias=" << (l->bias.defined() ? "True" : "False");
  } else if (const auto* d = dynamic_cast<const nn::Dropout*>(&m)) {
    os << "p=" << d->p;
  }
  return os.str();
}

bool within(const std::string& name, const std::string& prefix) {
  return prefix.empty() || name == prefix || name.rfind(prefix + ".", 0) == 0;
}

// The ops of one eval-mode forward pass of a single image, each named by its weight's module.
struct RecordedOp {
  std::string module;
  Shape input, output;
};

// The ops `counter` recorded, each named by its weight's module.
std::vector<RecordedOp> recorded_ops(models::Model& model, const MacCounter& counter) {
  std::map<const void*, std::string> names;  // weight storage -> module name
  for (auto& [name, p] : model.named_parameters())
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0)
      names[p.value().data()] = name.substr(0, name.size() - 7);
  std::vector<RecordedOp> ops;
  for (const OpMacs& op : counter.ops()) {
    auto it = names.find(op.weight);
    ops.push_back({it == names.end() ? "?" : it->second, op.input, op.output});
  }
  return ops;
}

struct OutputShape {
  Shape shape;
  bool exact = true;
};

// Output shapes by the rules of inspect.h. `has_params`: the modules that hold parameters.
std::map<std::string, OutputShape> output_shapes(models::Model& model, int64_t image_size,
                                                 const std::vector<std::string>& tree_order,
                                                 const std::set<std::string>& has_params) {
  ModelStateSnapshot snapshot(model);
  model.eval();
  NoGradGuard no_grad;
  const Tensor& any = model.named_parameters().front().second.value();
  const Tensor image = Tensor::zeros({1, 3, image_size, image_size}, any.dtype(), any.device());
  MacCounter counter;
  const Shape logits = model.forward(Variable(image)).shape();
  const std::vector<RecordedOp> ops = recorded_ops(model, counter);
  std::map<std::string, OutputShape> out;
  for (const std::string& name : tree_order) {
    size_t last = ops.size();
    for (size_t k = 0; k < ops.size(); ++k)
      if (within(ops[k].module, name)) last = k;
    if (last == ops.size()) continue;
    // A container: its last op's output, exact when the next op takes that shape, or when it is the last op and
    // gives the logits' shape (nothing after the last op inside the module changed it).
    const bool leaf = ops[last].module == name;
    const bool passed_on = last + 1 < ops.size() ? ops[last + 1].input == ops[last].output : ops[last].output == logits;
    out[name] = {ops[last].output, leaf || passed_on};
  }
  out[""] = {logits, true};
  const std::vector<std::string> cuts = model.cut_points();
  for (size_t i = 0; i < cuts.size(); ++i) out[cuts[i]] = {model.run_until(Variable(image), i).shape(), true};
  // Modules without ops nor parameters (Dropout, an identity here): the input of the first op of a later module.
  for (size_t i = 0; i < tree_order.size(); ++i) {
    if (out.count(tree_order[i]) || has_params.count(tree_order[i])) continue;
    for (size_t j = i + 1; j < tree_order.size() && !out.count(tree_order[i]); ++j)
      for (const RecordedOp& op : ops)
        if (op.module == tree_order[j]) {
          out[tree_order[i]] = {op.input, false};
          break;
        }
  }
  return out;
}

std::string shape_text(const Shape& s) {
  if (s.empty()) return "-";
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace

ModelTree inspect_model(models::Model& model, int64_t image_size) {
  image_size = models::input_size(model.arch(), static_cast<int>(image_size)).crop;
  ModelTree t;
  t.arch = model.arch();
  t.num_classes = model.num_classes();
  t.input = {1, 3, image_size, image_size};
  t.heads = model.head_names();
  t.blocks = model.blocks();
  const auto params = model.named_parameters();
  std::vector<std::string> order;
  for (auto& [name, m] : model.named_modules()) {
    ModuleInfo info;
    info.name = name;
    info.type = type_name(*m);
    info.args = module_args(*m);
    info.depth = name.empty() ? 0 : 1 + static_cast<int>(std::count(name.begin(), name.end(), '.'));
    for (auto& [pname, p] : params)
      if (within(pname, name)) info.params += numel_of(p.shape());
    info.head = std::find(t.heads.begin(), t.heads.end(), name) != t.heads.end();
    info.block = std::find(t.blocks.begin(), t.blocks.end(), name) != t.blocks.end();
    order.push_back(name);
    t.modules.push_back(info);
  }
  std::set<std::string> has_params;
  for (const ModuleInfo& m : t.modules)
    if (m.params > 0) has_params.insert(m.name);
  const std::map<std::string, OutputShape> shapes = output_shapes(model, image_size, order, has_params);
  for (ModuleInfo& m : t.modules) {
    auto it = shapes.find(m.name);
    if (it != shapes.end()) m.output = it->second.shape, m.output_exact = it->second.exact;
  }
  t.total_params = t.modules.front().params;
  return t;
}

nlohmann::json ModelTree::to_json() const {
  nlohmann::json mods = nlohmann::json::array();
  for (const ModuleInfo& m : modules)
    mods.push_back({{"name", m.name}, {"type", m.type}, {"args", m.args}, {"depth", m.depth}, {"output_shape", m.output},
                    {"output_shape_exact", m.output_exact},
                    {"params", m.params}, {"head", m.head}, {"block", m.block}});
  return {{"arch", arch}, {"num_classes", num_classes}, {"input_shape", input}, {"total_params", total_params},
          {"heads", heads}, {"blocks", blocks}, {"modules", mods}};
}

std::string ModelTree::to_text(int max_depth) const {
  std::vector<std::string> left;
  size_t width = 0;
  std::vector<const ModuleInfo*> shown;
  for (const ModuleInfo& m : modules) {
    if (max_depth >= 0 && m.depth > max_depth) continue;
    const std::string label = m.name.empty() ? arch : m.name.substr(m.name.rfind('.') + 1);
    std::string l = std::string(2 * static_cast<size_t>(m.depth), ' ') + "(" + label + "): " + m.type;
    if (m.name.empty()) l = arch + ": " + m.type;
    if (!m.args.empty()) l += "(" + m.args + ")";
    left.push_back(l);
    shown.push_back(&m);
    width = std::max(width, l.size());
  }
  width = std::min<size_t>(width, 100);
  std::ostringstream os;
  os << arch << ": input " << shape_text(input) << ", " << with_commas(total_params) << " parameters, " << num_classes
     << " classes\n";
  char buf[64];
  std::snprintf(buf, sizeof buf, "  %-22s %14s\n", "output shape", "params");
  os << std::string(width, ' ') << buf;
  bool any_inexact = false;
  for (size_t i = 0; i < shown.size(); ++i) {
    const ModuleInfo& m = *shown[i];
    std::string l = left[i];
    if (l.size() < width) l += std::string(width - l.size(), ' ');
    const std::string shape = shape_text(m.output) + (m.output_exact || m.output.empty() ? "" : "*");
    any_inexact = any_inexact || shape.back() == '*';
    std::snprintf(buf, sizeof buf, "  %-22s %14s", shape.c_str(), with_commas(m.params).c_str());
    os << l << buf;
    if (m.block) os << "  [block]";
    if (m.head) os << "  <- head";
    os << "\n";
  }
  if (any_inexact)
    os << "*: the output of the last conv, linear or batch norm inside: a pooling, concatenation or shuffle after it\n"
          "   (a function, not a module, in tlengine) is not seen, so torchvision's shape may differ\n";
  os << "heads: ";
  for (size_t i = 0; i < heads.size(); ++i) os << (i ? ", " : "") << heads[i];
  os << "\nblocks (freeze points, --freeze until=<block>): ";
  for (size_t i = 0; i < blocks.size(); ++i) os << (i ? ", " : "") << blocks[i];
  os << "\n";
  return os.str();
}

namespace {
std::string file_format(const std::string& path, const std::map<std::string, std::string>& meta) {
  auto f = meta.find("format");
  if (f != meta.end() && f->second == "tlengine") return "tlengine";
  std::ifstream in(path, std::ios::binary);
  char head[2] = {0, 0};
  in.read(head, 2);
  const bool zip = head[0] == 'P' && head[1] == 'K', pickle = static_cast<unsigned char>(head[0]) == 0x80;
  return zip || pickle ? "pytorch" : "safetensors";
}
}  // namespace

WeightsInfo inspect_weights(const std::string& path) {
  const io::TensorFile file = models::read_weights_file(path);
  WeightsInfo w;
  w.path = path;
  w.metadata = file.metadata;
  w.format = file_format(path, file.metadata);
  w.tensors = file.names.size();
  auto arch = file.metadata.find("arch");
  TL_CHECK(arch != file.metadata.end(), IOError, path,
           ": no architecture recognised from the file's names and shapes; inspect it with --arch after converting "
           "(tools/convert_pth)");
  w.arch = arch->second;
  const std::string& head_weight = models::arch_spec(w.arch).head_weight;
  if (file.has(head_weight)) w.num_classes = file.at(head_weight).size(0);
  auto classes = w.metadata.find("classes");
  if (classes != w.metadata.end()) {
    w.classes = io::decode_names(classes->second, path);
    w.metadata.erase(classes);
  }
  return w;
}

nlohmann::json WeightsInfo::to_json() const {
  return {{"path", path}, {"format", format}, {"arch", arch}, {"num_classes", num_classes}, {"classes", classes},
          {"metadata", metadata}, {"tensors", tensors}};
}

std::string WeightsInfo::to_text() const {
  std::ostringstream os;
  os << path << ": " << format << " weights, " << tensors << " tensors\n  architecture: " << arch
     << "\n  classes: " << num_classes;
  if (!classes.empty()) {
    os << " (";
    for (size_t i = 0; i < classes.size() && i < 20; ++i) os << (i ? ", " : "") << classes[i];
    if (classes.size() > 20) os << ", ... " << classes.size() - 20 << " more";
    os << ")";
  }
  os << "\n";
  for (const auto& [k, v] : metadata)
    if (k != "arch" && k != "num_classes" && k != "format") os << "  " << k << ": " << (v.size() > 200 ? v.substr(0, 200) + "..." : v) << "\n";
  return os.str();
}

// ---- freeze costs ----

std::vector<std::string> freeze_points(models::Model& model) {
  auto trainable_after = [&model](const std::string& freeze) {
    FreezeOptions fo;
    fo.freeze = freeze;
    return apply_freeze(model, fo).trainable_params;
  };
  const int64_t backbone = trainable_after("backbone");
  std::vector<std::string> points{"none"};
  for (const std::string& b : model.blocks()) {
    if (model.in_head(b + ".weight") || model.in_head(b)) continue;
    const std::string p = "until=" + b;
    if (trainable_after(p) != backbone) points.push_back(p);
  }
  points.push_back("backbone");
  trainable_after("none");
  return points;
}

namespace {

// What a train-mode forward pass of `batch` blank images holds on the allocator above what was live before it:
// `kept`, the bytes still held by the tape and the logits at its end, and `peak`, the most it held at once
// (kept plus the transient buffers of the op being run: its output, convolution workspaces). And the tape in
// recording order: each entry's saved bytes and the bytes of the parameter gradients its backward creates.
struct ForwardBytes {
  double kept = 0, peak = 0;
  std::vector<double> saved, grads;  // per tape entry
};
ForwardBytes forward_bytes(models::Model& model, int64_t batch, int64_t size, Layout layout) {
  const Tensor& any = model.named_parameters().front().second.value();
  const Device dev = any.device();
  std::map<const GradNode*, double> param_bytes;
  for (auto& [name, p] : model.named_parameters())
    if (p.trainable()) param_bytes[p.node().get()] = static_cast<double>(p.value().numel() * dtype_size(p.value().dtype()));
  const Tensor images = Tensor::zeros({batch, 3, size, size}, any.dtype(), dev).to(dev, any.dtype(), layout);
  const double before = static_cast<double>(memory_stats(dev).current_bytes);
  reset_peak_memory(dev);
  Tape tape;
  TapeScope scope(tape);
  const Variable logits = model.forward(Variable(images));
  model.take_aux_logits();  // freed with the loss
  const MemoryStats m = memory_stats(dev);
  ForwardBytes f{static_cast<double>(m.current_bytes) - before, static_cast<double>(m.peak_bytes) - before, {}, {}};
  for (const TapeEntry& e : tape.entries()) {
    double g = 0;
    for (const auto& in : e.inputs) {
      auto it = in ? param_bytes.find(in.get()) : param_bytes.end();
      if (it != param_bytes.end()) g += it->second;
    }
    f.saved.push_back(static_cast<double>(e.saved_bytes));
    f.grads.push_back(g);
  }
  return f;
}

// The most the backward pass holds of activations and parameter gradients together: it runs the tape from the
// last entry to the first; each entry creates its parameters' gradients, then releases what it saved. `kept` is
// the saved bytes at the step's batch; the entries' own saved_bytes (which count a tensor saved by two ops twice)
// give only the order in which it is released.
void backward_peak(const ForwardBytes& probe, double kept, double& activations, double& grads) {
  double total = 0;
  for (double s : probe.saved) total += s;
  double released = 0, made = 0, best = -1;
  activations = kept;
  grads = 0;
  for (size_t k = probe.saved.size(); k-- > 0;) {
    made += probe.grads[k];
    const double alive = total > 0 ? kept * (1 - released / total) : 0;
    if (alive + made > best) best = alive + made, activations = alive, grads = made;
    released += probe.saved[k];
  }
}

// Bytes of the trainable parameters, and of every parameter and buffer.
void state_bytes(models::Model& model, double& trainable, double& all) {
  trainable = all = 0;
  for (nn::StateEntry& e : model.state()) {
    const Tensor* t = e.param ? &e.param->value() : e.buffer;
    if (!t) continue;
    const double b = static_cast<double>(t->numel() * dtype_size(t->dtype()));
    all += b;
    if (e.param && e.param->trainable()) trainable += b;
  }
}

FreezePointCost predict_point(models::Model& model, const std::string& freeze, const FreezeCostOptions& o,
                              int64_t size, Layout layout) {
  FreezeOptions fo;
  fo.freeze = freeze;
  FreezePointCost c;
  c.freeze = freeze;
  c.trainable_params = apply_freeze(model, fo).trainable_params;
  const StepFlops f = count_step_flops(model, o.batch, size, size);
  c.flops_forward = f.forward;
  c.flops_backward_data = f.backward_data;
  c.flops_backward_weight = f.backward_weight;
  double trainable = 0;
  state_bytes(model, trainable, c.weights_bytes);
  c.grad_bytes = trainable;
  c.optimizer_bytes = (o.optimizer == "sgd" ? 1 : 2) * trainable;
  c.batch_bytes = static_cast<double>(o.batch) * (3.0 * static_cast<double>(size * size) * 4 + 4);
  {
    ModelStateSnapshot snapshot(model);
    model.train();
    const ForwardBytes at2 = forward_bytes(model, 2, size, layout), at4 = forward_bytes(model, 4, size, layout);
    // Linear in the batch, through the probes at 2 and 4 images.
    auto at_batch = [&o](double v2, double v4) {
      return std::max(0.0, v2 + (v4 - v2) / 2 * static_cast<double>(o.batch - 2));
    };
    c.saved_bytes = at_batch(at2.kept, at4.kept);
    c.workspace_bytes = std::max(0.0, at_batch(at2.peak, at4.peak) - c.saved_bytes);
    double acts = 0, grads = 0;
    backward_peak(at4, c.saved_bytes, acts, grads);
    if (acts + grads > c.saved_bytes + c.workspace_bytes) {
      c.activations_at_peak = acts, c.grads_at_peak = grads;
    } else {
      c.activations_at_peak = c.saved_bytes + c.workspace_bytes, c.grads_at_peak = 0;
    }
  }
  return c;
}

}  // namespace

FreezeCosts freeze_costs(models::Model& model, const FreezeCostOptions& o, std::ostream& log) {
  TL_CHECK(o.batch >= 1, ValueError, "inspect --freeze-costs: --batch-size must be >= 1, got ", o.batch);
  TL_CHECK(o.optimizer == "sgd" || o.optimizer == "adam" || o.optimizer == "adamw", ValueError,
           "inspect --freeze-costs: --optimizer must be sgd, adam or adamw, got '", o.optimizer, "'");
  FreezeCosts fc;
  fc.arch = model.arch();
  fc.optimizer = o.optimizer;
  fc.batch = o.batch;
  fc.image_size = models::input_size(model.arch(), static_cast<int>(o.image_size)).crop;
  fc.num_classes = model.num_classes();
  // The probes run where and how bench and train run the model: its device, fp32 in the layout --memory-format
  // auto picks (NHWC on the CPU).
  const Device dev = parse_device(o.device);
  const Precision prec = parse_precision("fp32", dev, "auto");
  model.to(dev, prec.layout);
  for (const std::string& p : freeze_points(model)) {
    fc.points.push_back(predict_point(model, p, o, fc.image_size, prec.layout));
    if (o.measure) {
      BenchOptions bo;
      bo.model = model.arch();
      bo.freeze = p;
      bo.batch = o.batch;
      bo.image_size = fc.image_size;
      bo.classes = model.num_classes();
      bo.warmup = o.warmup;
      bo.steps = o.steps;
      bo.device = o.device;
      const double live = static_cast<double>(memory_stats(dev).current_bytes);  // this model, not the bench's
      const BenchResult r = run_bench(bo, log);
      FreezePointCost& c = fc.points.back();
      c.measured = true;
      c.step_ms = r.median_ms;
      c.peak_bytes = static_cast<double>(r.peak_bytes) - live;
      fc.device = r.device;
    }
  }
  FreezeOptions all;
  fc.total_params = apply_freeze(model, all).total_params;
  return fc;
}

nlohmann::json FreezeCosts::to_json() const {
  nlohmann::json pts = nlohmann::json::array();
  for (const FreezePointCost& c : points) {
    nlohmann::json j = {{"freeze", c.freeze},
                        {"trainable_params", c.trainable_params},
                        {"gflop_forward", c.flops_forward / 1e9},
                        {"gflop_backward_data", c.flops_backward_data / 1e9},
                        {"gflop_backward_weight", c.flops_backward_weight / 1e9},
                        {"gflop_per_step", c.flops() / 1e9},
                        {"weights_bytes", c.weights_bytes},
                        {"grad_bytes", c.grad_bytes},
                        {"optimizer_bytes", c.optimizer_bytes},
                        {"batch_bytes", c.batch_bytes},
                        {"saved_activation_bytes", c.saved_bytes},
                        {"workspace_bytes", c.workspace_bytes},
                        {"activations_at_peak_bytes", c.activations_at_peak},
                        {"grads_at_peak_bytes", c.grads_at_peak},
                        {"predicted_peak_bytes", c.predicted_peak_bytes()}};
    if (c.measured) {
      j["measured_step_ms"] = c.step_ms;
      j["measured_peak_bytes"] = c.peak_bytes;
    }
    pts.push_back(j);
  }
  return {{"arch", arch},   {"optimizer", optimizer},     {"batch", batch},   {"image_size", image_size},
          {"classes", num_classes}, {"total_params", total_params}, {"device", device}, {"points", pts}};
}

std::string FreezeCosts::to_table() const {
  size_t w = 8;
  bool measured = false;
  for (const FreezePointCost& c : points) {
    w = std::max(w, c.freeze.size());
    measured = measured || c.measured;
  }
  std::ostringstream os;
  os << arch << ", batch " << batch << " at " << image_size << "x" << image_size << ", " << num_classes
     << " classes, optimizer " << optimizer << (device.empty() ? "" : ", measured on " + device) << "\n";
  char buf[300];
  std::snprintf(buf, sizeof buf, "%-*s %11s %8s %8s %8s %8s | %8s %8s %8s %8s %8s %8s", static_cast<int>(w), "freeze",
                "trainable", "GFLOP", "fwd", "bwd-dat", "bwd-wt", "MB saved", "workspc", "weights", "grad+opt", "pred MB",
                measured ? "meas MB" : "");
  os << buf << (measured ? "  ms/step" : "") << "\n";
  for (const FreezePointCost& c : points) {
    std::snprintf(buf, sizeof buf, "%-*s %11s %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f %8.1f", static_cast<int>(w),
                  c.freeze.c_str(), with_commas(c.trainable_params).c_str(), c.flops() / 1e9, c.flops_forward / 1e9,
                  c.flops_backward_data / 1e9, c.flops_backward_weight / 1e9, c.saved_bytes / 1e6, c.workspace_bytes / 1e6,
                  c.weights_bytes / 1e6, (c.grad_bytes + c.optimizer_bytes) / 1e6, c.predicted_peak_bytes() / 1e6);
    os << buf;
    if (c.measured) {
      std::snprintf(buf, sizeof buf, " %8.1f %8.1f", c.peak_bytes / 1e6, c.step_ms);
      os << buf;
    }
    os << "\n";
  }
  return os.str();
}

// ---- the bar chart ----

namespace {
struct BarPart {
  std::string name;
  std::vector<double> values;  // one per freeze point
};

// Horizontal stacked bars, one row per freeze point, with a value axis under them and a legend on top. `marks`
// (NaN: none) draws a black tick per row (a measured value).
void draw_bars(Canvas& cv, const PanelBox& box, const std::string& title, const std::vector<std::string>& rows,
               const std::vector<BarPart>& parts, const std::vector<double>& marks, const std::string& unit,
               float label_w) {
  constexpr float kScale = 1.5f;
  std::vector<double> totals(rows.size(), 0.0);
  for (const BarPart& p : parts)
    for (size_t i = 0; i < rows.size(); ++i) totals[i] += p.values[i];
  std::vector<double> all = totals;
  for (double m : marks)
    if (std::isfinite(m)) all.push_back(m);
  all.push_back(0);
  const Axis ax = value_axis(all, 0, 1e300, 1);
  cv.text(box.x, box.y, title, kText, 2.0f);
  // Legend.
  float lx = box.x, ly = box.y + 24;
  for (size_t k = 0; k < parts.size(); ++k) {
    const float tw = Canvas::text_width(parts[k].name, kScale);
    if (lx + 16 + tw > box.x + box.w) lx = box.x, ly += 16;
    cv.fill_rect(lx, ly, lx + 11, ly + 11, kPalette[k]);
    cv.text(lx + 15, ly + 1, parts[k].name, kText, kScale);
    lx += 30 + tw;
  }
  bool any_mark = false;
  for (double m : marks) any_mark = any_mark || std::isfinite(m);
  if (any_mark) {
    const float tw = Canvas::text_width("measured", kScale);
    if (lx + 16 + tw > box.x + box.w) lx = box.x, ly += 16;
    cv.fill_rect(lx + 4, ly - 1, lx + 7, ly + 12, {0, 0, 0});
    cv.text(lx + 15, ly + 1, "measured", kText, kScale);
  }
  const float top = ly + 24, plot_x = box.x + label_w, plot_w = box.w - label_w - 10;
  const float bottom = box.y + box.h - 34;
  const float row_h = (bottom - top) / static_cast<float>(std::max<size_t>(rows.size(), 1));
  auto xpos = [&](double v) { return plot_x + static_cast<float>((v - ax.lo) / (ax.hi - ax.lo)) * plot_w; };
  for (double t : ax.ticks()) {
    cv.line(xpos(t), top, xpos(t), bottom, 1, kGrid);
    cv.text_centered(xpos(t), bottom + 10, ax.label(t), kText, kScale);
  }
  cv.text_centered(plot_x + plot_w / 2, bottom + 26, unit, kText, kScale);
  for (size_t i = 0; i < rows.size(); ++i) {
    const float y0 = top + row_h * static_cast<float>(i) + row_h * 0.18f, y1 = top + row_h * static_cast<float>(i + 1) - row_h * 0.18f;
    cv.text_right(plot_x - 8, (y0 + y1) / 2, fit_text(rows[i], label_w - 12, kScale), kText, kScale);
    double acc = 0;
    for (size_t k = 0; k < parts.size(); ++k) {
      cv.fill_rect(xpos(acc), y0, xpos(acc + parts[k].values[i]), y1, kPalette[k]);
      acc += parts[k].values[i];
    }
    if (i < marks.size() && std::isfinite(marks[i]))
      cv.fill_rect(xpos(marks[i]) - 1.5f, y0 - 3, xpos(marks[i]) + 1.5f, y1 + 3, {0, 0, 0});
  }
  cv.line(plot_x, top, plot_x, bottom, 1, kAxis);
  cv.line(plot_x, bottom, plot_x + plot_w, bottom, 1, kAxis);
}
}  // namespace

void write_freeze_costs_png(const FreezeCosts& costs, const std::string& path) {
  std::vector<std::string> rows;
  float label_w = 60;
  for (const FreezePointCost& c : costs.points) {
    rows.push_back(c.freeze);
    label_w = std::max(label_w, Canvas::text_width(c.freeze, 1.5f) + 14);
  }
  label_w = std::min(label_w, 260.0f);
  const int row_px = 26;
  const int height = 150 + row_px * static_cast<int>(rows.size());
  Canvas cv(1200, height, kWhite);
  const std::string title = costs.arch + ", batch " + std::to_string(costs.batch) + ", " +
                            std::to_string(costs.image_size) + " px, " + costs.optimizer +
                            (costs.device.empty() ? "" : ", " + costs.device);
  cv.text(10, 8, "What each freeze point costs: " + title, kText, 2.0f);
  auto column = [&costs](auto get) {
    std::vector<double> v;
    for (const FreezePointCost& c : costs.points) v.push_back(get(c));
    return v;
  };
  const std::vector<BarPart> flops = {
      {"forward", column([](const FreezePointCost& c) { return c.flops_forward / 1e9; })},
      {"backward data", column([](const FreezePointCost& c) { return c.flops_backward_data / 1e9; })},
      {"backward weight", column([](const FreezePointCost& c) { return c.flops_backward_weight / 1e9; })}};
  const std::vector<BarPart> memory = {
      {"weights", column([](const FreezePointCost& c) { return c.weights_bytes / 1e6; })},
      {"optimizer", column([](const FreezePointCost& c) { return c.optimizer_bytes / 1e6; })},
      {"batch", column([](const FreezePointCost& c) { return c.batch_bytes / 1e6; })},
      {"activations", column([](const FreezePointCost& c) { return c.activations_at_peak / 1e6; })},
      {"gradients", column([](const FreezePointCost& c) { return c.grads_at_peak / 1e6; })}};
  const std::vector<double> measured =
      column([](const FreezePointCost& c) { return c.measured ? c.peak_bytes / 1e6 : std::nan(""); });
  const float panel_h = static_cast<float>(height - 36);
  draw_bars(cv, {10, 36, 570, panel_h}, "GFLOP per training step", rows, flops, {}, "GFLOP", label_w);
  draw_bars(cv, {610, 36, 580, panel_h}, "Peak memory of a step (predicted, at the peak)", rows, memory, measured, "MB", label_w);
  write_png_atomic(path, cv.image());
}

}  // namespace tl::train
