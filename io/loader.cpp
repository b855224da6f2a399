// DataLoader: worker threads, pinned batch slots, per-sample seeded randomness (see loader.h).
#include "io/loader.h"

#if TL_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <unistd.h>

#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/device.h"
#include "core/error.h"

namespace tl::io {

OnBadImage parse_on_bad_image(const std::string& s) {
  if (s == "fail") return OnBadImage::Fail;
  if (s == "skip") return OnBadImage::Skip;
  throw ValueError(detail::concat("--on-bad-image must be 'fail' or 'skip', got '", s, "'"));
}

namespace {
// The CUDA runtime calls of the loader: host-to-device copies, pinned memory and the slot events. Without CUDA
// (TL_WITH_CUDA == 0) nothing is pinned, no event exists, and no tensor can live on a CUDA device.
#if TL_WITH_CUDA
void copy_to_device(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda::stream()));
}
void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
  return p;
}
void pinned_free(void* p) { cudaFreeHost(p); }
void* event_create() {
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}
void event_destroy(void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); }  // no throw: used in cleanup
void event_record(void* e) { CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), cuda::stream())); }
void event_wait(void* e) { CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e))); }
#else
void copy_to_device(void*, const void*, size_t) { TL_CHECK(false, CudaError, cuda::unavailable_reason()); }
void* pinned_alloc(size_t) { throw CudaError(cuda::unavailable_reason()); }
void pinned_free(void*) {}
void* event_create() { throw CudaError(cuda::unavailable_reason()); }
void event_destroy(void*) {}
void event_record(void*) {}
void event_wait(void*) {}
#endif

void* host_alloc(size_t bytes, bool pinned) {
  if (pinned) return pinned_alloc(bytes);
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  return p;
}
void host_free(void* p, bool pinned) {
  if (!p) return;
  if (pinned) pinned_free(p);
  else std::free(p);
}
}  // namespace

Tensor Batch::images_to(Device device) const {
  Tensor t = Tensor::empty({size, 3, height, width}, DType::F32, device);
  const size_t bytes = t.nbytes();
  if (device == Device::CPU) std::memcpy(t.data(), images, bytes);
  else copy_to_device(t.data(), images, bytes);
  return t;
}

Tensor Batch::labels_to(Device device) const {
  Tensor t = Tensor::empty({size}, DType::I32, device);
  const size_t bytes = t.nbytes();
  if (device == Device::CPU) std::memcpy(t.data(), labels, bytes);
  else copy_to_device(t.data(), labels, bytes);
  return t;
}

DataLoader::DataLoader(std::vector<Sample> samples, Compose transform, LoaderOptions options)
    : samples_(std::move(samples)), transform_(std::move(transform)), opt_(options) {
  TL_CHECK(!samples_.empty(), ValueError, "DataLoader: no samples");
  TL_CHECK(opt_.batch_size >= 1, ValueError, "DataLoader: batch size must be at least 1, got ", opt_.batch_size);
  TL_CHECK(opt_.num_workers >= 1, ValueError, "DataLoader: need at least 1 worker thread, got ", opt_.num_workers);
  TL_CHECK(opt_.prefetch >= 1, ValueError, "DataLoader: prefetch must be at least 1, got ", opt_.prefetch);
  TL_CHECK(opt_.world_size >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world_size, ValueError, "DataLoader: rank ",
           opt_.rank, " outside a world of ", opt_.world_size, " processes");
  if (opt_.image_cache_bytes > 0) decoded_.resize(samples_.size());
  std::optional<Size2> size = transform_.output_size();
  TL_CHECK(size.has_value(), ValueError, "DataLoader: the transform ", transform_.describe(),
           " gives images of varying size; end it with CenterCrop, RandomResizedCrop or Resize((h, w))");
  size_ = *size;
  image_floats_ = 3 * static_cast<size_t>(size_.height) * static_cast<size_t>(size_.width);
  pinned_ = opt_.pinned && cuda::available();

  slots_.resize(static_cast<size_t>(opt_.prefetch));
  const size_t bs = static_cast<size_t>(opt_.batch_size);
  try {
    for (Slot& s : slots_) {
      s.images = static_cast<float*>(host_alloc(bs * image_floats_ * sizeof(float), pinned_));
      s.labels = static_cast<int32_t*>(host_alloc(bs * sizeof(int32_t), pinned_));
      s.sample_ids = static_cast<int64_t*>(host_alloc(bs * sizeof(int64_t), pinned_));
      if (pinned_) s.event = event_create();
    }
    for (int i = 0; i < opt_.num_workers; ++i) workers_.emplace_back(&DataLoader::worker_loop, this);
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    for (Slot& s : slots_) {
      host_free(s.images, pinned_);
      host_free(s.labels, pinned_);
      host_free(s.sample_ids, pinned_);
      if (s.event) event_destroy(s.event);
    }
    throw;
  }
}

