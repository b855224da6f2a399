// Reports of `tlengine train` (see report.h): a tiny anti-aliased rasteriser (coverage-filled rectangles,
// distance-field thick lines and discs, stb_easy_font text), the curve and prediction-grid renderers, atomic PNG
// writing, the progress display and the JSON-lines log.
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

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"  // stb_easy_font_spacing is static and unused
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop
#include <stb/stb_image_write.h>  // the implementation is compiled in io/image.cpp

#include "core/error.h"
#include "io/transforms.h"

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

// ---------------------------------------------------------------------------------------------------------------
// Rasteriser

namespace {

struct Color {
  uint8_t r, g, b;
};
const Color kWhite{255, 255, 255};
const Color kText{40, 40, 40};
const Color kAxis{90, 90, 90};
const Color kGrid{228, 228, 228};
const Color kTrain{31, 119, 180};   // matplotlib blue
const Color kVal{255, 127, 14};     // matplotlib orange
const Color kLrChange{150, 150, 150};
const Color kRight{0, 140, 0};
const Color kWrong{210, 20, 20};

// stb_easy_font glyphs: capitals span y 0..7 and descenders reach 9, in font units.
constexpr float kCapHeight = 7.0f;

class Canvas {
 public:
  Canvas(int width, int height, Color background) : image_(width, height) {
    for (size_t i = 0; i < image_.pixels.size(); i += 3) {
      image_.pixels[i] = background.r;
      image_.pixels[i + 1] = background.g;
      image_.pixels[i + 2] = background.b;
    }
  }
  io::Image& image() { return image_; }
  int width() const { return image_.width; }
  int height() const { return image_.height; }

  void blend(int x, int y, Color c, float alpha) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height || alpha <= 0) return;
    alpha = std::min(alpha, 1.0f);
    uint8_t* p = image_.at(y, x);
    const uint8_t src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + (src[k] - p[k]) * alpha));
  }

  // Axis-aligned rectangle [x0, x1) x [y0, y1) in pixel units; partly covered edge pixels are blended.
  void fill_rect(float x0, float y0, float x1, float y1, Color c) {
    if (x1 <= x0 || y1 <= y0) return;
    const int ix0 = std::max(0, static_cast<int>(std::floor(x0))), ix1 = std::min(width(), static_cast<int>(std::ceil(x1)));
    const int iy0 = std::max(0, static_cast<int>(std::floor(y0))), iy1 = std::min(height(), static_cast<int>(std::ceil(y1)));
    for (int y = iy0; y < iy1; ++y) {
      const float cover_y = std::min(y1, y + 1.0f) - std::max(y0, static_cast<float>(y));
      for (int x = ix0; x < ix1; ++x) {
        const float cover_x = std::min(x1, x + 1.0f) - std::max(x0, static_cast<float>(x));
        blend(x, y, c, cover_x * cover_y);
      }
    }
  }

  // Thick anti-aliased segment with round caps: coverage from each pixel centre's distance to the segment.
  void line(float x0, float y0, float x1, float y1, float thickness, Color c) {
    const float r = thickness / 2;
    const int bx0 = static_cast<int>(std::floor(std::min(x0, x1) - r - 1)), bx1 = static_cast<int>(std::ceil(std::max(x0, x1) + r + 1));
    const int by0 = static_cast<int>(std::floor(std::min(y0, y1) - r - 1)), by1 = static_cast<int>(std::ceil(std::max(y0, y1) + r + 1));
    const float dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for (int y = std::max(0, by0); y <= std::min(height() - 1, by1); ++y)
      for (int x = std::max(0, bx0); x <= std::min(width() - 1, bx1); ++x) {
        const float px = x + 0.5f - x0, py = y + 0.5f - y0;
        const float t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0f, 1.0f) : 0.0f;
        const float ex = px - t * dx, ey = py - t * dy;
        blend(x, y, c, std::clamp(r + 0.5f - std::sqrt(ex * ex + ey * ey), 0.0f, 1.0f));
      }
  }

  void dashed_vertical(float x, float y0, float y1, float thickness, Color c, float dash = 6, float gap = 5) {
    for (float y = y0; y < y1; y += dash + gap) fill_rect(x - thickness / 2, y, x + thickness / 2, std::min(y + dash, y1), c);
  }

  void disc(float cx, float cy, float radius, Color c) { line(cx, cy, cx, cy, 2 * radius, c); }

  // The bytes stb_easy_font can draw: it has glyphs for ASCII 32..126 only and indexes its table with (c - 32), so
  // any other byte (a non-ASCII or non-UTF-8 class name) would read outside it (found by UBSan): shown as '?'.
  static std::vector<char> drawable(const std::string& s) {
    std::vector<char> str;
    for (unsigned char ch : s) str.push_back(ch >= 32 && ch <= 126 ? static_cast<char>(ch) : '?');
    str.push_back('\0');
    return str;
  }

  // Text with its top-left corner at (x, y); `scale` font units per pixel.
  void text(float x, float y, const std::string& s, Color c, float scale) {
    std::vector<char> str = drawable(s);
    std::vector<char> quads(s.size() * 64 * 24 + 64);  // 64 bytes a quad; glyphs have at most ~15 quads
    const int n = stb_easy_font_print(0, 0, str.data(), nullptr, quads.data(), static_cast<int>(quads.size()));
    for (int q = 0; q < n; ++q) {
      const float* v0 = reinterpret_cast<const float*>(quads.data() + q * 64);        // top-left vertex
      const float* v2 = reinterpret_cast<const float*>(quads.data() + q * 64 + 32);   // bottom-right vertex
      fill_rect(x + v0[0] * scale, y + v0[1] * scale, x + v2[0] * scale, y + v2[1] * scale, c);
    }
  }
  static float text_width(const std::string& s, float scale) {
    if (s.empty()) return 0;
    std::vector<char> str = drawable(s);
    // stb_easy_font_width counts the one-unit gap after the last glyph.
    return (static_cast<float>(stb_easy_font_width(str.data())) - 1) * scale;
  }
  // Text centred horizontally on cx, vertically on cy (capital letters).
  void text_centered(float cx, float cy, const std::string& s, Color c, float scale) {
    text(std::round(cx - text_width(s, scale) / 2), std::round(cy - kCapHeight * scale / 2), s, c, scale);
  }
  void text_right(float right, float cy, const std::string& s, Color c, float scale) {
    text(std::round(right - text_width(s, scale)), std::round(cy - kCapHeight * scale / 2), s, c, scale);
  }

 private:
  io::Image image_;
};

