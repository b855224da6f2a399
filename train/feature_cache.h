// Feature cache at the freeze boundary. When everything below the head is frozen and deterministic (batch norm on
// its running statistics with --freeze-bn, no dropout there, a deterministic train transform with --no-augment),
// the head's input for an image depends only on the image: the backbone runs once per image instead of once per
// epoch, and every epoch trains the head on the stored features. The epochs see the same batches, in the same
// order, as without the cache, so the results are the same up to float rounding (tests/test_feature_cache.cpp).
// The cache lives in RAM for one run (rebuilt by every run, so it can never be stale after a change of weights,
// data, transform or freeze point).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/distributed.h"
#include "core/tensor.h"
#include "io/files.h"
#include "io/loader.h"
#include "models/model.h"
#include "train/freeze.h"

namespace tl::train {

// Where the cache can cut the forward pass (Model::forward_until / forward_from): -1 at the head boundary (every
// trainable parameter lies in the main head), or the index of the deepest of model.cut_points() up to which every
// block is frozen (--freeze until=layer3: cut after layer3, layer4 and the head train on the stored activations);
// -2 when neither.
int cache_cut(const models::Model& model);
// Values per image stored at cut `cut` for square images of `image_size` px (one image through the frozen part).
int64_t cache_numel(models::Model& model, int cut, int64_t image_size);

// Whether the cache applies to a run, and the sentence the printed plan shows for it.
struct FeatureCachePlan {
  bool use = false;
  int cut = -1;  // cache_cut: -1 at the head, else the cut point
  bool spill = false;  // over the RAM budget: the features live in a memory-mapped scratch file under --out
  std::string reason;
};
// `deterministic_transform`: the train transform has no random crop or flip. `requested`: not --no-cache.
// `views` (--cache-views K, 0: off): with a random train transform, cache K augmented views per image (an
// approximation of fresh augmentation, said so in the reason). `bytes_needed` of feature storage (all views)
// against `budget_bytes`.
FeatureCachePlan plan_feature_cache(const models::Model& model, const FreezePlan& plan, bool deterministic_transform,
                                    bool requested, int views, int64_t bytes_needed, int64_t budget_bytes);

// Several ranks: the ranks and the loader of this rank's part of the samples (see FeatureCache's constructor).
struct FeatureCacheParts {
  const Distributed* dist = nullptr;
  io::DataLoader* source = nullptr;
};

// The features of every sample of one loader (the rows of skipped images marked missing), and batches of them in
// the loader's own epoch order.
class FeatureCache {
 public:
  // Runs model.features() (no tape) over all samples of `loader` once per view, with a progress line on `log`.
  // View v holds the images as the loader gives them in epoch v (with a random transform: epoch v's crops and
  // flips). views = 1 for a deterministic transform.
  // `spill_path` non-empty: the rows live in a memory-mapped scratch file there (io::MappedScratch), not in RAM.
  // `storage`: the rows' dtype, float32 or (half the memory, rounded once) float16 / bfloat16; float64 runs always
  // store float64.
  // `cut`: where the pass is cut (cache_cut; -1: features()).
  // Several ranks (`parts` with a Distributed of more than one rank): `loader` is this rank's share of every epoch
  // (the batches batch() hands out) and `parts.source` a loader of the same samples and transform without
  // shuffling or padding, split over the ranks (rank r: samples r, r + N, ...; the same random draws per sample and
  // epoch as `loader`, which seeds them by sample). Each rank runs the frozen part on its 1/N of the samples only,
  // then the ranks exchange their rows (Distributed::all_gather_rows), so that every rank can serve any sample
  // its share of a later epoch holds.
  FeatureCache(models::Model& model, io::DataLoader& loader, Device dev, DType dtype, Layout layout,
               const std::string& what, bool quiet, std::ostream& log, int views = 1,
               const std::string& spill_path = "", DType storage = DType::F32, int cut = -1, FeatureCacheParts parts = {});

  struct Batch {
    Tensor features;  // (size, feature shape...) on the run's device, in the run's dtype
    Tensor labels;    // int32 (size) on the run's device
    std::vector<int32_t> labels_host;
    int64_t size = 0;
  };
  // Batch `b` of `epoch` as the loader would give it (skipped images left out), or size 0 when all its images were
  // skipped. Each image's features come from view view_of(epoch, sample).
  Batch batch(int64_t epoch, int64_t b);
  // The view an epoch draws for a sample: a seeded hash of (epoch, sample), uniform over the views, so that an
  // epoch mixes views across images and a resumed run draws the same ones.
  int64_t view_of(int64_t epoch, int64_t sample) const;
  int views() const { return views_; }
  int cut() const { return cut_; }  // the batches go through model.forward_from(features, cut())
  int64_t batches_per_epoch() const { return loader_.batches_per_epoch(); }
  int64_t dim() const { return dim_; }  // values per sample (the product of the features' shape after the batch)
  // Images left out (bad, with --on-bad-image skip), as the loader reported them when the cache was built (several
  // ranks: those of this rank's part; train::gather_skipped merges them).
  const std::vector<io::SkippedImage>& skipped() const { return skipped_; }
  std::string skipped_report() const { return io::skipped_report(skipped_); }

 private:
  const io::DataLoader& loader_;
  Device dev_;
  DType dtype_;    // the features' dtype in a batch: the run's (float32, or float64 in fp64 runs)
  Layout layout_;  // the run's activation layout (4-D features are handed out in it)
  int cut_ = -1;
  DType storage_;  // the rows' dtype: dtype_, or float16 / bfloat16 (--cache-dtype) to halve the memory
  int views_ = 1;
  int64_t dim_ = 0;
  Shape sample_shape_;  // the features' shape after the batch dimension: (D) for a linear head
  // (views * num_samples, dim_), view-major: float64 in fp64 runs, else float32; in RAM (rows_) or in the mapped
  // scratch file (spill_); base_ points at the first row either way.
  Tensor rows_;
  std::unique_ptr<io::MappedScratch> spill_;
  char* base_ = nullptr;
  std::vector<uint8_t> valid_;  // per sample (an image skipped in any view is left out)
  std::vector<io::SkippedImage> skipped_;
  int64_t order_epoch_ = -1;  // the epoch whose order order_ holds
  std::vector<int64_t> order_;
};

}  // namespace tl::train
