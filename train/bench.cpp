// The training-step benchmark and the time-to-result data generator (see bench.h).
#include "train/bench.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <ostream>
#include <random>

#include "core/device.h"
#include "core/error.h"
#include "core/memory.h"
#include "io/image.h"
#include "io/transforms.h"
#include "io/loader.h"
#include "io/dataset.h"
#include "io/synthetic.h"
#include "layers/loss.h"
#include "models/registry.h"
#include "train/freeze.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace tl::train {
namespace {
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string device_description(Device dev) {
  if (dev == Device::CPU) return "cpu";
#if TL_WITH_CUDA
  int index = 0;
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDevice(&index));
  CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return std::string("cuda: ") + prop.name;
#else
  throw CudaError(cuda::unavailable_reason());
#endif
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#if TL_WITH_CUDA
// CUDA events around each timed step, read once at the end.
class StepEvents {
 public:
  explicit StepEvents(int n) : start_(static_cast<size_t>(n)), end_(static_cast<size_t>(n)) {
    for (int i = 0; i < n; ++i) {
      CUDA_CHECK(cudaEventCreate(&start_[static_cast<size_t>(i)]));
      CUDA_CHECK(cudaEventCreate(&end_[static_cast<size_t>(i)]));
    }
  }
  ~StepEvents() {
    for (size_t i = 0; i < start_.size(); ++i) {
      cudaEventDestroy(start_[i]);
      cudaEventDestroy(end_[i]);
    }
  }
  StepEvents(const StepEvents&) = delete;
  StepEvents& operator=(const StepEvents&) = delete;
  void begin(int i) { CUDA_CHECK(cudaEventRecord(start_[static_cast<size_t>(i)], cuda::stream())); }
  void end(int i) { CUDA_CHECK(cudaEventRecord(end_[static_cast<size_t>(i)], cuda::stream())); }
  std::vector<double> elapsed_ms() {
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    std::vector<double> ms;
    for (size_t i = 0; i < start_.size(); ++i) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, start_[i], end_[i]));
      ms.push_back(t);
    }
    return ms;
  }

 private:
  std::vector<cudaEvent_t> start_, end_;
};
#endif  // TL_WITH_CUDA

}  // namespace

ModeFreeze mode_freeze(const models::Model& model, const std::string& mode) {
  if (mode == "full") return {"none", {}};
  if (mode == "head") return {"backbone", {}};
  TL_CHECK(mode == "last_block", ValueError, "--mode must be full, last_block or head, got '", mode, "'");
  std::vector<std::string> trainable;
  for (const std::string& b : model.last_block()) trainable.push_back(b + ".*");
  return {"backbone", trainable};
}