// Shortens `s` with a trailing "~" until it fits `max_width` pixels at `scale`.
std::string fit_text(const std::string& s, float max_width, float scale) {
  if (Canvas::text_width(s, scale) <= max_width) return s;
  std::string t = s;
  while (!t.empty() && Canvas::text_width(t + "~", scale) > max_width) t.pop_back();
  return t + "~";
}

// ---------------------------------------------------------------------------------------------------------------
// Axes

// 1, 2 or 5 times a power of ten, near span / target_ticks.
double nice_step(double span, int target_ticks) {
  const double raw = span / target_ticks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / magnitude;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * magnitude;
}

struct Axis {
  double lo = 0, hi = 1, step = 0.2;
  int decimals = 1;
  std::vector<double> ticks() const {
    std::vector<double> t;
    for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) t.push_back(v);
    return t;
  }
  std::string label(double v) const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, std::abs(v) < step * 1e-9 ? 0.0 : v);
    return buf;
  }
};

int decimals_for(double step) { return std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9))); }

// A value axis over the finite values, padded, snapped to tick multiples, kept inside [floor, ceiling] when the
// data is. Flat data gets a range around the value; no data gets [floor, empty_top].
Axis value_axis(const std::vector<double>& values, double floor, double ceiling, double empty_top) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values)
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) {
    lo = floor, hi = empty_top;
  } else if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {
    const double pad = std::abs(lo) > 0 ? std::abs(lo) * 0.1 : 1.0;
    lo -= pad, hi += pad;
  } else {
    const double pad = (hi - lo) * 0.06;
    lo -= pad, hi += pad;
  }
  if (std::isfinite(floor) && lo < floor && hi > floor) lo = std::max(lo, floor);
  if (std::isfinite(ceiling) && hi > ceiling && lo < ceiling) hi = std::min(hi, ceiling);
  Axis a;
  a.step = nice_step(hi - lo, 5);
  a.lo = std::floor(lo / a.step + 1e-9) * a.step;
  a.hi = std::ceil(hi / a.step - 1e-9) * a.step;
  a.decimals = decimals_for(a.step);
  return a;
}

