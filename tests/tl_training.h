// Shared by the tests that run `tlengine train` jobs (test_train.cpp, test_faults.cpp).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

#include "tl_testing.h"
#include "train/trainer.h"

namespace tl::testing {

inline std::string fresh_dir(const std::string& name) { return scratch_dir(name); }

// A tiny CPU training job on an ImageFolder: resnet18, no augmentation, Resize((s, s)), constant lr 0.01, quiet;
// the rest as given.
inline train::TrainOptions tiny_training(const std::string& data, const std::string& out, int image_size, int epochs,
                                  int64_t batch_size, int workers) {
  train::TrainOptions o;
  o.data = data;
  o.out = out;
  o.arch = "resnet18";
  o.image_size = image_size;
  o.val_transform = "resize";
  o.augment = false;
  o.epochs = epochs;
  o.batch_size = batch_size;
  o.lr = 0.01;
  o.schedule = "constant";
  o.workers = workers;
  o.device = "cpu";
  o.quiet = true;
  return o;
}

}  // namespace tl::testing
