// Reports of `tlengine train` (see report.h): the curve and prediction-grid renderers (drawn with train/plot.h),
// atomic PNG writing, the progress display and the JSON-lines log.
#include "train/report.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <sstream>

#include <stb/stb_image_write.h>  // the implementation is compiled in io/image.cpp

#include "core/error.h"
#include "io/transforms.h"
#include "train/plot.h"

namespace tl::train {

// ---------------------------------------------------------------------------------------------------------------
// Files

namespace {
void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(context);
  const auto* bytes = static_cast<const uint8_t*>(data);
  out->insert(out->end(), bytes, bytes + size);
}
}  // namespace

void write_png_atomic(const std::string& path, const io::Image& image) {
  TL_CHECK(image.width > 0 && image.height > 0 &&
               image.pixels.size() == static_cast<size_t>(image.width) * image.height * 3,
           ValueError, "cannot write '", path, "': the image has an invalid size ", image.width, "x", image.height);
  std::vector<uint8_t> png;
  const int ok = stbi_write_png_to_func(append_bytes, &png, image.width, image.height, 3, image.pixels.data(),
                                        image.width * 3);
  TL_CHECK(ok && !png.empty(), IOError, "cannot write '", path, "': PNG encoding failed");
  write_file_atomic(path, png.data(), png.size());
}

namespace {
const Color kTrain{31, 119, 180};   // matplotlib blue
const Color kVal{255, 127, 14};     // matplotlib orange
const Color kLrChange{150, 150, 150};
const Color kUnfreeze{44, 160, 44};  // matplotlib green
}  // namespace

io::Image render_curves(const std::vector<EpochRecord>& history, const std::vector<int>& lr_steps) {
  constexpr int kPanelWidth = 640, kPanelHeight = 480;
  Canvas cv(2 * kPanelWidth, kPanelHeight, kWhite);
  std::vector<double> xs;
  Series train_loss{"train", kTrain, {}}, val_loss{"val", kVal, {}}, train_acc{"train", kTrain, {}},
      val_acc{"val", kVal, {}};
  VerticalLines lr_changes{"lr change", kLrChange, {}}, unfreezes{"unfreeze", kUnfreeze, {}};
  int first = 1, last = 1;  // an empty history gets an axis around epoch 1
  for (size_t i = 0; i < history.size(); ++i) {
    const EpochRecord& r = history[i];
    xs.push_back(r.epoch);
    train_loss.y.push_back(r.train_loss);
    val_loss.y.push_back(r.val_loss);
    train_acc.y.push_back(100 * r.train_acc);
    val_acc.y.push_back(100 * r.val_acc);
    first = i == 0 ? r.epoch : std::min(first, r.epoch);
    last = i == 0 ? r.epoch : std::max(last, r.epoch);
    if (r.unfrozen) unfreezes.xs.push_back(r.epoch);
  }
  for (int e : lr_steps)
    if (e > first && e <= last) lr_changes.xs.push_back(e);  // inside the drawn epochs
  Axis xa = epoch_axis(first, last);
  xa.title = "epoch";
  std::vector<double> losses = train_loss.y, accs = train_acc.y;
  losses.insert(losses.end(), val_loss.y.begin(), val_loss.y.end());
  accs.insert(accs.end(), val_acc.y.begin(), val_acc.y.end());
  const double inf = std::numeric_limits<double>::infinity();
  draw_panel(cv, {0, 0, kPanelWidth, kPanelHeight}, "Loss", xs, {train_loss, val_loss}, xa, value_axis(losses, 0, inf, 1),
             {lr_changes, unfreezes});
  draw_panel(cv, {kPanelWidth, 0, kPanelWidth, kPanelHeight}, "Accuracy (%)", xs, {train_acc, val_acc}, xa,
             value_axis(accs, 0, 100, 100), {lr_changes, unfreezes});
  return std::move(cv.image());
}

void write_curves_png(const std::string& path, const std::vector<EpochRecord>& history, const std::vector<int>& lr_steps) {
  write_png_atomic(path, render_curves(history, lr_steps));
}

// ---------------------------------------------------------------------------------------------------------------
// Prediction grid

