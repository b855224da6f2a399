// DataLoader: decodes and transforms images on worker threads into batches of float32 NCHW images and int32
// labels, in page-locked host memory (cudaHostAlloc when a GPU is present) so they can be copied to the GPU
// asynchronously, `prefetch` batches ahead of the consumer.
//
// Reproducibility: the epoch's order is a seeded shuffle of (seed, epoch); each sample's random transform
// parameters come from its own generator seeded with (seed, epoch, sample index). Batches are therefore the
// same for any number of worker threads.
//
// Bad images (IOError from decoding): with OnBadImage::Fail, next() throws the IOError of the first bad image
// (in epoch order) when its batch is reached; with OnBadImage::Skip the image is left out of its batch (batches
// can then be smaller) and listed in skipped().
//
// A returned Batch stays valid until the next call to next() or start_epoch(). If the consumer queued GPU work
// that reads the batch (e.g. Batch::images_to(Device::CUDA)), the slot is not refilled before that work is done
// (an event recorded on cuda::stream() when the batch is given back; no host synchronisation).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/transforms.h"

namespace tl::io {

enum class OnBadImage { Fail, Skip };
OnBadImage parse_on_bad_image(const std::string& s);  // "fail" | "skip"; ValueError otherwise

struct LoaderOptions {
  int64_t batch_size = 32;
  bool shuffle = false;    // true for training
  bool drop_last = false;  // drop the last incomplete batch
  int num_workers = 4;     // decoding threads (>= 1)
  int prefetch = 2;        // batches prepared ahead of the consumer (>= 1)
  uint64_t seed = 0;
  OnBadImage on_bad_image = OnBadImage::Fail;
  ImageLimits limits;
  bool pinned = true;  // page-locked memory when CUDA is available
  // Decoded images kept in RAM (RGB pixels, before the transform) up to this many bytes, so that each file is
  // decoded once and later epochs crop, flip and normalise from memory. 0: decode every time. Images that do not
  // fit are decoded every time; bad images are never kept (they fail or are skipped every epoch).
  int64_t image_cache_bytes = 0;
  // Data-parallel share, as PyTorch's DistributedSampler: each epoch's order (the same on every rank) is cut into
  // world_size interleaved shares and this loader produces share `rank`: positions rank, rank + W, rank + 2W, ...
  // With pad_shares the order is first padded to a multiple of W by repeating its start, so that every rank has
  // the same number of samples and batches (training); without, nothing repeats and the shares differ by at most
  // one sample (validation, whose metrics are summed over the ranks). world_size 1: the whole order.
  int rank = 0;
  int world_size = 1;
  bool pad_shares = true;
};
// --cache-images: "off" (0), "auto" (a quarter of the physical memory) or a number of GB.
int64_t parse_image_cache_bytes(const std::string& s);

struct Batch {
  int64_t index = 0;   // batch number within the epoch
  int64_t size = 0;    // images in this batch (<= batch_size)
  int height = 0, width = 0;
  const float* images = nullptr;     // size x 3 x height x width
  const int32_t* labels = nullptr;   // size
  const int64_t* samples = nullptr;  // size: index of each image in the loader's sample list

  // Copies into a new tensor on `device` (CUDA: asynchronous on cuda::stream(), from pinned memory).
  Tensor images_to(Device device) const;  // float32 [size, 3, height, width]
  Tensor labels_to(Device device) const;  // int32 [size]
};

struct SkippedImage {
  std::string path;
  std::string reason;
  // Its place in the epoch's whole order, before the data-parallel split (this share's position x world_size +
  // rank): the reports of all ranks merge into the order one process meets them (train::gather_skipped).
  int64_t position = 0;
};
// "2 images skipped:" and a line per image ("  path: reason"), or "" when none (DataLoader::skipped_report).
std::string skipped_report(const std::vector<SkippedImage>& skipped);

class DataLoader {
 public:
  DataLoader(std::vector<Sample> samples, Compose transform, LoaderOptions options);
  ~DataLoader();  // stops and joins the workers, also in the middle of an epoch
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t num_samples() const { return static_cast<int64_t>(samples_.size()); }
  int64_t epoch_size() const;  // samples per epoch in this loader's share (num_samples() with one rank)
  int64_t batches_per_epoch() const;
  int64_t batch_size() const { return opt_.batch_size; }
  // The sample indices of `epoch` in the order its batches hold them (a seeded shuffle when shuffling; this rank's
  // share; without the dropped tail with drop_last): batch b is positions [b * batch_size, (b + 1) * batch_size).
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  Size2 image_size() const { return size_; }
  const std::vector<Sample>& samples() const { return samples_; }

