// The built-in example behind the README's first command (`tlengine example`): no download needed.
//  1. generates a procedural image data set (io/synthetic.h): 8 "pretraining" classes and 4 new classes;
//  2. pretrains a model on the 8 classes with tlengine itself;
//  3. fine-tunes it on the 4 new classes (few images) with the backbone frozen, and trains the same model from
//     scratch on them with the same recipe, to show what the pretrained features are worth.
// Sized to finish in a few minutes on a 2-core machine without a GPU.
#pragma once
#include <iosfwd>
#include <string>

namespace tl::train {

struct ExampleOptions {
  std::string out = "runs/example";
  std::string arch = "resnet18";
  std::string device = "auto";
  int image_size = 64;
  int pretrain_epochs = 6;
  int finetune_epochs = 8;
  int workers = 2;
  uint64_t seed = 0;
};

struct ExampleResult {
  double pretrain_acc = 0, finetune_acc = 0, scratch_acc = 0;
};

ExampleResult run_example(const ExampleOptions& options, std::ostream& log);

}  // namespace tl::train
