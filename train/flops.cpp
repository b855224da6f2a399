// FLOP count of a training step (see flops.h): a symbolic walk of the ResNet, DenseNet and VGG graphs.
#include "train/flops.h"

#include <algorithm>
#include <map>

#include "core/error.h"

namespace tl::train {
namespace {

// What the walk tracks per activation: its channels and spatial size, and whether it needs a gradient.
struct Sym {
  int64_t c = 0, h = 0, w = 0;
  bool grad = false;
};

int64_t pooled(int64_t size, int kernel, int stride, int pad) { return (size + 2 * pad - kernel) / stride + 1; }

class Walker {
 public:
  Walker(models::Model& model, int64_t batch) : batch_(batch) {
    for (auto& [name, m] : model.named_modules()) modules_[name] = m;
  }

  bool has(const std::string& name) const { return modules_.count(name) > 0; }

  template <class M>
  M& get(const std::string& name) const {
    auto it = modules_.find(name);
    M* m = it == modules_.end() ? nullptr : dynamic_cast<M*>(it->second);
    TL_CHECK(m != nullptr, ValueError, "count_step_flops: the model has no layer '", name, "' of the expected kind");
    return *m;
  }

  Sym conv(const std::string& name, const Sym& in) {
    const nn::Conv2d& c = get<nn::Conv2d>(name);
    const Shape& ws = c.weight.shape();  // (K, C/groups, R, S)
    const Conv2dOptions& o = c.options;
    Sym out;
    out.c = ws[0];
    out.h = (in.h + 2 * o.pad_h - o.dilation_h * (ws[2] - 1) - 1) / o.stride_h + 1;
    out.w = (in.w + 2 * o.pad_w - o.dilation_w * (ws[3] - 1) - 1) / o.stride_w + 1;
    const double macs = static_cast<double>(batch_) * ws[0] * ws[1] * ws[2] * ws[3] * out.h * out.w;
    const bool weight_trains = c.weight.trainable();
    const bool bias_trains = c.bias.defined() && c.bias.trainable();
    add(name, macs, in.grad, weight_trains);
    out.grad = in.grad || weight_trains || bias_trains;
    return out;
  }

  Sym linear(const std::string& name, const Sym& in) {
    const nn::Linear& l = get<nn::Linear>(name);
    const Shape& ws = l.weight.shape();  // (out, in)
    TL_CHECK(ws[1] == in.c * in.h * in.w, ValueError, "count_step_flops: ", name, " takes ", ws[1],
             " features, the walk reached it with ", in.c * in.h * in.w);
    const double macs = static_cast<double>(batch_) * ws[0] * ws[1];
    const bool weight_trains = l.weight.trainable();
    add(name, macs, in.grad, weight_trains);
    return Sym{ws[0], 1, 1, in.grad || weight_trains || (l.bias.defined() && l.bias.trainable())};
  }

  Sym batch_norm(const std::string& name, Sym in) const {
    const nn::BatchNorm2d& bn = get<nn::BatchNorm2d>(name);
    in.grad = in.grad || bn.weight.trainable() || bn.bias.trainable();
    return in;
  }

  StepFlops result;

