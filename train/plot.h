// The drawing kit behind every PNG tlengine writes (curves, prediction grid, error analysis, lr-find, freeze
// costs): an anti-aliased RGB canvas (coverage-filled rectangles, distance-field thick lines and discs,
// stb_easy_font text), "nice" axes, and a framed line-chart panel. Pixel units; y grows downwards.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/image.h"

namespace tl::train {

struct Color {
  uint8_t r, g, b;
};
inline const Color kWhite{255, 255, 255};
inline const Color kText{40, 40, 40};
inline const Color kAxis{90, 90, 90};
inline const Color kGrid{228, 228, 228};
inline const Color kRight{0, 140, 0};
inline const Color kWrong{210, 20, 20};
// matplotlib's tab10 cycle, for series and bars.
inline const Color kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189},
                                 {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

// stb_easy_font glyphs: capitals span y 0..7 and descenders reach 9, in font units.
constexpr float kCapHeight = 7.0f;

class Canvas {
 public:
  Canvas(int width, int height, Color background);
  io::Image& image() { return image_; }
  int width() const { return image_.width; }
  int height() const { return image_.height; }

  void blend(int x, int y, Color c, float alpha);
  // Axis-aligned rectangle [x0, x1) x [y0, y1); partly covered edge pixels are blended.
  void fill_rect(float x0, float y0, float x1, float y1, Color c);
  // Thick anti-aliased segment with round caps.
  void line(float x0, float y0, float x1, float y1, float thickness, Color c);
  void dashed_vertical(float x, float y0, float y1, float thickness, Color c, float dash = 6, float gap = 5);
  void disc(float cx, float cy, float radius, Color c) { line(cx, cy, cx, cy, 2 * radius, c); }
  // Text with its top-left corner at (x, y); `scale` font units per pixel. Bytes outside ASCII 32..126 show as '?'.
  void text(float x, float y, const std::string& s, Color c, float scale);
  static float text_width(const std::string& s, float scale);
  // Text centred horizontally on cx, vertically on cy (capital letters); right-aligned at `right`.
  void text_centered(float cx, float cy, const std::string& s, Color c, float scale);
  void text_right(float right, float cy, const std::string& s, Color c, float scale);
  // Text turned 90 degrees counter-clockwise (read bottom to top), starting at y and going up to
  // y - text_width(s, scale); the tops of the capitals are at x, the glyphs reach right to x + 9 * scale.
  void text_up(float x, float y, const std::string& s, Color c, float scale);

 private:
  io::Image image_;
};

// Shortens `s` with a trailing "~" until it fits `max_width` pixels at `scale`.
std::string fit_text(const std::string& s, float max_width, float scale);

// 1, 2 or 5 times a power of ten, near span / target_ticks.
double nice_step(double span, int target_ticks);

struct Axis {
  double lo = 0, hi = 1, step = 0.2;
  int decimals = 1;
  std::string title;                          // drawn under (x) or beside (y) the axis; may be empty
  std::function<std::string(double)> format;  // tick label; default: fixed with `decimals`
  std::vector<double> ticks() const;
  std::string label(double v) const;
};
int decimals_for(double step);
// A value axis over the finite values, padded, snapped to tick multiples, kept inside [floor, ceiling] when the
// data is. Flat data gets a range around the value; no data gets [floor, empty_top].
Axis value_axis(const std::vector<double>& values, double floor, double ceiling, double empty_top);
// An integer axis (epochs, steps): half a step of room at both ends so markers are not cut.
Axis epoch_axis(int first, int last);
// A log10 axis over positive values: the caller plots log10(x); ticks at powers of ten labelled "1e-3".
Axis log10_axis(const std::vector<double>& positive_values);

struct Series {
  std::string name;
  Color color;
  std::vector<double> y;  // NaN / Inf: a gap
  bool markers = true;    // discs at the points (when there are at most 60)
};

struct PanelBox {
  float x, y, w, h;
};

// Vertical dashed lines at x positions, with one legend entry.
struct VerticalLines {
  std::string name;
  Color color{150, 150, 150};
  std::vector<double> xs;
};

// One chart: title and legend on top, framed plot area with grid lines, tick labels, the x axis title
// (xa.title) under it, curves with markers, and optional dashed vertical lines (one legend entry per set).
void draw_panel(Canvas& cv, const PanelBox& box, const std::string& title, const std::vector<double>& xs,
                const std::vector<Series>& series, const Axis& xa, const Axis& ya,
                const std::vector<VerticalLines>& vlines = {});

}  // namespace tl::train
