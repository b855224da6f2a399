// RunningMetrics (see running_metrics.h): the CPU loop, the CUDA launch, and the host copies.
#include "train/running_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/device.h"
#include "core/error.h"
#include "kernels/metrics_rank.h"
#if TL_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/metrics.h"
#endif

namespace tl::train {
namespace {
constexpr int kSums = 4;

template <typename T>
void accumulate_cpu(const T* logits, const int32_t* labels, double loss, int64_t n, int64_t c, int k,
                    int64_t* counts, double* sums) {
  sums[0] += loss * static_cast<double>(n);
  if (!std::isfinite(loss)) sums[1] += 1;
  sums[2] += static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = labels[i];
    if (y < 0 || y >= c) {
      ++counts[c * c + 1];
      continue;
    }
    const T* row = logits + i * c;
    const rank::RowRank r = rank::rank_row([row](int64_t j) { return static_cast<double>(row[j]); }, c, y, k);
    ++counts[y * c + r.predicted];
    if (r.in_top_k) ++counts[c * c];
    if (r.predicted == y) sums[3] += 1;
  }
}

RunningMetrics::Totals totals_of(const double* s) {
  return {s[0], static_cast<int64_t>(s[1]), static_cast<int64_t>(s[2]), static_cast<int64_t>(s[3])};
}
}  // namespace

double RunningMetrics::Totals::mean_loss() const {
  return count ? loss_sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}
double RunningMetrics::Totals::accuracy() const {
  return count ? static_cast<double>(correct) / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

RunningMetrics::RunningMetrics(int num_classes, Device device)
    : num_classes_(num_classes), top_k_(std::min(5, num_classes)), device_(device) {
  TL_CHECK(num_classes >= 1, ValueError, "RunningMetrics: the number of classes must be at least 1, got ", num_classes);
  const int64_t c = num_classes;
  counts_ = Tensor::empty({c * c + 2}, DType::I64, device);
  sums_ = Tensor::empty({kSums}, DType::F64, device);
#if TL_WITH_CUDA
  if (device == Device::CUDA) {
    CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_sums_), kSums * sizeof(double), cudaHostAllocDefault));
    std::fill(host_sums_, host_sums_ + kSums, 0.0);
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    copied_ = e;
  }
#endif
  reset();
}

RunningMetrics::~RunningMetrics() {
#if TL_WITH_CUDA
  if (copied_) {  // a copy into host_sums_ may still be in flight
    cudaEventSynchronize(static_cast<cudaEvent_t>(copied_));
    cudaEventDestroy(static_cast<cudaEvent_t>(copied_));
  }
  if (host_sums_) cudaFreeHost(host_sums_);
#endif
}

void RunningMetrics::add(const Tensor& logits, const Tensor& labels, const Tensor& loss) {
  const int64_t c = num_classes_;
  TL_CHECK(logits.defined() && logits.ndim() == 2 && logits.size(1) == c, ShapeError,
           "RunningMetrics::add: logits must be (N, ", c, "), got ", logits.defined() ? logits.str() : "undefined");
  const int64_t n = logits.size(0);
  TL_CHECK(labels.defined() && labels.ndim() == 1 && labels.size(0) == n, ShapeError, "RunningMetrics::add: labels must be (",
           n, "), got ", labels.defined() ? labels.str() : "undefined");
  TL_CHECK(loss.defined() && loss.numel() == 1 && (loss.dtype() == DType::F32 || loss.dtype() == DType::F64),
           ShapeError, "RunningMetrics::add: the loss must be one float32 or float64 value, got ",
           loss.defined() ? loss.str() : "undefined");
  TL_CHECK(logits.device() == device_ && labels.device() == device_ && loss.device() == device_, ValueError,
           "RunningMetrics::add: logits, labels and loss must be on ", device_name(device_));
  const Tensor y = labels.dtype() == DType::I32 ? labels : labels.to(DType::I32);
  if (device_ == Device::CUDA) {
#if TL_WITH_CUDA
    kernels::accumulate_metrics(logits.data(), logits.dtype(), y.data_as<int32_t>(), loss.data(), loss.dtype(), n, c,
                                top_k_, reinterpret_cast<uint64_t*>(counts_.data()), sums_.data_as<double>(),
                                cuda::stream());
#endif
    return;
  }
  const double l = loss.to_doubles()[0];
  int64_t* counts = counts_.data_as<int64_t>();
  double* sums = sums_.data_as<double>();
  if (logits.dtype() == DType::F64)
    accumulate_cpu(logits.data_as<double>(), y.data_as<int32_t>(), l, n, c, top_k_, counts, sums);
  else
    accumulate_cpu(logits.to(DType::F32).data_as<float>(), y.data_as<int32_t>(), l, n, c, top_k_, counts, sums);
}

RunningMetrics::Totals RunningMetrics::exact() {
  return totals_of(sums_.to(Device::CPU).data_as<double>());
}

RunningMetrics::Totals RunningMetrics::lagged() {
  if (device_ != Device::CUDA) return exact();
#if TL_WITH_CUDA
  auto e = static_cast<cudaEvent_t>(copied_);
  if (copy_pending_) CUDA_CHECK(cudaEventSynchronize(e));  // the copy started by the previous call
  const Totals t = totals_of(host_sums_);
  CUDA_CHECK(cudaMemcpyAsync(host_sums_, sums_.data(), kSums * sizeof(double), cudaMemcpyDeviceToHost,
                             cuda::stream()));
  CUDA_CHECK(cudaEventRecord(e, cuda::stream()));
  copy_pending_ = true;
  return t;
#else
  return exact();
#endif
}

void RunningMetrics::read_into(ClassificationMetrics& m) {
  TL_CHECK(m.num_classes() == num_classes_, ValueError, "RunningMetrics::read_into: metrics of ", m.num_classes(),
           " classes, counts of ", num_classes_);
  const Tensor counts = counts_.to(Device::CPU);
  const Totals t = exact();
  const int64_t* p = counts.data_as<int64_t>();
  const int64_t cc = static_cast<int64_t>(num_classes_) * num_classes_;
  TL_CHECK(p[cc + 1] == 0, ValueError, p[cc + 1], " label(s) outside [0, ", num_classes_,
           "): check the data set's class list");
  m.add_counts(t.count, p[cc], t.loss_sum, std::vector<int64_t>(p, p + cc));
  reset();
}

void RunningMetrics::reset() {
#if TL_WITH_CUDA
  if (copy_pending_) CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(copied_)));
  copy_pending_ = false;
  if (host_sums_) std::fill(host_sums_, host_sums_ + kSums, 0.0);
  if (device_ == Device::CUDA) {  // all-zero bytes are 0 in int64 and float64
    CUDA_CHECK(cudaMemsetAsync(counts_.data(), 0, counts_.nbytes(), cuda::stream()));
    CUDA_CHECK(cudaMemsetAsync(sums_.data(), 0, sums_.nbytes(), cuda::stream()));
    return;
  }
#endif
  counts_.zero_();
  sums_.zero_();
}

}  // namespace tl::train