BenchResult run_bench(const BenchOptions& options, std::ostream& log) {
  const Clock::time_point start = options.start.value_or(Clock::now());
  BenchOptions o = options;
  o.image_size = models::input_size(o.model, static_cast<int>(o.image_size)).crop;  // 0: the architecture's
  TL_CHECK(o.precision == "fp32" || o.precision == "bf16", ValueError, "--precision must be fp32 or bf16, got '",
           o.precision, "'");
  TL_CHECK(o.batch >= 1 && o.image_size >= 16 && o.classes >= 2, ValueError,
           "bench: --batch must be >= 1, --image-size >= 16 and --classes >= 2");
  TL_CHECK(o.warmup >= 0 && o.steps >= 1, ValueError, "bench: --warmup must be >= 0 and --steps >= 1");
  const Device dev = parse_device(o.device);
  const Precision prec = parse_precision(o.precision, dev, o.memory_format);  // activations' dtype and layout, as `train` runs them
  if (dev == Device::CUDA) cuda::set_allow_tf32(/*conv=*/true, /*matmul=*/false);  // PyTorch's defaults

  BenchResult r;
  r.options = o;
  r.device = device_description(dev);

  // Model (random weights: speed does not depend on them), freeze plan, optimizer, the fixed batch.
  auto model = models::create_model(o.model, o.classes, o.seed);
  if (o.memory_efficient) model->require_memory_efficient();
  model->to(dev, prec.layout);
  model->train();
  const ModeFreeze mf = o.freeze.empty() ? mode_freeze(*model, o.mode) : ModeFreeze{o.freeze, {}};
  FreezeOptions fo;
  fo.freeze = mf.freeze;
  fo.trainable = mf.trainable;
  fo.freeze_bn = o.freeze_bn;
  const FreezePlan plan = apply_freeze(*model, fo);
  r.freeze_summary = plan.summary();
  r.trainable_params = plan.trainable_params;
  r.total_params = plan.total_params;
  std::vector<Parameter> params;
  for (auto& [name, p] : model->named_parameters())
    if (p.trainable()) params.push_back(p);
  Optimizer opt(OptimizerKind::SGD, {ParamGroup("all", params, o.lr)}, HyperParams::sgd(o.lr, 0.9));

  Tensor images = Tensor::randn({o.batch, 3, o.image_size, o.image_size}, o.seed + 1, DType::F32, dev);
  images = images.to(dev, prec.dtype, prec.layout);
  std::mt19937_64 rng(o.seed + 2);
  std::uniform_int_distribution<int64_t> label(0, o.classes - 1);
  std::vector<double> labels_host;
  for (int64_t i = 0; i < o.batch; ++i) labels_host.push_back(static_cast<double>(label(rng)));
  const Tensor labels = Tensor::from_values(labels_host, {o.batch}, DType::I32, dev);
  r.flops = count_step_flops(*model, o.batch, o.image_size, o.image_size);
  if (dev == Device::CUDA) cuda::synchronize();
  r.build_s = seconds_since(start);
  log << "bench " << o.model << " " << o.mode << " " << o.precision << " "
      << (prec.layout == Layout::NHWC ? "NHWC" : "NCHW") << " batch " << o.batch << " " << o.image_size << "x"
      << o.image_size << " on " << r.device << "\n"
      << r.freeze_summary << "\n";

  Tape tape;
  TapeScope tape_scope(tape);
  auto step = [&] {
    Variable logits = model->forward(Variable(images));
    Variable loss = cross_entropy(logits, labels);
    tape.backward(loss);
    opt.step();
    opt.zero_grad();
  };

  reset_peak_memory(dev);
  const Clock::time_point first = Clock::now();
  step();
  if (dev == Device::CUDA) cuda::synchronize();
  r.first_step_s = seconds_since(first);
  r.startup_s = seconds_since(start);
  r.folded_conv_bn = model->folded_conv_bn();
  r.conv_bn_pairs = model->conv_bn_pairs();
  if (r.folded_conv_bn > 0)
    log << "folded " << r.folded_conv_bn << " of " << r.conv_bn_pairs << " conv + batch-norm pairs of the frozen part\n";
  for (int i = 1; i < o.warmup; ++i) step();

  if (dev == Device::CUDA) {
#if TL_WITH_CUDA
    StepEvents events(o.steps);
    for (int i = 0; i < o.steps; ++i) {
      events.begin(i);
      step();
      events.end(i);
    }
    r.step_ms = events.elapsed_ms();
    size_t free_b = 0, total_b = 0;
    cuda::memory_info(&free_b, &total_b);
    r.device_used_bytes = total_b - free_b;
#endif
  } else {
    for (int i = 0; i < o.steps; ++i) {
      const Clock::time_point t0 = Clock::now();
      step();
      r.step_ms.push_back(1000 * seconds_since(t0));
    }
  }
  r.peak_bytes = memory_stats(dev).peak_bytes;
  r.median_ms = median_of(r.step_ms);
  r.mean_ms = std::accumulate(r.step_ms.begin(), r.step_ms.end(), 0.0) / static_cast<double>(r.step_ms.size());
  r.min_ms = *std::min_element(r.step_ms.begin(), r.step_ms.end());
  r.max_ms = *std::max_element(r.step_ms.begin(), r.step_ms.end());
  r.images_per_s = static_cast<double>(o.batch) / (r.median_ms / 1000);
  r.tflops = r.flops.total() / (r.median_ms / 1000) / 1e12;
  return r;
}

nlohmann::json BenchResult::to_json() const {
  const BenchOptions& o = options;
  return {{"engine", "tlengine"},
          {"model", o.model},
          {"mode", o.mode},
          {"precision", o.precision},
          {"memory_format", o.memory_format},
          {"batch", o.batch},
          {"image_size", o.image_size},
          {"classes", o.classes},
          {"warmup", o.warmup},
          {"steps", o.steps},
          {"freeze_bn", o.freeze_bn},
          {"memory_efficient", o.memory_efficient},
          {"device", device},
          {"trainable_params", trainable_params},
          {"total_params", total_params},
          {"median_ms", median_ms},
          {"mean_ms", mean_ms},
          {"min_ms", min_ms},
          {"max_ms", max_ms},
          {"images_per_s", images_per_s},
          {"peak_bytes", peak_bytes},
          {"device_used_bytes", device_used_bytes},
          {"gflop_per_step", flops.total() / 1e9},
          {"gflop_forward", flops.forward / 1e9},
          {"gflop_backward_data", flops.backward_data / 1e9},
          {"gflop_backward_weight", flops.backward_weight / 1e9},
          {"tflops", tflops},
          {"build_s", build_s},
          {"first_step_s", first_step_s},
          {"startup_s", startup_s},
          {"folded_conv_bn", folded_conv_bn},
          {"conv_bn_pairs", conv_bn_pairs},
          {"step_ms", step_ms}};
}

