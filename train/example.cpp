// The built-in example (see example.h).
#include "train/example.h"

#include <chrono>
#include <filesystem>
#include <iomanip>
#include <ostream>

#include "io/synthetic.h"
#include "train/trainer.h"

namespace tl::train {
namespace fs = std::filesystem;

ExampleResult run_example(const ExampleOptions& o, std::ostream& log) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string pre_data = (fs::path(o.out) / "data" / "pretrain").string();
  const std::string ft_data = (fs::path(o.out) / "data" / "finetune").string();
  io::SyntheticOptions pre;
  pre.num_classes = 8;
  pre.train_per_class = 40;
  pre.val_per_class = 10;
  pre.min_side = 64;
  pre.max_side = 96;
  pre.seed = o.seed;
  io::SyntheticOptions ft = pre;
  ft.first_class = 8;  // 4 classes the pretrained model never saw
  ft.num_classes = 4;
  ft.train_per_class = 12;
  ft.val_per_class = 20;
  ft.seed = o.seed + 1;
  log << "[1/4] generating images in " << o.out << "/data\n";
  io::write_synthetic_image_folder(pre_data, pre);
  io::write_synthetic_image_folder(ft_data, ft);

  TrainOptions base;
  base.arch = o.arch;
  base.device = o.device;
  base.image_size = o.image_size;
  base.workers = o.workers;
  base.seed = o.seed;
  base.batch_size = 32;
  base.augment = false;  // the synthetic classes need no augmentation, and the example stays short
  base.optimizer = "adam";
  base.schedule = "cosine";

  TrainOptions p = base;
  p.data = pre_data;
  p.out = (fs::path(o.out) / "pretrain").string();
  p.epochs = o.pretrain_epochs;
  p.lr = 2e-3;
  log << "\n[2/4] pretraining " << o.arch << " from scratch on 8 classes\n";
  ExampleResult r;
  r.pretrain_acc = run_training(p, log).best_val_acc;

  TrainOptions f = base;
  f.data = ft_data;
  f.out = (fs::path(o.out) / "finetune").string();
  f.epochs = o.finetune_epochs;
  f.batch_size = 16;
  f.lr = 2e-3;
  f.weights = (fs::path(p.out) / "best.bin").string();
  f.freeze.freeze = "backbone";
  f.freeze.freeze_bn = true;  // the feature-extractor recipe: the frozen backbone runs once per image (feature cache)
  log << "\n[3/4] fine-tuning on 4 new classes (" << ft.train_per_class
      << " images each), backbone frozen (batch norm on its running statistics), new head\n";
  r.finetune_acc = run_training(f, log).best_val_acc;

  TrainOptions s = f;
  s.out = (fs::path(o.out) / "scratch").string();
  s.weights.clear();
  s.freeze.freeze = "none";
  log << "\n[4/4] the same 4 classes, same recipe, from scratch (all layers train)\n";
  r.scratch_acc = run_training(s, log).best_val_acc;

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log << std::fixed << std::setprecision(1) << "\nresult (" << secs << " s):\n"
      << "  pretraining, 8 classes:                 val accuracy " << 100 * r.pretrain_acc << "%\n"
      << "  fine-tuned, frozen backbone, 4 classes: val accuracy " << 100 * r.finetune_acc << "%\n"
      << "  from scratch, 4 classes:                val accuracy " << 100 * r.scratch_acc << "%\n"
      << "see " << f.out << "/curves.png and " << f.out << "/predictions.png\n";
  return r;
}

}  // namespace tl::train