  // Starts producing the batches of `epoch` (abandoning whatever is left of the previous one), from batch
  // `first_batch` on: the batches before it are neither decoded nor returned (resuming mid-epoch).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the epoch, or nullptr when the epoch is over. Throws the IOError of a bad image
  // (OnBadImage::Fail) or any other worker error; the epoch is then over.
  const Batch* next();
  // Images skipped so far in the current epoch (OnBadImage::Skip), in epoch order.
  const std::vector<SkippedImage>& skipped() const { return skipped_; }
  // "2 images skipped: a.jpg (reason); b.jpg (reason)", or "" when none.
  std::string skipped_report() const;
  // Images held decoded in RAM, and their bytes (LoaderOptions::image_cache_bytes).
  int64_t cached_images() const;
  int64_t cached_bytes() const;

 private:
  struct Slot {
    float* images = nullptr;
    int32_t* labels = nullptr;
    int64_t* sample_ids = nullptr;
    int64_t batch = -1;  // the batch it holds or is being filled with
    int64_t count = 0;   // images expected
    int64_t done = 0;    // images finished
    std::vector<std::string> bad;  // per row: "" or the IOError message
    std::exception_ptr error;      // a non-IOError failure (or the first IOError under Fail)
    int64_t error_row = -1;
    void* event = nullptr;  // cudaEvent_t; recorded when the consumer gives the batch back
    bool event_recorded = false;
  };

  void worker_loop();
  // The decoded image of sample `id`: from the RAM cache, or decoded (and kept when the budget allows).
  std::shared_ptr<const Image> decoded(int64_t id);
  void process(int64_t position, Slot& slot, int64_t row);
  void abandon_epoch(std::unique_lock<std::mutex>& lock);
  void release_current(std::unique_lock<std::mutex>& lock);
  int64_t batch_count(int64_t b) const;

  std::vector<Sample> samples_;
  Compose transform_;
  LoaderOptions opt_;
  Size2 size_;
  size_t image_floats_ = 0;  // 3 * H * W
  bool pinned_ = false;

  std::mutex mu_;
  std::condition_variable work_cv_;   // workers: a task is available or stop
  std::condition_variable ready_cv_;  // consumer: a slot finished, or workers went idle
  bool stop_ = false;
  bool started_ = false;  // start_epoch() was called
  bool epoch_active_ = false;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;  // sample indices in epoch order
  int64_t num_batches_ = 0;
  int64_t total_positions_ = 0;  // samples processed this epoch
  int64_t next_position_ = 0;    // next task to hand out
  int64_t released_ = 0;         // batches given back by the consumer (or skipped)
  int64_t consumer_batch_ = 0;   // next batch the consumer gets
  bool holding_ = false;         // the consumer holds slot of batch consumer_batch_-1
  int in_flight_ = 0;
  std::vector<Slot> slots_;
  Batch current_;
  std::vector<SkippedImage> skipped_;
  std::vector<std::thread> workers_;
  mutable std::mutex cache_mu_;  // guards decoded_ and decoded_bytes_
  std::vector<std::shared_ptr<const Image>> decoded_;  // per sample; null when not cached
  int64_t decoded_bytes_ = 0;
};

}  // namespace tl::io