std::string BenchResult::table_header() {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%-12s %-10s %-4s %5s | %9s %9s %8s %8s %8s %9s", "model", "mode", "prec", "batch",
                "ms/step", "img/s", "peak GB", "GFLOP", "TFLOP/s", "startup s");
  return buf;
}

std::string BenchResult::table_line() const {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%-12s %-10s %-4s %5lld | %9.2f %9.1f %8.3f %8.1f %8.2f %9.2f", options.model.c_str(),
                options.mode.c_str(), options.precision.c_str(), static_cast<long long>(options.batch), median_ms,
                images_per_s, static_cast<double>(peak_bytes) / 1e9, flops.total() / 1e9, tflops, startup_s);
  return buf;
}

int64_t make_image_folder(const MakeDataOptions& o) {
  namespace fs = std::filesystem;
  TL_CHECK(!o.out.empty(), ValueError, "make-data: --out is required");
  TL_CHECK(o.classes >= 1 && o.classes <= 100, ValueError, "make-data: --classes must be 1..100, got ", o.classes);
  TL_CHECK(o.train_per_class >= 1 && o.val_per_class >= 0, ValueError,
           "make-data: --train-per-class must be >= 1 and --val-per-class >= 0");
  TL_CHECK(o.width >= 8 && o.height >= 8, ValueError, "make-data: --width and --height must be >= 8");
  int64_t written = 0;
  for (const std::string split : {"train", "val"}) {
    const int per_class = split == "train" ? o.train_per_class : o.val_per_class;
    for (int c = 0; c < o.classes && per_class > 0; ++c) {
      const fs::path dir = fs::path(o.out) / split / io::synthetic_class_name(c);
      fs::create_directories(dir);
      for (int i = 0; i < per_class; ++i) {
        const uint64_t seed = o.seed * 1000003ULL + (split == "train" ? 0ULL : 1ULL << 40) +
                              static_cast<uint64_t>(c) * 100003ULL + static_cast<uint64_t>(i);
        char name[32];
        std::snprintf(name, sizeof name, "%05d.jpg", i);
        io::write_image((dir / name).string(), io::synthetic_image(c, o.height, o.width, seed), o.jpeg_quality);
        ++written;
      }
    }
  }
  return written;
}

nlohmann::json run_loader_bench(const LoaderBenchOptions& o, std::ostream& log) {
  TL_CHECK(o.epochs >= 1 && o.batch_size >= 1 && o.workers >= 1 && o.image_size >= 16, ValueError,
           "bench-loader: --epochs, --batch-size and --workers must be >= 1 and --image-size >= 16");
  namespace fs = std::filesystem;
  const fs::path train_dir = fs::path(o.data) / "train";
  const std::string root = fs::is_directory(train_dir) ? train_dir.string() : o.data;
  io::ImageFolder folder = io::scan_image_folder(root);
  io::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.shuffle = true;
  lo.num_workers = o.workers;
  lo.seed = o.seed;
  lo.pinned = false;
  lo.image_cache_bytes = io::parse_image_cache_bytes(o.cache_images);
  io::DataLoader loader(folder.samples, io::train_transform(o.image_size), lo);
  std::vector<double> epoch_s;
  double checksum = 0;
  for (int e = 0; e < o.epochs; ++e) {
    const Clock::time_point t0 = Clock::now();
    int64_t count = 0;
    loader.start_epoch(e);
    while (const io::Batch* b = loader.next()) {
      count += b->size;
      checksum += b->images[0];  // touch the batch
    }
    epoch_s.push_back(seconds_since(t0));
    TL_CHECK(count == loader.num_samples(), Error, "bench-loader: epoch ", e + 1, " gave ", count, " of ",
             loader.num_samples(), " images");
  }
  const double n = static_cast<double>(loader.num_samples()), total = std::accumulate(epoch_s.begin(), epoch_s.end(), 0.0);
  nlohmann::json r = {{"engine", "tlengine"}, {"data", root}, {"images", loader.num_samples()},
                      {"image_size", o.image_size}, {"batch_size", o.batch_size}, {"workers", o.workers},
                      {"epochs", o.epochs}, {"cache_images", o.cache_images}, {"decoder", io::jpeg_decoder_name()},
                      {"transform", "decode + RandomResizedCrop(" + std::to_string(o.image_size) +
                                        ") + RandomHorizontalFlip + normalise"},
                      {"epoch_s", epoch_s}, {"images_per_s", n * o.epochs / total}, {"checksum", checksum}};
  r["images_per_s_after_first"] =
      o.epochs > 1 ? nlohmann::json(n * (o.epochs - 1) / (total - epoch_s[0])) : nlohmann::json(nullptr);
  log << "bench-loader: " << loader.num_samples() << " images, " << o.workers << " workers, " << o.image_size
      << " px: " << r["images_per_s"].get<double>() << " img/s\n";
  return r;
}

}  // namespace tl::train