 private:
  void add(const std::string& name, double macs, bool data_grad, bool weight_grad) {
    LayerFlops f{name, 2 * macs, data_grad ? 2 * macs : 0.0, weight_grad ? 2 * macs : 0.0};
    result.forward += f.forward;
    result.backward_data += f.backward_data;
    result.backward_weight += f.backward_weight;
    result.layers.push_back(f);
  }
  int64_t batch_;
  std::map<std::string, nn::Module*> modules_;
};

Sym walk_resnet(Walker& wk, Sym x) {
  x = wk.batch_norm("bn1", wk.conv("conv1", x));
  x.h = pooled(x.h, 3, 2, 1);  // max_pool2d(3, 2, 1)
  x.w = pooled(x.w, 3, 2, 1);
  for (int stage = 1; wk.has("layer" + std::to_string(stage)); ++stage) {
    for (int b = 0;; ++b) {
      const std::string block = "layer" + std::to_string(stage) + "." + std::to_string(b);
      if (!wk.has(block)) break;
      Sym h = x;
      for (int i = 1; wk.has(block + ".conv" + std::to_string(i)); ++i)
        h = wk.batch_norm(block + ".bn" + std::to_string(i), wk.conv(block + ".conv" + std::to_string(i), h));
      Sym identity = x;
      if (wk.has(block + ".downsample"))
        identity = wk.batch_norm(block + ".downsample.1", wk.conv(block + ".downsample.0", x));
      h.grad = h.grad || identity.grad;  // add
      x = h;
    }
  }
  return wk.linear("fc", Sym{x.c, 1, 1, x.grad});  // adaptive_avg_pool2d(1) + flatten
}

Sym walk_densenet(Walker& wk, Sym x) {
  x = wk.batch_norm("features.norm0", wk.conv("features.conv0", x));
  x.h = pooled(x.h, 3, 2, 1);
  x.w = pooled(x.w, 3, 2, 1);
  for (int b = 1; wk.has("features.denseblock" + std::to_string(b)); ++b) {
    const std::string block = "features.denseblock" + std::to_string(b);
    Sym features = x;  // the concatenation of the block input and every new layer's output
    for (int l = 1; wk.has(block + ".denselayer" + std::to_string(l)); ++l) {
      const std::string layer = block + ".denselayer" + std::to_string(l);
      Sym h = wk.conv(layer + ".conv1", wk.batch_norm(layer + ".norm1", features));
      h = wk.conv(layer + ".conv2", wk.batch_norm(layer + ".norm2", h));
      features.c += h.c;
      features.grad = features.grad || h.grad;
    }
    x = features;
    const std::string transition = "features.transition" + std::to_string(b);
    if (wk.has(transition)) {
      x = wk.conv(transition + ".conv", wk.batch_norm(transition + ".norm", x));
      x.h = pooled(x.h, 2, 2, 0);  // avg_pool2d(2, 2)
      x.w = pooled(x.w, 2, 2, 0);
    }
  }
  x = wk.batch_norm("features.norm5", x);
  return wk.linear("classifier", Sym{x.c, 1, 1, x.grad});
}

// torchvision VGG: features.<i> are conv, [bn], relu at consecutive indices, a max-pool takes one index;
// a gap between one conv's group and the next conv is a max_pool2d(2, 2). The configurations end with a pool.
Sym walk_vgg(Walker& wk, Sym x) {
  int expected = 0;
  auto pool = [&x] {
    x.h = pooled(x.h, 2, 2, 0);
    x.w = pooled(x.w, 2, 2, 0);
  };
  for (int i = 0; i < 200; ++i) {
    const std::string name = "features." + std::to_string(i);
    if (!wk.has(name) || !dynamic_cast<nn::Conv2d*>(&wk.get<nn::Module>(name))) continue;
    for (int gap = expected; gap < i; ++gap) pool();
    x = wk.conv(name, x);
    const std::string next = "features." + std::to_string(i + 1);
    const bool bn = wk.has(next) && dynamic_cast<nn::BatchNorm2d*>(&wk.get<nn::Module>(next));
    if (bn) x = wk.batch_norm(next, x);
    expected = i + (bn ? 3 : 2);
  }
  pool();
  x = Sym{x.c, 7, 7, x.grad};  // adaptive_avg_pool2d(7, 7)
  x = wk.linear("classifier.0", x);
  x = wk.linear("classifier.3", x);
  return wk.linear("classifier.6", x);
}

}  // namespace

StepFlops count_step_flops(models::Model& model, int64_t batch, int64_t height, int64_t width) {
  TL_CHECK(batch >= 1 && height >= 1 && width >= 1, ValueError, "count_step_flops: batch and image size must be >= 1");
  Walker wk(model, batch);
  const Sym input{3, height, width, false};
  const std::string& arch = model.arch();
  if (arch.rfind("resnet", 0) == 0 || arch.rfind("resnext", 0) == 0 || arch.rfind("wide_resnet", 0) == 0)
    walk_resnet(wk, input);
  else if (arch.rfind("densenet", 0) == 0)
    walk_densenet(wk, input);
  else if (arch.rfind("vgg", 0) == 0)
    walk_vgg(wk, input);
  else
    throw ValueError("count_step_flops: no FLOP count for architecture '" + arch + "'");
  return wk.result;
}

}  // namespace tl::train
