// Feature cache at the freeze boundary (see feature_cache.h).
#include "train/feature_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>

#include "core/autograd.h"
#include "train/report.h"

namespace tl::train {

namespace {
bool under(const std::string& name, const std::string& prefix) {
  return name == prefix || name.rfind(prefix + ".", 0) == 0;
}
}  // namespace

int cache_cut(const models::Model& model) {
  const auto params = model.named_parameters();
  bool any = false, only_main_head = true;
  for (const auto& [name, p] : params) {
    if (!p.trainable()) continue;
    any = true;
    only_main_head = only_main_head && under(name, model.head_name());
  }
  if (!any) return -2;
  if (only_main_head) return -1;
  const std::vector<std::string> blocks = model.blocks(), cuts = model.cut_points();
  for (int i = static_cast<int>(cuts.size()) - 1; i >= 0; --i) {
    const auto end = std::find(blocks.begin(), blocks.end(), cuts[static_cast<size_t>(i)]);
    if (end == blocks.end()) continue;
    bool frozen = true;
    for (const auto& [name, p] : params)
      for (auto b = blocks.begin(); frozen && b != end + 1; ++b) frozen = !(p.trainable() && under(name, *b));
    if (frozen) return i;
  }
  return -2;
}

int64_t cache_numel(models::Model& model, int cut, int64_t image_size) {
  if (cut < 0) return model.feature_numel(image_size);
  const Tensor& any = model.named_parameters().front().second.value();
  const bool training = model.is_training();
  NoGradGuard no_grad;
  model.eval();  // one image through the frozen part: its running statistics stay as they are
  const Tensor h = model.forward_until(Variable(Tensor::zeros({1, 3, image_size, image_size}, any.dtype(),
                                                              any.device())), cut).value();
  model.train(training);
  return h.numel();
}

FeatureCachePlan plan_feature_cache(const models::Model& model, const FreezePlan& plan, bool deterministic_transform,
                                    bool requested, int views, int64_t bytes_needed, int64_t budget_bytes) {
  const int cut = cache_cut(model);
  if (cut == -2 && model.in_head(plan.first_trainable) && plan.first_trainable.rfind(model.head_name() + ".", 0) != 0)
    return {false, -1, false, detail::concat("feature cache: off (the auxiliary head ", plan.first_trainable.substr(0,
                          plan.first_trainable.rfind('.')), " trains on inner features; --no-aux drops it)")};
  if (cut == -2)
    return {false, -1, false, detail::concat("feature cache: off (layers below the head train, so their output changes "
                                             "every step, and ", model.arch(), " cannot be cut above them)")};
  if (!requested) return {false, cut, false, "feature cache: off (--no-cache)"};
  if (!plan.freeze_bn)
    return {false, cut, false,
            "feature cache: off: the frozen batch norm layers use batch statistics (PyTorch's train() semantics), so "
            "the backbone's output depends on the other images of the batch. Add --freeze-bn (frozen batch norm on "
            "its running statistics, as Keras does) and --no-augment to run the backbone once per image instead of "
            "once per epoch: every epoch after the first then costs about as much as training the head alone ("
            "the backbone's forward pass is most of a feature-extraction step)"};
  if (cut < 0 && model.stochastic_features())
    return {false, cut, false,
            "feature cache: off (dropout below the head draws new masks every step; --dropout 0 removes it)"};
  if (!deterministic_transform && views <= 0)
    return {false, cut, false,
            "feature cache: off (random crops and flips change every image every epoch; --no-augment trains on the "
            "val transform, the feature-extractor recipe for small data close to ImageNet, and enables the cache; "
            "--cache-views K caches K augmented views per image instead, an approximation of fresh augmentation)"};
  const double mib = std::round(static_cast<double>(bytes_needed) / (1 << 20) * 10) / 10;
  const bool spill = bytes_needed > budget_bytes;
  const std::string where =
      spill ? detail::concat(mib, " MiB in a memory-mapped scratch file under --out (over the ", budget_bytes >> 20,
                             " MiB RAM budget, --cache-budget)")
            : detail::concat(mib, " MiB in RAM");
  if (!deterministic_transform)
    return {true, cut, spill, detail::concat("feature cache: on with ", views, " augmented views per image (--cache-views): "
                                        "the backbone runs ", views, " times per train image, and each epoch trains on "
                                        "one of the stored views per image, drawn at random. This APPROXIMATES fresh "
                                        "augmentation (the model sees ", views, " crops and flips per image, not new "
                                        "ones every epoch); ", where)};
  if (cut >= 0) {
    const std::string block = model.cut_points()[static_cast<size_t>(cut)];
    return {true, cut, spill, detail::concat("feature cache: on at ", block, " (every block up to it is frozen, uses "
                                             "running statistics and sees a deterministic transform): the frozen part "
                                             "runs once per image and the blocks after ", block, " train on its stored "
                                             "output, ", where, "; --no-cache to run it every epoch")};
  }
  return {true, cut, spill, detail::concat("feature cache: on (everything below ", model.head_name(),
                                           " is frozen, uses running statistics and sees a deterministic transform): "
                                           "the backbone runs once per image, ", where,
                                           "; --no-cache to run it every epoch")};
}

FeatureCache::FeatureCache(models::Model& model, io::DataLoader& loader, Device dev, DType dtype, Layout layout,
                           const std::string& what, bool quiet, std::ostream& log, int views,
                           const std::string& spill_path, DType storage, int cut, FeatureCacheParts parts)
    : loader_(loader),
      dev_(dev),
      dtype_(dtype == DType::F64 ? DType::F64 : DType::F32),
      layout_(layout),
      cut_(cut),
      storage_(dtype == DType::F64 ? DType::F64 : storage),
      views_(views) {
  TL_CHECK(storage_ == DType::F32 || storage_ == DType::F64 || is_floating_half(storage_), ValueError,
           "feature cache: storage must be float32, float16 or bfloat16, got ", dtype_name(storage_));
  TL_CHECK(views >= 1, ValueError, "feature cache: views must be >= 1, got ", views);
  const int64_t n = loader.num_samples();
  // The rows are allocated at the first batch, when the features' shape is known.
  auto allocate = [&](const Tensor& first) {
    sample_shape_ = Shape(first.shape().begin() + 1, first.shape().end());
    dim_ = first.numel() / first.size(0);
    const size_t total = static_cast<size_t>(views * n * dim_) * dtype_size(storage_);
    if (spill_path.empty()) {
      rows_ = Tensor::zeros({views * n, dim_}, storage_);
      base_ = static_cast<char*>(rows_.data());
    } else {
      spill_ = std::make_unique<io::MappedScratch>(spill_path, total);  // zero-filled by the filesystem
      base_ = static_cast<char*>(spill_->data());
    }
  };
  const bool several = parts.dist && parts.dist->world_size() > 1;
  TL_CHECK(!several || parts.source, ValueError, "feature cache: several ranks need the loader of this rank's part");
  io::DataLoader& source = several ? *parts.source : loader;
  std::vector<int32_t> seen(static_cast<size_t>(n), 0);  // views in which the sample was decoded
  NoGradGuard no_grad;
  model.train();  // the mode of the uncached run's forward (frozen batch norm runs on running statistics either way)
  Progress progress(what, 1, 1, views * source.batches_per_epoch(), log);
  int64_t done = 0;
  for (int v = 0; v < views; ++v) {
    source.start_epoch(v);  // view v = epoch v's transform draws
    while (const io::Batch* b = source.next()) {
      Tensor f = model.forward_until(Variable(b->images_to(dev).to(dev, dtype, layout)), cut).value();
      Tensor host = f.to(Device::CPU, storage_, Layout::NCHW);  // rounded once to the storage dtype
      if (!base_) allocate(host);
      TL_CHECK(host.size(0) == b->size && host.numel() == b->size * dim_, ShapeError, "feature cache: features of "
               "shape ", shape_str(host.shape()), ", expected ", b->size, " x ", shape_str(sample_shape_));
      const size_t row_bytes = static_cast<size_t>(dim_) * dtype_size(storage_);
      for (int64_t r = 0; r < b->size; ++r) {
        const int64_t id = b->samples[r];
        std::memcpy(base_ + static_cast<size_t>(v * n + id) * row_bytes,
                    static_cast<const char*>(host.data()) + static_cast<size_t>(r) * row_bytes, row_bytes);
        seen[static_cast<size_t>(id)] += 1;
      }
      if (!quiet) progress.update(++done, b->size, NAN, NAN);
    }
    if (v == 0) skipped_ = source.skipped();
  }
  if (!quiet) progress.finish();
  if (several) {
    // A rank whose part gave no row (all its images bad) still needs the features' shape: one zero image.
    if (!base_) {
      const io::Size2 size = loader.image_size();
      model.eval();  // running statistics stay as they are
      allocate(model.forward_until(Variable(Tensor::zeros({1, 3, size.height, size.width}).to(dev, dtype, layout)), cut)
                   .value().to(Device::CPU, storage_, Layout::NCHW));
      model.train();
    }
    const size_t row_bytes = static_cast<size_t>(dim_) * dtype_size(storage_);
    for (int v = 0; v < views; ++v)
      parts.dist->all_gather_rows(base_ + static_cast<size_t>(v * n) * row_bytes, n, static_cast<int64_t>(row_bytes),
                                  detail::concat("all-gather of the feature cache (", what, ", view ", v + 1, ")"));
    parts.dist->all_gather_rows(seen.data(), n, sizeof(int32_t),
                                detail::concat("all-gather of the feature cache's decoded images (", what, ")"));
  }
  valid_.assign(static_cast<size_t>(n), 0);
  for (int64_t id = 0; id < n; ++id) valid_[static_cast<size_t>(id)] = seen[static_cast<size_t>(id)] == views;
}

int64_t FeatureCache::view_of(int64_t epoch, int64_t sample) const {
  if (views_ == 1) return 0;
  uint64_t z = static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(sample) + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;  // splitmix64's finaliser
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<int64_t>(z % static_cast<uint64_t>(views_));
}

FeatureCache::Batch FeatureCache::batch(int64_t epoch, int64_t b) {
  if (order_epoch_ != epoch) {
    order_ = loader_.epoch_order(epoch);
    order_epoch_ = epoch;
  }
  const std::vector<int64_t>& order = order_;
  const int64_t bs = loader_.batch_size();
  const int64_t begin = b * bs, end = std::min<int64_t>(begin + bs, static_cast<int64_t>(order.size()));
  std::vector<int64_t> ids;
  for (int64_t p = begin; p < end; ++p)
    if (valid_[static_cast<size_t>(order[static_cast<size_t>(p)])]) ids.push_back(order[static_cast<size_t>(p)]);
  Batch out;
  out.size = static_cast<int64_t>(ids.size());
  if (out.size == 0) return out;
  Shape shape{out.size};
  shape.insert(shape.end(), sample_shape_.begin(), sample_shape_.end());
  Tensor f = Tensor::empty(shape, storage_);
  const size_t row_bytes = static_cast<size_t>(dim_) * dtype_size(storage_);
  Tensor labels = Tensor::empty({out.size}, DType::I32);
  for (int64_t r = 0; r < out.size; ++r) {
    const int64_t id = ids[static_cast<size_t>(r)];
    const int64_t row = view_of(epoch, id) * loader_.num_samples() + id;
    std::memcpy(static_cast<char*>(f.data()) + static_cast<size_t>(r) * row_bytes,
                base_ + static_cast<size_t>(row) * row_bytes, row_bytes);
    const int32_t label = static_cast<int32_t>(loader_.samples()[static_cast<size_t>(id)].label);
    labels.data_as<int32_t>()[r] = label;
    out.labels_host.push_back(label);
  }
  out.features = f.to(dev_, dtype_, layout_);  // float16/bfloat16 rows widen to the run's dtype
  out.labels = labels.to(dev_);
  return out;
}

}  // namespace tl::train
