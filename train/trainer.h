// The fine-tuning loop behind `tlengine train`: data, model and weights, freeze plan, parameter groups, schedule,
// a train and a val phase per epoch with metrics, best and last checkpoints (atomic), exact --resume, early
// stopping, NaN guard, Ctrl-C, JSON-lines metrics and PNG reports.
#pragma once
#include <atomic>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "core/distributed.h"
#include "core/dtype.h"
#include "train/freeze.h"

namespace tl::train {

struct TrainOptions {
  // Data
  std::string data;        // ImageFolder root with train/ and val/ (or --val-split)
  double val_split = 0.0;  // stratified fraction held out when there is no val/
  int image_size = 0;      // crop size; 0: the architecture's (224, inception_v3 299)
  std::string val_transform = "crop";  // "crop": Resize(size*256/224) + CenterCrop(size); "resize": Resize((s, s))
  bool augment = true;     // RandomResizedCrop + flip for training (off: the val transform)
  // Train the auxiliary classifiers (Inception v3, GoogLeNet) with the main one, as torchvision's recipe does
  // (off: --no-aux removes them).
  bool aux = true;
  // Dropout probability of the model's dropout layers (--dropout); negative: the architecture's default.
  double dropout = -1;
  // DenseNet: recompute each dense layer's bottleneck in the backward pass instead of keeping it (lower peak memory,
  // the same results, a longer step; torchvision's memory_efficient=True). --memory-efficient.
  bool memory_efficient = false;
  // CUDA: capture the training step into a CUDA graph after a few eager warm-up steps and replay it (one launch
  // per step; the same results). Refused on the CPU, with dropout and with the feature cache (train/cuda_graph.h).
  bool cuda_graphs = false;
  bool shuffle = true;     // a seeded new order every epoch (off: folder order, e.g. to compare with PyTorch)
  int workers = 4;
  std::string cache_images = "auto";  // decoded images kept in RAM: auto (a quarter of the memory) | off | <GB>
  std::string on_bad_image = "fail";  // or "skip"
  // Model
  std::string arch = "resnet18";
  std::string weights;  // .bin (safetensors) to start from; empty: random init (training from scratch)
  bool allow_partial_weights = false;  // accept weights that mismatch outside the head (they keep their init)
  bool allow_nonfinite_weights = false;  // accept weights with NaN / Inf values (refused by default)
  FreezeOptions freeze;
  // Gradual unfreezing (freeze.h UnfreezeSchedule): "<block>@<epoch>" entries, and --freeze-epochs N (N epochs with
  // only the head, or the --freeze given, then everything). Unfrozen parameters join the body's group at its lr.
  std::vector<std::string> unfreeze;
  int freeze_epochs = 0;
  // Optimisation
  int epochs = 25;
  int64_t batch_size = 32;
  std::string optimizer = "sgd";  // sgd | adam | adamw
  double lr = 1e-3;               // the head's learning rate
  double backbone_lr = -1;        // the pretrained body's; < 0: lr * backbone_lr_mult
  double backbone_lr_mult = -1;   // < 0: 1, or 0.1 with --freeze-epochs (fastai's fine_tune)
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  std::string schedule = "step";  // step | multistep | cosine | constant
  int step_size = 7;
  double gamma = 0.1;
  std::vector<int> milestones;
  int warmup_epochs = 0;
  double min_lr = 0.0;
  double label_smoothing = 0.0;
  bool balance = false;  // class weights from folder counts: n / (C * n_c)
  int early_stopping = 0;  // patience in epochs without a better val accuracy; 0: off
  // Run
  std::string out = "runs/exp";
  std::string device = "auto";    // auto | cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16 (CUDA) | fp64 (CPU: a float64 reference run)
  std::string memory_format = "auto";  // auto | nchw | nhwc (channels_last): the activations' layout
  // Feature cache at the freeze boundary (train/feature_cache.h): on where it is exact (only the head trains,
  // --freeze-bn, no augmentation); false: run the backbone every epoch (--no-cache).
  bool feature_cache = true;
  double cache_budget_gb = 4.0;  // RAM for cached features
  // With augmentation: cache this many augmented views per train image and train each epoch on one drawn per image
  // (an approximation of fresh augmentation; --cache-views). 0: no cache with augmentation.
  int cache_views = 0;
  // Storage of the cached features: float32, or float16 / bfloat16 (half the memory; rounded once, measured in
  // bench/NOTES.md). --cache-dtype.
  std::string cache_dtype = "float32";
  bool resume = false;
  uint64_t seed = 0;
  int64_t stop_after_steps = 0;  // stop as if interrupted after this many steps (tests, debugging); 0: off
  // Several processes (mpirun, core/distributed.h): the longest a collective waits for the other ranks, seconds.
  double dist_timeout = 300;
  // Several processes: batch norm in training mode takes its statistics over the global batch (all ranks' batches,
  // PyTorch's SyncBatchNorm; CPU). Refused where no batch norm layer uses batch statistics; one process: no change.
  bool sync_bn = false;
  int grid_images = 16;          // val images in predictions.png
  bool quiet = false;
};

struct TrainResult {
  double best_val_acc = 0;
  int best_epoch = -1;  // 0-based; -1 before any val phase
  int epochs_done = 0;
  bool interrupted = false;
  bool early_stopped = false;
  std::string best_path, last_path;
};

// Raised when the loss becomes NaN or infinite: training stops and the last good checkpoint stays.
class DivergedError : public Error {
 public:
  using Error::Error;
};

// Set (e.g. by a SIGINT handler) to stop after the current step: a checkpoint is saved and the run returns
// with interrupted = true.
std::atomic<bool>& stop_requested();

TrainResult run_training(const TrainOptions& options, std::ostream& log);
// Data-parallel training when `dist` has several ranks (on the CPU over MPI, on CUDA over NCCL when built with it):
// each rank trains on its share of every epoch (io::LoaderOptions rank / world_size, padded as PyTorch's
// DistributedSampler) with --batch-size images per step, the gradients are averaged over the ranks in buckets
// started during each backward pass (GradientAverager) and the train and val
// metrics summed over them. Rank 0 alone writes the files (checkpoints, metrics.jsonl, PNGs, best.bin) and the log;
// every rank can --resume from them (a shared filesystem). Batch norm uses each rank's own batch statistics, or
// with --sync-bn those of the global batch.
// Test hook: the environment variable TL_TEST_HANG_AT_STEP="<rank>:<step>" makes that rank stop answering before
// its step-th backward pass, before any of that step's gradient all-reduces starts (1-based, counted as
// --stop-after-steps), so that the others time out.
TrainResult run_training(const TrainOptions& options, std::ostream& log, const Distributed& dist);

// The numeric format of a run's activations: "fp32" (float32; NCHW on CUDA, on the CPU the layout its fast
// convolutions take, conv2d_cpu_float32_layout()), "bf16" (CUDA: bfloat16 NHWC, float32
// parameters), "fp64" (CPU: the whole model in float64, a reference run). `memory_format` overrides the layout:
// "auto" (the above), "nchw", or "nhwc" / "channels_last" (e.g. float32 NHWC on CUDA, where TF32 tensor-core
// convolutions want it). Throws ValueError for other names or a format the device does not run.
struct Precision {
  DType dtype = DType::F32;
  Layout layout = Layout::NCHW;
};
Precision parse_precision(const std::string& name, Device device, const std::string& memory_format = "auto");

// Metrics of a weights file on a data folder (`tlengine eval`): prints the report, returns top-1 accuracy.
struct EvalOptions {
  std::string weights, data, split = "val", device = "auto", val_transform = "crop", on_bad_image = "fail";
  int image_size = 0, workers = 4;  // image_size 0: the architecture's
  int64_t batch_size = 64;
  std::string json;  // optional: metrics as JSON
  std::string out;   // optional: a folder for top_losses.png and confusion.png
  bool allow_nonfinite_weights = false;
};
double run_eval(const EvalOptions& options, std::ostream& log);

}  // namespace tl::train