// An epoch axis: integer ticks, half a step of room at both ends so markers are not cut.
Axis epoch_axis(int first, int last) {
  Axis a;
  if (first > last) std::swap(first, last);
  const double span = std::max(1, last - first);
  a.step = std::max(1.0, nice_step(span, 8));
  a.lo = first - std::max(0.5, span * 0.03);
  a.hi = last + std::max(0.5, span * 0.03);
  if (first == last) a.lo = first - 1, a.hi = last + 1;
  a.decimals = 0;
  return a;
}

struct Series {
  std::string name;
  Color color;
  std::vector<double> y;
};

struct PanelBox {
  float x, y, w, h;
};

// One chart: title and legend on top, framed plot area with grid lines, tick labels, curves with markers.
void draw_panel(Canvas& cv, const PanelBox& box, const std::string& title, const std::vector<double>& xs,
                const std::vector<Series>& series, const Axis& xa, const Axis& ya, const std::vector<double>& lr_changes) {
  constexpr float kScale = 2;
  const float left = box.x + 88, right = box.x + box.w - 24, top = box.y + 56, bottom = box.y + box.h - 64;
  auto px = [&](double v) { return static_cast<float>(left + (v - xa.lo) / (xa.hi - xa.lo) * (right - left)); };
  auto py = [&](double v) { return static_cast<float>(bottom - (v - ya.lo) / (ya.hi - ya.lo) * (bottom - top)); };

  cv.text(left, box.y + 18, title, kText, kScale);
  // Legend, right-aligned on the title line: a line sample, a marker and the name per series.
  float lx = right;
  auto legend_entry = [&](const std::string& name, Color c, bool dashed) {
    lx -= Canvas::text_width(name, kScale);
    cv.text(lx, box.y + 18, name, kText, kScale);
    const float cy = box.y + 18 + kCapHeight;
    lx -= 34;
    if (dashed) {
      cv.fill_rect(lx, cy - 1, lx + 8, cy + 1, c);
      cv.fill_rect(lx + 14, cy - 1, lx + 22, cy + 1, c);
    } else {
      cv.line(lx, cy, lx + 24, cy, 3, c);
      cv.disc(lx + 12, cy, 4, c);
    }
    lx -= 26;
  };
  if (!lr_changes.empty()) legend_entry("lr change", kLrChange, true);
  for (auto it = series.rbegin(); it != series.rend(); ++it) legend_entry(it->name, it->color, false);

  for (double t : ya.ticks()) {
    const float y = std::round(py(t));
    cv.fill_rect(left, y, right, y + 1, kGrid);
    cv.fill_rect(left - 6, y, left, y + 1, kAxis);
    cv.text_right(left - 12, y, ya.label(t), kText, kScale);
  }
  for (double t : xa.ticks()) {
    const float x = std::round(px(t));
    cv.fill_rect(x, top, x + 1, bottom, kGrid);
    cv.fill_rect(x, bottom, x + 1, bottom + 6, kAxis);
    cv.text_centered(x, bottom + 20, xa.label(t), kText, kScale);
  }
  cv.text_centered((left + right) / 2, bottom + 48, "epoch", kText, kScale);
  for (double e : lr_changes) cv.dashed_vertical(px(e), top, bottom, 2, kLrChange);
  // Frame.
  cv.fill_rect(left, top, right, top + 1, kAxis);
  cv.fill_rect(left, bottom, right + 1, bottom + 1, kAxis);
  cv.fill_rect(left, top, left + 1, bottom, kAxis);
  cv.fill_rect(right, top, right + 1, bottom, kAxis);

  bool any_value = false;
  for (const Series& s : series)
    for (double v : s.y) any_value = any_value || std::isfinite(v);
  if (!any_value) cv.text_centered((left + right) / 2, (top + bottom) / 2, "no data yet", kAxis, kScale);

  const bool markers = xs.size() <= 60;
  for (const Series& s : series) {
    for (size_t i = 0; i + 1 < xs.size(); ++i)
      if (std::isfinite(s.y[i]) && std::isfinite(s.y[i + 1]))
        cv.line(px(xs[i]), py(s.y[i]), px(xs[i + 1]), py(s.y[i + 1]), 2.5f, s.color);
    for (size_t i = 0; i < xs.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      const bool isolated = (i == 0 || !std::isfinite(s.y[i - 1])) && (i + 1 == xs.size() || !std::isfinite(s.y[i + 1]));
      if (markers || isolated) cv.disc(px(xs[i]), py(s.y[i]), 3.5f, s.color);
    }
  }
}

}  // namespace

