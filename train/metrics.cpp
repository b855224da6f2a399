// ClassificationMetrics (see metrics.h): per-row ranking of the true class, counts, and text / JSON rendering.
#include "train/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "kernels/metrics_rank.h"

namespace tl::train {
namespace {

constexpr int kMaxMatrixClasses = 20;   // more classes: per-class table and confused pairs only
constexpr size_t kMaxNameWidth = 24;    // class names longer than this are shortened
constexpr size_t kMaxColumnWidth = 10;  // confusion-matrix column headers
constexpr size_t kConfusedPairs = 20;

std::string shorten(const std::string& s, size_t width) {
  if (s.size() <= width) return s;
  if (width <= 1) return s.substr(0, width);
  return s.substr(0, width - 1) + "~";
}

std::string pad_left(const std::string& s, size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}
std::string pad_right(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

std::string percent(double fraction) {
  if (std::isnan(fraction)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * fraction);
  return buf;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

ClassificationMetrics::ClassificationMetrics(int num_classes)
    : num_classes_(num_classes), top_k_(std::min(5, num_classes)) {
  TL_CHECK(num_classes >= 1, ValueError, "ClassificationMetrics: the number of classes must be at least 1, got ",
           num_classes);
  confusion_.assign(static_cast<size_t>(num_classes) * static_cast<size_t>(num_classes), 0);
}

void ClassificationMetrics::reset() {
  count_ = correct_top1_ = correct_top_k_ = 0;
  loss_sum_ = 0.0;
  std::fill(confusion_.begin(), confusion_.end(), 0);
}

void ClassificationMetrics::add_batch(const Tensor& logits, const Tensor& labels, double batch_loss) {
  TL_CHECK(logits.defined() && labels.defined(), ValueError, "ClassificationMetrics::add_batch: undefined tensor");
  TL_CHECK(logits.ndim() == 2 && logits.size(1) == num_classes_, ShapeError,
           "ClassificationMetrics::add_batch: logits must be (N, ", num_classes_, "), got ", logits.str());
  TL_CHECK(labels.ndim() == 1 && labels.size(0) == logits.size(0), ShapeError,
           "ClassificationMetrics::add_batch: labels must be (", logits.size(0), "), got ", labels.str());
  TL_CHECK(labels.dtype() == DType::I32 || labels.dtype() == DType::I64, DTypeError,
           "ClassificationMetrics::add_batch: labels must be int32 or int64, got ", labels.str());
  TL_CHECK(logits.dtype() != DType::I32 && logits.dtype() != DType::I64, DTypeError,
           "ClassificationMetrics::add_batch: logits must be floating point, got ", logits.str());
  const Tensor x = logits.to(Device::CPU, DType::F32, Layout::NCHW);
  const Tensor t = labels.to(Device::CPU, DType::I32, Layout::NCHW);
  add_batch(x.data_as<float>(), t.data_as<int32_t>(), x.size(0), batch_loss);
}

void ClassificationMetrics::add_batch(const float* logits, const int32_t* labels, int64_t batch_size,
                                      double batch_loss) {
  TL_CHECK(batch_size >= 0, ValueError, "ClassificationMetrics::add_batch: negative batch size ", batch_size);
  if (batch_size == 0) return;
  TL_CHECK(logits && labels, ValueError, "ClassificationMetrics::add_batch: null logits or labels");
  for (int64_t i = 0; i < batch_size; ++i)
    TL_CHECK(labels[i] >= 0 && labels[i] < num_classes_, ValueError, "ClassificationMetrics::add_batch: label ",
             labels[i], " of sample ", i, " is outside [0, ", num_classes_, "); check the data set's class list");
  const int64_t c = num_classes_;
  for (int64_t i = 0; i < batch_size; ++i) {
    const float* row = logits + i * c;
    const int y = labels[i];
    const rank::RowRank r = rank::rank_row([row](int64_t j) { return static_cast<double>(row[j]); }, c, y, top_k_);
    if (r.predicted == y) ++correct_top1_;
    if (r.in_top_k) ++correct_top_k_;
    ++confusion_[static_cast<size_t>(y) * c + r.predicted];
  }
  count_ += batch_size;
  loss_sum_ += batch_loss * static_cast<double>(batch_size);
}

void ClassificationMetrics::add_counts(int64_t count, int64_t correct_top_k, double loss_sum,
                                       const std::vector<int64_t>& confusion) {
  TL_CHECK(confusion.size() == confusion_.size(), ShapeError, "ClassificationMetrics::add_counts: ",
           confusion.size(), " confusion cells for ", num_classes_, " classes");
  int64_t total = 0;
  for (int64_t v : confusion) total += v;
  TL_CHECK(count >= 0 && total == count && correct_top_k >= 0 && correct_top_k <= count, ValueError,
           "ClassificationMetrics::add_counts: inconsistent counts (", count, " samples, ", total,
           " in the confusion matrix, ", correct_top_k, " top-k correct)");
  for (size_t i = 0; i < confusion_.size(); ++i) confusion_[i] += confusion[i];
  for (int j = 0; j < num_classes_; ++j) correct_top1_ += confusion[static_cast<size_t>(j) * (num_classes_ + 1)];
  count_ += count;
  correct_top_k_ += correct_top_k;
  loss_sum_ += loss_sum;
}

double ClassificationMetrics::mean_loss() const {
  return count_ ? loss_sum_ / static_cast<double>(count_) : std::numeric_limits<double>::quiet_NaN();
}
double ClassificationMetrics::top1_accuracy() const {
  return count_ ? static_cast<double>(correct_top1_) / count_ : std::numeric_limits<double>::quiet_NaN();
}
double ClassificationMetrics::top_k_accuracy() const {
  return count_ ? static_cast<double>(correct_top_k_) / count_ : std::numeric_limits<double>::quiet_NaN();
}

int64_t ClassificationMetrics::confusion_at(int truth, int predicted) const {
  TL_CHECK(truth >= 0 && truth < num_classes_ && predicted >= 0 && predicted < num_classes_, ValueError,
           "ClassificationMetrics::confusion_at(", truth, ", ", predicted, "): outside [0, ", num_classes_, ")");
  return confusion_[static_cast<size_t>(truth) * num_classes_ + predicted];
}

std::vector<int64_t> ClassificationMetrics::class_counts() const {
  std::vector<int64_t> counts(num_classes_, 0);
  for (int t = 0; t < num_classes_; ++t)
    for (int p = 0; p < num_classes_; ++p) counts[t] += confusion_[static_cast<size_t>(t) * num_classes_ + p];
  return counts;
}

std::vector<double> ClassificationMetrics::per_class_accuracy() const {
  const std::vector<int64_t> counts = class_counts();
  std::vector<double> acc(num_classes_);
  for (int t = 0; t < num_classes_; ++t)
    acc[t] = counts[t] ? static_cast<double>(confusion_at(t, t)) / counts[t]
                       : std::numeric_limits<double>::quiet_NaN();
  return acc;
}

std::vector<ClassificationMetrics::ConfusedPair> ClassificationMetrics::top_confused(size_t max_pairs) const {
  std::vector<ConfusedPair> pairs;
  for (int t = 0; t < num_classes_; ++t)
    for (int p = 0; p < num_classes_; ++p) {
      const int64_t n = confusion_[static_cast<size_t>(t) * num_classes_ + p];
      if (t != p && n > 0) pairs.push_back({t, p, n});
    }
  std::stable_sort(pairs.begin(), pairs.end(),
                   [](const ConfusedPair& a, const ConfusedPair& b) { return a.count > b.count; });
  if (pairs.size() > max_pairs) pairs.resize(max_pairs);
  return pairs;
}

std::string ClassificationMetrics::table(const std::vector<std::string>& class_names) const {
  TL_CHECK(class_names.empty() || static_cast<int>(class_names.size()) == num_classes_, ValueError,
           "ClassificationMetrics::table: ", class_names.size(), " class names given for ", num_classes_,
           " classes");
  std::vector<std::string> names(num_classes_);
  for (int c = 0; c < num_classes_; ++c)
    names[c] = shorten(class_names.empty() ? "class " + std::to_string(c) : class_names[c], kMaxNameWidth);
  size_t name_width = 5;  // "class"
  for (const std::string& n : names) name_width = std::max(name_width, n.size());

  const std::vector<int64_t> counts = class_counts();
  const std::vector<double> acc = per_class_accuracy();
  std::ostringstream os;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld samples, mean loss %.4f, top-1 %s, top-%d %s\n",
                static_cast<long long>(count_), mean_loss(), percent(top1_accuracy()).c_str(), top_k_,
                percent(top_k_accuracy()).c_str());
  os << buf << "\n";

  size_t count_width = 7;  // "samples"
  for (int64_t n : counts) count_width = std::max(count_width, std::to_string(n).size());
  os << pad_right("class", name_width) << "  " << pad_left("samples", count_width) << "  "
     << pad_left("correct", count_width) << "  " << pad_left("accuracy", 8) << "\n";
  for (int c = 0; c < num_classes_; ++c)
    os << pad_right(names[c], name_width) << "  " << pad_left(std::to_string(counts[c]), count_width) << "  "
       << pad_left(std::to_string(confusion_at(c, c)), count_width) << "  " << pad_left(percent(acc[c]), 8) << "\n";

  if (num_classes_ <= kMaxMatrixClasses) {
    size_t column_width = 1;
    for (int64_t n : confusion_) column_width = std::max(column_width, std::to_string(n).size());
    for (const std::string& n : names) column_width = std::max(column_width, std::min(n.size(), kMaxColumnWidth));
    const std::string corner = "true \\ predicted";
    const size_t row_header = std::max(name_width, corner.size());
    os << "\nConfusion matrix (rows: true class, columns: predicted class)\n" << pad_right(corner, row_header);
    for (int p = 0; p < num_classes_; ++p) os << "  " << pad_left(shorten(names[p], column_width), column_width);
    os << "\n";
    for (int t = 0; t < num_classes_; ++t) {
      os << pad_right(names[t], row_header);
      for (int p = 0; p < num_classes_; ++p) os << "  " << pad_left(std::to_string(confusion_at(t, p)), column_width);
      os << "\n";
    }
  } else {
    const std::vector<ConfusedPair> pairs = top_confused(kConfusedPairs);
    os << "\nMost confused pairs (" << num_classes_ << " classes: confusion matrix not shown)\n";
    if (pairs.empty()) os << "none: every sample was classified correctly\n";
    for (const ConfusedPair& p : pairs)
      os << pad_left(std::to_string(p.count), count_width) << "  " << names[p.truth] << " -> predicted as "
         << names[p.predicted] << "\n";
  }
  return os.str();
}

nlohmann::json ClassificationMetrics::to_json(bool include_confusion) const {
  nlohmann::json j;
  j["count"] = count_;
  j["loss"] = number_or_null(mean_loss());
  j["top1"] = number_or_null(top1_accuracy());
  j["top_k"] = top_k_;
  j["top_k_accuracy"] = number_or_null(top_k_accuracy());
  nlohmann::json per_class = nlohmann::json::array();
  for (double a : per_class_accuracy()) per_class.push_back(number_or_null(a));
  j["per_class_accuracy"] = per_class;
  j["class_counts"] = class_counts();
  if (include_confusion) {
    nlohmann::json rows = nlohmann::json::array();
    for (int t = 0; t < num_classes_; ++t)
      rows.push_back(std::vector<int64_t>(confusion_.begin() + static_cast<ptrdiff_t>(t) * num_classes_,
                                          confusion_.begin() + static_cast<ptrdiff_t>(t + 1) * num_classes_));
    j["confusion"] = rows;
  }
  return j;
}

}  // namespace tl::train
