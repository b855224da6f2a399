// Classification metrics accumulated over the batches of one phase (train or val of one epoch): mean loss,
// top-1 and top-k accuracy, per-class accuracy (recall), the confusion matrix, and their plain-text and JSON forms.
//
// Ranking rules (what counts as "predicted" and "in the top k"), chosen to match PyTorch on real data:
//  - the predicted class is the first index of the largest logit, as torch.argmax returns;
//  - a sample is top-k correct when fewer than k classes rank above its true class, where class j ranks above
//    class y when logit[j] > logit[y], or when they are equal and j < y (ties go to the lower index). torch.topk
//    does not promise an order among equal values; on logits without ties this is exactly
//    `label in logits.topk(k).indices`;
//  - NaN ranks above every number (as in torch.argmax / torch.topk), and equal to other NaNs.
// k is min(5, number of classes), so "top-5" on a 3-class problem is top-3 (always 100%).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace tl::train {

class ClassificationMetrics {
 public:
  explicit ClassificationMetrics(int num_classes);

  // One batch: logits (N, C) of any float dtype on any device (copied to a CPU float32 tensor when needed),
  // labels (N) int32 or int64 in [0, C), and the batch's mean loss. The loss is weighted by N in mean_loss().
  // Throws ShapeError / ValueError (before changing anything) for mismatched shapes or out-of-range labels.
  void add_batch(const Tensor& logits, const Tensor& labels, double batch_loss);
  // The same from raw row-major (batch_size, C) float logits and int32 labels.
  void add_batch(const float* logits, const int32_t* labels, int64_t batch_size, double batch_loss);
  // Counts accumulated elsewhere (train::RunningMetrics, on the device): samples, top-k correct, the sum of
  // batch_loss * batch_size and the C x C confusion counts (top-1 correct is their diagonal).
  void add_counts(int64_t count, int64_t correct_top_k, double loss_sum, const std::vector<int64_t>& confusion);
  void reset();

  int num_classes() const { return num_classes_; }
  int top_k() const { return top_k_; }  // min(5, C)
  int64_t count() const { return count_; }
  int64_t correct_top1() const { return correct_top1_; }
  int64_t correct_top_k() const { return correct_top_k_; }
  // NaN before any sample.
  double mean_loss() const;
  double loss_sum() const { return loss_sum_; }  // sum of batch_loss * batch_size
  double top1_accuracy() const;   // fraction in [0, 1]
  double top_k_accuracy() const;  // fraction in [0, 1]
  // Per class: correct / samples of that class (recall); NaN for a class with no samples.
  std::vector<double> per_class_accuracy() const;
  std::vector<int64_t> class_counts() const;  // samples per true class
  // Row-major C x C counts: confusion()[truth * C + predicted].
  const std::vector<int64_t>& confusion() const { return confusion_; }
  int64_t confusion_at(int truth, int predicted) const;

  struct ConfusedPair {
    int truth = 0;
    int predicted = 0;
    int64_t count = 0;
  };
  // The off-diagonal cells with the largest counts (count > 0), largest first; ties in (truth, predicted) order.
  std::vector<ConfusedPair> top_confused(size_t max_pairs) const;

  // Aligned plain text: overall line, per-class table, then the confusion matrix (rows = true class, columns =
  // predicted) for up to 20 classes, or the most confused pairs for more. `class_names` must have C names, or
  // be empty (then "class 0", "class 1", ...). Long names are shortened with a trailing "~".
  std::string table(const std::vector<std::string>& class_names = {}) const;

  // {"count", "loss", "top1", "top_k", "top_k_accuracy", "per_class_accuracy", "class_counts", "confusion"};
  // NaN becomes null. The confusion matrix (C x C) is left out when include_confusion is false.
  nlohmann::json to_json(bool include_confusion = true) const;

 private:
  int num_classes_;
  int top_k_;
  int64_t count_ = 0;
  int64_t correct_top1_ = 0;
  int64_t correct_top_k_ = 0;
  double loss_sum_ = 0.0;  // sum of batch_loss * batch_size
  std::vector<int64_t> confusion_;
};

}  // namespace tl::train