io::Image render_curves(const std::vector<EpochRecord>& history) {
  constexpr int kPanelWidth = 640, kPanelHeight = 480;
  Canvas cv(2 * kPanelWidth, kPanelHeight, kWhite);
  std::vector<double> xs;
  Series train_loss{"train", kTrain, {}}, val_loss{"val", kVal, {}}, train_acc{"train", kTrain, {}},
      val_acc{"val", kVal, {}};
  std::vector<double> lr_changes;
  int first = 1, last = 1;  // an empty history gets an axis around epoch 1
  for (size_t i = 0; i < history.size(); ++i) {
    const EpochRecord& r = history[i];
    xs.push_back(r.epoch);
    train_loss.y.push_back(r.train_loss);
    val_loss.y.push_back(r.val_loss);
    train_acc.y.push_back(100 * r.train_acc);
    val_acc.y.push_back(100 * r.val_acc);
    if (i > 0 && std::isfinite(r.lr) && std::isfinite(history[i - 1].lr) && r.lr != history[i - 1].lr)
      lr_changes.push_back(r.epoch);
    first = i == 0 ? r.epoch : std::min(first, r.epoch);
    last = i == 0 ? r.epoch : std::max(last, r.epoch);
  }
  const Axis xa = epoch_axis(first, last);
  std::vector<double> losses = train_loss.y, accs = train_acc.y;
  losses.insert(losses.end(), val_loss.y.begin(), val_loss.y.end());
  accs.insert(accs.end(), val_acc.y.begin(), val_acc.y.end());
  const double inf = std::numeric_limits<double>::infinity();
  draw_panel(cv, {0, 0, kPanelWidth, kPanelHeight}, "Loss", xs, {train_loss, val_loss}, xa, value_axis(losses, 0, inf, 1),
             lr_changes);
  draw_panel(cv, {kPanelWidth, 0, kPanelWidth, kPanelHeight}, "Accuracy (%)", xs, {train_acc, val_acc}, xa,
             value_axis(accs, 0, 100, 100), lr_changes);
  return std::move(cv.image());
}

void write_curves_png(const std::string& path, const std::vector<EpochRecord>& history) {
  write_png_atomic(path, render_curves(history));
}

// ---------------------------------------------------------------------------------------------------------------
// Prediction grid

io::Image render_prediction_grid(const std::vector<GridItem>& items, int columns) {
  TL_CHECK(!items.empty(), ValueError, "prediction grid: no images to draw");
  TL_CHECK(columns >= 1, ValueError, "prediction grid: columns must be at least 1, got ", columns);
  const int cols = std::min<int>(columns, static_cast<int>(items.size()));
  const int rows = static_cast<int>((items.size() + cols - 1) / cols);
  Canvas cv(cols * kGridCellWidth, rows * kGridCellHeight, kWhite);
  constexpr float kScale = 2;
  for (size_t i = 0; i < items.size(); ++i) {
    const GridItem& item = items[i];
    const io::Image& src = item.image;
    TL_CHECK(src.width > 0 && src.height > 0 && src.pixels.size() == static_cast<size_t>(src.width) * src.height * 3,
             ValueError, "prediction grid: image ", i, " (true class '", item.truth, "') has an invalid size ",
             src.width, "x", src.height, " with ", src.pixels.size(), " bytes");
    const int cell_x = static_cast<int>(i % cols) * kGridCellWidth, cell_y = static_cast<int>(i / cols) * kGridCellHeight;
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