io::Image render_prediction_grid(const std::vector<GridItem>& items, int columns) {
  TL_CHECK(!items.empty(), ValueError, "prediction grid: no images to draw");
  TL_CHECK(columns >= 1, ValueError, "prediction grid: columns must be at least 1, got ", columns);
  const int cols = std::min<int>(columns, static_cast<int>(items.size()));
  const int rows = static_cast<int>((items.size() + cols - 1) / cols);
  const bool notes = std::any_of(items.begin(), items.end(), [](const GridItem& it) { return !it.note.empty(); });
  const int cell_height = kGridCellHeight + (notes ? kGridNoteHeight : 0);
  Canvas cv(cols * kGridCellWidth, rows * cell_height, kWhite);
  constexpr float kScale = 2;
  for (size_t i = 0; i < items.size(); ++i) {
    const GridItem& item = items[i];
    const io::Image& src = item.image;
    TL_CHECK(src.width > 0 && src.height > 0 && src.pixels.size() == static_cast<size_t>(src.width) * src.height * 3,
             ValueError, "prediction grid: image ", i, " (true class '", item.truth, "') has an invalid size ",
             src.width, "x", src.height, " with ", src.pixels.size(), " bytes");
    const int cell_x = static_cast<int>(i % cols) * kGridCellWidth, cell_y = static_cast<int>(i / cols) * cell_height;
    const bool right = item.predicted == item.truth;
    const Color c = right ? kRight : kWrong;
    const float cx = cell_x + kGridCellWidth / 2.0f;
    const float text_room = kGridCellWidth - 12;

    // Title: "pred (87%)", the class name shortened to fit.
    char pct[16];
    if (std::isfinite(item.confidence))
      std::snprintf(pct, sizeof pct, " (%d%%)", static_cast<int>(std::lround(100 * std::clamp(item.confidence, 0.0f, 1.0f))));
    else
      std::snprintf(pct, sizeof pct, " (?%%)");
    const std::string title = fit_text(item.predicted, text_room - Canvas::text_width(pct, kScale), kScale) + pct;
    cv.text_centered(cx, cell_y + 20, title, c, kScale);

    // The image, letterboxed into the tile, with a frame in the verdict's colour.
    const int tile_x = cell_x + (kGridCellWidth - kGridTile) / 2, tile_y = cell_y + 38;
    const double fit = std::min(static_cast<double>(kGridTile) / src.width, static_cast<double>(kGridTile) / src.height);
    const int w = std::clamp(static_cast<int>(std::lround(src.width * fit)), 1, kGridTile);
    const int h = std::clamp(static_cast<int>(std::lround(src.height * fit)), 1, kGridTile);
    cv.fill_rect(tile_x - 3, tile_y - 3, tile_x + kGridTile + 3, tile_y + kGridTile + 3, c);
    cv.fill_rect(tile_x, tile_y, tile_x + kGridTile, tile_y + kGridTile, Color{235, 235, 235});
    const io::Image scaled = (w == src.width && h == src.height) ? src : io::resize_bilinear(src, h, w);
    const int ox = tile_x + (kGridTile - w) / 2, oy = tile_y + (kGridTile - h) / 2;
    for (int y = 0; y < h; ++y) std::memcpy(cv.image().at(oy + y, ox), scaled.row(y), static_cast<size_t>(w) * 3);

    cv.text_centered(cx, tile_y + kGridTile + 22, fit_text("true: " + item.truth, text_room, kScale), c, kScale);
    if (!item.note.empty()) cv.text_centered(cx, tile_y + kGridTile + 46, fit_text(item.note, text_room, kScale), c, kScale);
  }
  return std::move(cv.image());
}

void write_prediction_grid_png(const std::string& path, const std::vector<GridItem>& items, int columns) {
  write_png_atomic(path, render_prediction_grid(items, columns));
}

// ---------------------------------------------------------------------------------------------------------------
// Progress

namespace {
double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}
std::string format_fixed(double v, int decimals, const char* suffix = "") {
  if (!std::isfinite(v)) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f%s", decimals, v, suffix);
  return buf;
}
}  // namespace

Progress::Progress(std::string phase, int epoch, int num_epochs, int64_t total_batches, std::ostream& out,
                   ProgressStyle style, std::function<double()> clock)
    : phase_(std::move(phase)),
      epoch_(epoch),
      num_epochs_(num_epochs),
      total_batches_(std::max<int64_t>(0, total_batches)),
      out_(out),
      style_(style),
      clock_(clock ? std::move(clock) : std::function<double()>(steady_seconds)),
      loss_(std::numeric_limits<double>::quiet_NaN()),
      accuracy_(std::numeric_limits<double>::quiet_NaN()) {
  if (style_ == ProgressStyle::Auto)
    style_ = (&out_ == &std::cerr && ::isatty(fileno(stderr))) ? ProgressStyle::Bar : ProgressStyle::Lines;
  start_ = clock_();
}

