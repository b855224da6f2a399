// Error-analysis pictures of a classifier on a labelled image set (the val set after `tlengine train`, the folder
// of `tlengine eval --out`): top_losses.png, the images with the highest loss (fastai's plot_top_losses), and
// confusion.png, the confusion matrix as counts and row-normalised (recall per true class). Drawn with
// train/plot.h; the top losses reuse the prediction grid (train/report.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/dataset.h"
#include "io/image.h"
#include "io/transforms.h"
#include "train/plot.h"

namespace tl::train {

// One image's result.
struct ImageLoss {
  int64_t sample = 0;       // index in the sample list the loader was made from
  int truth = 0;            // true class
  int predicted = 0;        // first index of the largest logit (NaN ranks highest, as in ClassificationMetrics)
  double loss = 0;          // cross-entropy -log softmax(logits)[truth], without label smoothing or class weights
  double probability = 0;   // softmax(logits)[predicted]
};

// The results of `n` images from their logits (row-major n x num_classes, any finite or non-finite values),
// labels in [0, num_classes) and sample indices. Computed in double on the host (log-sum-exp, max-subtracted).
// Throws ValueError for a size mismatch or a label out of range.
std::vector<ImageLoss> image_losses(const std::vector<double>& logits, const int32_t* labels, const int64_t* samples,
                                    int64_t n, int64_t num_classes);

// The `k` images with the highest loss, highest first; a NaN loss counts as the highest; equal losses keep the
// lower sample index first.
std::vector<ImageLoss> top_losses(std::vector<ImageLoss> losses, size_t k);

// The top-losses grid: each image (decoded from samples[sample].path and passed through `transform`'s image
// steps, as the model saw it) titled "predicted (probability%)", "true: class" and "loss 2.31"; images that fail
// to decode are left out. Returns false (writing nothing) when there is no image to draw.
bool write_top_losses_png(const std::string& path, const std::vector<ImageLoss>& top,
                          const std::vector<io::Sample>& samples, const std::vector<std::string>& classes,
                          const io::Compose& transform);

// Two panels side by side: the counts (confusion[truth * C + predicted]) and each row divided by its total (the
// recall of each true class, in %; an empty row is grey), in a white-to-blue colour scale with a colour bar, true
// classes down the left and predicted classes rotated along the bottom (long names cut in the middle with "~").
// Cells show their value up to 30 classes; cells shrink to 10 px (the image grows) up to ~100 classes.
// Throws ValueError when confusion is not C x C for the C class names, or there are none.
io::Image render_confusion(const std::vector<int64_t>& confusion, const std::vector<std::string>& classes);
void write_confusion_png(const std::string& path, const std::vector<int64_t>& confusion,
                         const std::vector<std::string>& classes);

// The white-to-blue scale of the confusion picture (matplotlib's "Blues"), t in [0, 1] (clamped).
Color blues(double t);

// Both pictures in `dir` (which must exist): top_losses.png of the kTopLosses images with the highest loss (when
// one decodes) and confusion.png. Returns the names of the files written.
constexpr size_t kTopLosses = 16;
std::vector<std::string> write_error_analysis(const std::string& dir, const std::vector<ImageLoss>& losses,
                                              const std::vector<int64_t>& confusion,
                                              const std::vector<io::Sample>& samples,
                                              const std::vector<std::string>& classes, const io::Compose& transform);

}  // namespace tl::train
