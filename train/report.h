// What `tlengine train` shows and leaves behind: training-curve and prediction-grid PNGs (drawn by a small
// anti-aliased rasteriser with stb_easy_font text, written atomically), a progress bar / progress lines per phase,
// and a JSON-lines metrics log.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "io/image.h"

namespace tl::train {

// ---- Files ----

// Atomic writes (io/files.h): the old file or the new one, never a partial one; errors name the file and free space.
using io::write_file_atomic;
// Encodes an RGB image as PNG in memory and writes it with write_file_atomic.
void write_png_atomic(const std::string& path, const io::Image& image);

// ---- Training curves ----

// One epoch's summary. Accuracies are fractions in [0, 1] (drawn as percent). NaN or infinite values (a phase
// that did not run, a diverged loss) are skipped: the curve breaks there.
struct EpochRecord {
  int epoch = 0;
  double train_loss = 0, val_loss = 0, train_acc = 0, val_acc = 0, lr = 0;
  bool unfrozen = false;  // gradual unfreezing: more of the model trains from this epoch on
};

// Two panels side by side: loss (train and val) and accuracy (train and val), with axes, tick labels, a legend
// and markers at the data points; dashed vertical "lr change" lines at the epochs `lr_steps` (EpochRecord::epoch
// numbers: the first epoch at the new lr; see LRSchedule::step_epochs; smooth schedules have none), and dashed green
// "unfreeze" lines at the epochs whose record says `unfrozen` (--unfreeze, --freeze-epochs). Works for one
// epoch, flat curves and all-NaN series. Records are drawn in the order given.
io::Image render_curves(const std::vector<EpochRecord>& history, const std::vector<int>& lr_steps = {});
void write_curves_png(const std::string& path, const std::vector<EpochRecord>& history,
                      const std::vector<int>& lr_steps = {});

// ---- Prediction grid ----

struct GridItem {
  io::Image image;  // RGB, any size (letterboxed into the tile, keeping the aspect ratio)
  std::string predicted;
  std::string truth;
  float confidence = 0;  // probability of the predicted class, in [0, 1]
  std::string note = {};  // optional third line under the truth, e.g. "loss 2.31" (top_losses.png)
};

// Like torchvision's visualize_model: one tile per item, `columns` per row, each image fitted into
// kGridTile x kGridTile, titled "pred (87%)" above and "true: x" below, green when right, red when wrong.
// The image is columns * kGridCellWidth wide (fewer columns when there are fewer items) and
// rows * kGridCellHeight high; rows * (kGridCellHeight + kGridNoteHeight) when an item has a note.
constexpr int kGridTile = 160;
constexpr int kGridCellWidth = 208;
constexpr int kGridCellHeight = 240;
constexpr int kGridNoteHeight = 24;
io::Image render_prediction_grid(const std::vector<GridItem>& items, int columns);
void write_prediction_grid_png(const std::string& path, const std::vector<GridItem>& items, int columns);

// ---- Progress ----

enum class ProgressStyle {
  Auto,  // Bar when `out` is std::cerr and stderr is a terminal, else Lines
  Bar,   // one line redrawn with '\r' (at most ~10 times per second, and on the last batch)
  Lines  // a plain line at every ~10% of the batches (never for the last batch: finish() prints the summary)
};

// Progress of one phase (e.g. "train" or "val") of one epoch. Call update() after every batch and finish() at the
// end. Lines look like
//   train epoch 3/25  batch 12/40  57.3 img/s  loss 0.4123  acc 81.25%  ETA 0:12
//   train epoch 3/25  done: 240 images in 4.2 s (57.1 img/s)  loss 0.4123  acc 81.25%
// `clock` returns seconds (monotonic); the default is std::chrono::steady_clock.
class Progress {
 public:
  Progress(std::string phase, int epoch, int num_epochs, int64_t total_batches, std::ostream& out,
           ProgressStyle style = ProgressStyle::Auto, std::function<double()> clock = {});
  explicit Progress(std::string phase, int epoch = 1, int num_epochs = 1, int64_t total_batches = 0);

  // `batches_done` is 1-based (1 after the first batch); `batch_images` the images in that batch; `running_loss`
  // and `running_accuracy` (fraction) the phase's means so far (NaN prints "-").
  void update(int64_t batches_done, int64_t batch_images, double running_loss, double running_accuracy);
  // Prints the summary line (ending a progress bar). Idempotent.
  void finish();
  ProgressStyle style() const { return style_; }
  int64_t images() const { return images_; }
  double elapsed_seconds() const;

 private:
  std::string prefix() const;
  std::string status_line(bool final_line) const;

  std::string phase_;
  int epoch_, num_epochs_;
  int64_t total_batches_;
  std::ostream& out_;
  ProgressStyle style_;
  std::function<double()> clock_;
  double start_ = 0, last_draw_ = -1;
  int64_t batches_ = 0, images_ = 0;
  int last_decile_ = 0;
  double loss_, accuracy_;
  size_t last_bar_width_ = 0;
  bool finished_ = false;
};

// ---- Metrics log ----

// Appends one JSON object per line to `path` (created if missing), flushing after every line so that a crash
// loses at most the line being written. Throws IOError naming the file when it cannot be opened or written.
class JsonLinesWriter {
 public:
  explicit JsonLinesWriter(const std::string& path);
  ~JsonLinesWriter();
  JsonLinesWriter(const JsonLinesWriter&) = delete;
  JsonLinesWriter& operator=(const JsonLinesWriter&) = delete;

  void write(const nlohmann::json& object);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace tl::train