Progress::Progress(std::string phase, int epoch, int num_epochs, int64_t total_batches)
    : Progress(std::move(phase), epoch, num_epochs, total_batches, std::cerr) {}

double Progress::elapsed_seconds() const { return clock_() - start_; }

std::string Progress::prefix() const {
  std::ostringstream os;
  os << phase_ << " epoch " << epoch_ << "/" << num_epochs_;
  return os.str();
}

std::string Progress::status_line(bool final_line) const {
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? images_ / elapsed : std::numeric_limits<double>::quiet_NaN();
  std::ostringstream os;
  os << prefix() << "  ";
  if (final_line) {
    os << "done: " << images_ << " images in " << format_fixed(elapsed, 1, " s") << " ("
       << format_fixed(rate, 1, " img/s") << ")";
  } else {
    if (style_ == ProgressStyle::Bar && total_batches_ > 0) {
      constexpr int kBarWidth = 20;
      const int filled = static_cast<int>(std::min<int64_t>(kBarWidth, batches_ * kBarWidth / total_batches_));
      os << "[" << std::string(filled, '#') << std::string(kBarWidth - filled, '.') << "]  ";
    }
    os << "batch " << batches_ << "/" << total_batches_ << "  " << format_fixed(rate, 1, " img/s");
  }
  os << "  loss " << format_fixed(loss_, 4) << "  acc " << format_fixed(100 * accuracy_, 2, "%");
  if (!final_line && batches_ > 0 && total_batches_ >= batches_)
    os << "  ETA " << format_duration(elapsed / batches_ * (total_batches_ - batches_));
  return os.str();
}

void Progress::update(int64_t batches_done, int64_t batch_images, double running_loss, double running_accuracy) {
  batches_ = batches_done;
  images_ += batch_images;
  loss_ = running_loss;
  accuracy_ = running_accuracy;
  if (style_ == ProgressStyle::Bar) {
    const double now = clock_();
    if (last_draw_ >= 0 && now - last_draw_ < 0.1 && batches_done < total_batches_) return;
    last_draw_ = now;
    std::string line = status_line(false);
    const size_t width = line.size();
    if (line.size() < last_bar_width_) line += std::string(last_bar_width_ - line.size(), ' ');
    last_bar_width_ = width;
    out_ << "\r" << line << std::flush;
    return;
  }
  if (total_batches_ <= 0 || batches_done >= total_batches_) return;  // finish() reports the end
  const int decile = static_cast<int>(batches_done * 10 / total_batches_);
  if (decile > last_decile_) {
    last_decile_ = decile;
    out_ << status_line(false) << "\n" << std::flush;
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  std::string line = status_line(true);
  if (style_ == ProgressStyle::Bar) {
    if (line.size() < last_bar_width_) line += std::string(last_bar_width_ - line.size(), ' ');
    out_ << "\r";
  }
  out_ << line << "\n" << std::flush;
}

// ---------------------------------------------------------------------------------------------------------------
// JSON lines

JsonLinesWriter::JsonLinesWriter(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "ab");
  TL_CHECK(file_, IOError, "cannot open metrics log '", path, "' for appending: ", std::strerror(errno),
           " (does the folder exist and is it writable?)");
  std::setvbuf(file_, nullptr, _IONBF, 0);  // each line goes out whole or is cut off again (write())
}

JsonLinesWriter::~JsonLinesWriter() {
  if (file_) std::fclose(file_);
}

void JsonLinesWriter::write(const nlohmann::json& object) {
  // Invalid UTF-8 (e.g. in a class folder name) is replaced rather than thrown on.
  const std::string line = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const long before = std::ftell(file_);
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  if (ok) return;
  const int e = errno;
  // Cut a partly written line off again, so that the log stays one JSON object per line.
  std::clearerr(file_);
  if (before >= 0 && ::ftruncate(fileno(file_), before) == 0) std::fseek(file_, before, SEEK_SET);
  throw IOError(detail::concat("cannot write to metrics log '", path_, "': ", std::strerror(e), " (",
                               io::human_bytes(io::free_bytes(path_)), " free on its filesystem)"));
}

}  // namespace tl::train