DataLoader::~DataLoader() {
  bool synchronize_device = false;  // an event could not be recorded: wait for the whole stream instead
  {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    // The batch the consumer still holds may have copies in flight (Batch::images_to on cuda::stream()): giving it
    // back records its slot's event after them, so the wait below covers that batch too.
    try {
      release_current(lock);
    } catch (const Error&) {
      holding_ = false;
      synchronize_device = true;
    }
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  if (synchronize_device) {
    try {
      cuda::synchronize();
    } catch (const Error&) {
    }  // no throw from a destructor
  }
  for (Slot& s : slots_) {
    if (s.event) {
      try {
        if (s.event_recorded) event_wait(s.event);  // GPU copies from this slot are done
      } catch (const Error&) {
      }  // no throw from a destructor
      event_destroy(s.event);
    }
    host_free(s.images, pinned_);
    host_free(s.labels, pinned_);
    host_free(s.sample_ids, pinned_);
  }
}

int64_t DataLoader::epoch_size() const {
  const int64_t n = num_samples(), w = opt_.world_size, r = opt_.rank;
  return opt_.pad_shares ? (n + w - 1) / w : n / w + (r < n % w ? 1 : 0);
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = epoch_size(), bs = opt_.batch_size;
  return opt_.drop_last ? n / bs : (n + bs - 1) / bs;
}

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  const int64_t n = num_samples();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  if (opt_.shuffle) {
    Rng rng(opt_.seed, 0x0E90C4ULL, static_cast<uint64_t>(epoch));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(rng.randint(0, i + 1))]);
  }
  if (opt_.world_size > 1) {  // this rank's share: pad by repeating the start, then every world_size-th position
    const int64_t w = opt_.world_size, padded = opt_.pad_shares ? (n + w - 1) / w * w : n;
    std::vector<int64_t> share;
    for (int64_t p = opt_.rank; p < padded; p += w) share.push_back(order[static_cast<size_t>(p % n)]);
    order = std::move(share);
  }
  if (opt_.drop_last) order.resize(static_cast<size_t>(batches_per_epoch() * opt_.batch_size));
  return order;
}

int64_t DataLoader::batch_count(int64_t b) const {
  return std::min(opt_.batch_size, total_positions_ - b * opt_.batch_size);
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  std::unique_lock<std::mutex> lock(mu_);
  abandon_epoch(lock);
  epoch_ = epoch;
  const int64_t n = epoch_size();
  order_ = epoch_order(epoch);
  num_batches_ = batches_per_epoch();
  total_positions_ = opt_.drop_last ? num_batches_ * opt_.batch_size : n;
  TL_CHECK(first_batch >= 0 && first_batch <= num_batches_, ValueError, "DataLoader::start_epoch: first_batch ",
           first_batch, " outside [0, ", num_batches_, "]");
  next_position_ = std::min(first_batch * opt_.batch_size, total_positions_);
  released_ = first_batch;
  consumer_batch_ = first_batch;
  for (Slot& s : slots_) s.batch = -1;
  skipped_.clear();
  epoch_active_ = true;
  started_ = true;
  work_cv_.notify_all();
}

void DataLoader::release_current(std::unique_lock<std::mutex>&) {
  if (!holding_) return;
  Slot& slot = slots_[static_cast<size_t>((consumer_batch_ - 1) % opt_.prefetch)];
  if (slot.event) {
    // The consumer may have queued copies from this slot: workers wait for them before refilling it.
    event_record(slot.event);
    slot.event_recorded = true;
  }
  holding_ = false;
  ++released_;
  work_cv_.notify_all();
}

void DataLoader::abandon_epoch(std::unique_lock<std::mutex>& lock) {
  release_current(lock);
  next_position_ = total_positions_;  // hand out nothing more
  ready_cv_.wait(lock, [&] { return in_flight_ == 0; });
  epoch_active_ = false;
}

const Batch* DataLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  TL_CHECK(started_, ValueError, "DataLoader::next() called before start_epoch()");
  release_current(lock);
  while (true) {
    if (!epoch_active_) return nullptr;
    if (consumer_batch_ >= num_batches_) {
      epoch_active_ = false;
      return nullptr;
    }
    const int64_t b = consumer_batch_;
    Slot& slot = slots_[static_cast<size_t>(b % opt_.prefetch)];
    ready_cv_.wait(lock, [&] { return slot.batch == b && slot.done == slot.count; });
    ++consumer_batch_;
    if (slot.error) {
      std::exception_ptr e = slot.error;
      ++released_;
      abandon_epoch(lock);
      std::rethrow_exception(e);
    }
    // Skip policy: move the good images down over the bad ones.
    int64_t n = 0;
    for (int64_t row = 0; row < slot.count; ++row) {
      const std::string& bad = slot.bad[static_cast<size_t>(row)];
      if (!bad.empty()) {
        const int64_t position = (b * opt_.batch_size + row) * opt_.world_size + opt_.rank;
        skipped_.push_back({samples_[static_cast<size_t>(slot.sample_ids[row])].path, bad, position});
        continue;
      }
      if (n != row) {
        std::memmove(slot.images + static_cast<size_t>(n) * image_floats_,
                     slot.images + static_cast<size_t>(row) * image_floats_, image_floats_ * sizeof(float));
        slot.labels[n] = slot.labels[row];
        slot.sample_ids[n] = slot.sample_ids[row];
      }
      ++n;
    }
    if (n == 0) {  // every image of the batch was bad
      ++released_;
      work_cv_.notify_all();
      continue;
    }
    holding_ = true;
    current_.index = b;
    current_.size = n;
    current_.height = size_.height;
    current_.width = size_.width;
    current_.images = slot.images;
    current_.labels = slot.labels;
    current_.samples = slot.sample_ids;
    return &current_;
  }
}

