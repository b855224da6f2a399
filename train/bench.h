// `tlengine bench`: the training-step benchmark of ../shared/ANCHORS.md, and the data generator of the
// time-to-result job (`tlengine make-data`).
//
// One step = forward, cross-entropy, backward, SGD (momentum 0.9) step and zero_grad, on a fixed random batch
// (seeded normal images, uniform labels) generated once on the device; the model is in train() mode, so frozen
// batch norm uses batch statistics unless --freeze-bn. Modes: full (all parameters train), last_block (only
// layer4 / features.denseblock4 and the head: freeze=backbone plus the pattern '<block>.*'), head (only the
// head). Precision fp32: TF32 convolutions, plain fp32 matmuls (PyTorch's default); bf16: bfloat16 NHWC input
// and model layout, as `tlengine train --precision bf16` runs (CUDA only).
//
// Timing: `warmup` steps, then `steps` timed steps. CUDA: a pair of cudaEvents recorded on cuda::stream()
// around each step, read after one synchronize at the end (no host sync inside the timed loop). CPU:
// steady_clock around each step. Reported: the median step (ms), images/s = batch / median, achieved
// TFLOP/s = count_step_flops / median (flops.h), peak memory = memory_stats(device).peak_bytes after
// reset_peak_memory (taken once the model, optimizer and batch exist: it includes the weights, the
// optimizer state and the batch, as torch.cuda.max_memory_allocated after reset_peak_memory_stats does);
// on CUDA also the device memory in use (cudaMemGetInfo total - free, which adds the CUDA context, cuDNN/cuBLAS
// workspaces and the pool's cache). Start-up = from `start` (the CLI passes the start of main) to the end of
// the first step (model build, weights to the device, first step with cuDNN algorithm selection).
#pragma once
#include <chrono>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/flops.h"

namespace tl::train {

struct BenchOptions {
  std::string model = "resnet18";
  std::string mode = "full";        // full | last_block | head
  std::string freeze;               // when set, a --freeze value (none | backbone | until=<block>) instead of mode
  std::string precision = "fp32";   // fp32 | bf16
  std::string memory_format = "auto";  // auto | nchw | nhwc (as train --memory-format)
  int64_t batch = 64;
  int64_t image_size = 0;           // 0: the architecture's (224, inception_v3 299)
  int64_t classes = 10;
  int warmup = 10;                  // untimed steps; the first step always runs untimed (start-up time)
  int steps = 30;
  bool freeze_bn = false;
  bool memory_efficient = false;    // DenseNet: recompute the bottlenecks in backward (as train --memory-efficient)
  std::string device = "auto";      // auto | cpu | cuda
  double lr = 0.01;
  uint64_t seed = 0;
  // Start of the start-up clock; when unset, the start of run_bench.
  std::optional<std::chrono::steady_clock::time_point> start;
};

struct BenchResult {
  BenchOptions options;
  std::string device;               // "cpu" or "cuda: <name>"
  std::string freeze_summary;       // FreezePlan::summary()
  int64_t trainable_params = 0, total_params = 0;
  std::vector<double> step_ms;      // the timed steps
  double median_ms = 0, mean_ms = 0, min_ms = 0, max_ms = 0;
  double images_per_s = 0;
  StepFlops flops;
  double tflops = 0;                // achieved, flops.total() / median
  size_t peak_bytes = 0;            // tlengine's allocator (tensors), as torch.cuda.max_memory_allocated
  size_t device_used_bytes = 0;     // CUDA: total - free at the end (0 on the CPU)
  double build_s = 0;               // start to model + optimizer + batch ready
  double first_step_s = 0;          // the first step alone
  double startup_s = 0;             // start to the end of the first step
  int64_t folded_conv_bn = 0, conv_bn_pairs = 0;  // frozen batch norms folded into their convolution (--freeze-bn)

  nlohmann::json to_json() const;
  // "model mode precision batch | ms img/s peak GB TFLOP/s startup s" for a table; header() names the columns.
  std::string table_line() const;
  static std::string table_header();
};

// Runs the benchmark; progress lines go to `log`. Throws ValueError for bad options.
BenchResult run_bench(const BenchOptions& options, std::ostream& log);

// The trainable-parameter patterns of a mode for `model`: {} for full; {"layer4.*"} or
// {"features.denseblock4.*"} for last_block; the freeze setting goes with it ("none" or "backbone").
struct ModeFreeze {
  std::string freeze;
  std::vector<std::string> trainable;
};
ModeFreeze mode_freeze(const models::Model& model, const std::string& mode);

// `tlengine make-data`: an ImageFolder tree of synthetic JPEGs of exactly width x height (io/synthetic.h
// patterns), root/train/<class>/ and root/val/<class>/, for the time-to-result job.
struct MakeDataOptions {
  std::string out;
  int classes = 2;
  int train_per_class = 125;
  int val_per_class = 75;
  int width = 500;
  int height = 375;
  int jpeg_quality = 90;
  uint64_t seed = 0;
};
// Returns the number of images written.
int64_t make_image_folder(const MakeDataOptions& options);

// `tlengine bench-loader`: the data pipeline alone, as torchvision's DataLoader measures it (tools/bench_loader.py):
// the train split of an ImageFolder (<data>/train, else <data>), decode + RandomResizedCrop(size) +
// RandomHorizontalFlip + normalise into float32 batches, shuffled, `workers` decoding threads, `epochs` epochs,
// each timed from start_epoch to its last batch. images/s = images * epochs / total time; also after the first
// epoch (the decoded-image cache, --cache-images, serves the later ones).
struct LoaderBenchOptions {
  std::string data;
  int image_size = 224;
  int64_t batch_size = 32;
  int workers = 4;
  int epochs = 3;
  std::string cache_images = "off";  // as train --cache-images
  uint64_t seed = 0;
};
nlohmann::json run_loader_bench(const LoaderBenchOptions& o, std::ostream& log);

}  // namespace tl::train