void DataLoader::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] {
      return stop_ || (epoch_active_ && next_position_ < total_positions_ &&
                       next_position_ / opt_.batch_size < released_ + opt_.prefetch);
    });
    if (stop_) return;
    const int64_t position = next_position_++;
    const int64_t b = position / opt_.batch_size, row = position % opt_.batch_size;
    Slot& slot = slots_[static_cast<size_t>(b % opt_.prefetch)];
    if (row == 0) {  // first task of this batch: the slot is free (batch b - prefetch was released)
      slot.batch = b;
      slot.count = batch_count(b);
      slot.done = 0;
      slot.bad.assign(static_cast<size_t>(slot.count), std::string());
      slot.error = nullptr;
      slot.error_row = -1;
    }
    slot.sample_ids[row] = order_[static_cast<size_t>(position)];
    const bool wait_for_gpu = slot.event_recorded;
    ++in_flight_;
    lock.unlock();

    std::string bad;
    std::exception_ptr error;
    try {
      if (wait_for_gpu) event_wait(slot.event);
      process(position, slot, row);
    } catch (const IOError& e) {
      bad = e.what();
      if (bad.empty()) bad = "unreadable image";
    } catch (...) {
      error = std::current_exception();
    }

    lock.lock();
    if (!bad.empty()) {
      slot.bad[static_cast<size_t>(row)] = bad;
      if (opt_.on_bad_image == OnBadImage::Fail)
        error = std::make_exception_ptr(IOError(bad + "; to leave unreadable images out and list them, use "
                                                      "--on-bad-image skip"));
    }
    if (error && (slot.error_row < 0 || row < slot.error_row)) {
      slot.error = error;
      slot.error_row = row;
    }
    ++slot.done;
    --in_flight_;
    ready_cv_.notify_all();
  }
}

int64_t parse_image_cache_bytes(const std::string& s) {
  if (s == "off") return 0;
  if (s == "auto") {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 4 : (int64_t{2} << 30);
  }
  char* end = nullptr;
  const double gb = std::strtod(s.c_str(), &end);
  TL_CHECK(end && *end == '\0' && end != s.c_str() && gb >= 0, ValueError,
           "--cache-images must be auto, off or a number of GB, got '", s, "'");
  return static_cast<int64_t>(gb * (1LL << 30));
}

std::shared_ptr<const Image> DataLoader::decoded(int64_t id) {
  if (opt_.image_cache_bytes > 0) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (decoded_[static_cast<size_t>(id)]) return decoded_[static_cast<size_t>(id)];
  }
  auto img = std::make_shared<const Image>(decode_image(samples_[static_cast<size_t>(id)].path, opt_.limits));
  if (opt_.image_cache_bytes > 0) {
    const int64_t bytes = static_cast<int64_t>(img->pixels.size());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (!decoded_[static_cast<size_t>(id)] && decoded_bytes_ + bytes <= opt_.image_cache_bytes) {
      decoded_[static_cast<size_t>(id)] = img;
      decoded_bytes_ += bytes;
    }
  }
  return img;
}

int64_t DataLoader::cached_images() const {
  std::lock_guard<std::mutex> lock(cache_mu_);
  return std::count_if(decoded_.begin(), decoded_.end(), [](const auto& p) { return p != nullptr; });
}
int64_t DataLoader::cached_bytes() const {
  std::lock_guard<std::mutex> lock(cache_mu_);
  return decoded_bytes_;
}

void DataLoader::process(int64_t position, Slot& slot, int64_t row) {
  const int64_t id = order_[static_cast<size_t>(position)];
  const Sample& sample = samples_[static_cast<size_t>(id)];
  const std::shared_ptr<const Image> img = decoded(id);
  Rng rng(opt_.seed, static_cast<uint64_t>(epoch_), static_cast<uint64_t>(id));
  const Image out = transform_.apply_image(*img, rng);
  TL_CHECK(out.height == size_.height && out.width == size_.width, ValueError, "DataLoader: the transform gave a ",
           out.height, "x", out.width, " image for '", sample.path, "', expected ", size_.height, "x", size_.width);
  to_tensor_normalize(out, transform_.mean(), transform_.std(), slot.images + static_cast<size_t>(row) * image_floats_);
  slot.labels[row] = sample.label;
}

std::string skipped_report(const std::vector<SkippedImage>& skipped) {
  if (skipped.empty()) return "";
  std::ostringstream os;
  os << skipped.size() << " image" << (skipped.size() == 1 ? "" : "s") << " skipped:";
  for (const SkippedImage& s : skipped) os << "\n  " << s.path << ": " << s.reason;
  return os.str();
}

std::string DataLoader::skipped_report() const { return io::skipped_report(skipped_); }

}  // namespace tl::io
