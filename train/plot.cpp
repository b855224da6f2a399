// The drawing kit (see plot.h).
#include "train/plot.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"  // stb_easy_font_spacing is static and unused
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop

namespace tl::train {

// ---------------------------------------------------------------------------------------------------------------
// Canvas

Canvas::Canvas(int width, int height, Color background) : image_(width, height) {
  for (size_t i = 0; i < image_.pixels.size(); i += 3) {
    image_.pixels[i] = background.r;
    image_.pixels[i + 1] = background.g;
    image_.pixels[i + 2] = background.b;
  }
}

void Canvas::blend(int x, int y, Color c, float alpha) {
  if (x < 0 || y < 0 || x >= image_.width || y >= image_.height || alpha <= 0) return;
  alpha = std::min(alpha, 1.0f);
  uint8_t* p = image_.at(y, x);
  const uint8_t src[3] = {c.r, c.g, c.b};
  for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + (src[k] - p[k]) * alpha));
}

void Canvas::fill_rect(float x0, float y0, float x1, float y1, Color c) {
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

// Coverage from each pixel centre's distance to the segment.
void Canvas::line(float x0, float y0, float x1, float y1, float thickness, Color c) {
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

void Canvas::dashed_vertical(float x, float y0, float y1, float thickness, Color c, float dash, float gap) {
  for (float y = y0; y < y1; y += dash + gap) fill_rect(x - thickness / 2, y, x + thickness / 2, std::min(y + dash, y1), c);
}

namespace {
// The bytes stb_easy_font can draw: it has glyphs for ASCII 32..126 only and indexes its table with (c - 32), so
// any other byte (a non-ASCII or non-UTF-8 class name) would read outside it (found by UBSan): shown as '?'.
std::vector<char> drawable(const std::string& s) {
  std::vector<char> str;
  for (unsigned char ch : s) str.push_back(ch >= 32 && ch <= 126 ? static_cast<char>(ch) : '?');
  str.push_back('\0');
  return str;
}
}  // namespace

namespace {
// The glyph rectangles of `s` in font units: {x0, y0, x1, y1} with the text's top-left corner at (0, 0).
std::vector<std::array<float, 4>> glyph_rects(const std::string& s) {
  std::vector<char> str = drawable(s);
  std::vector<char> quads(s.size() * 64 * 24 + 64);  // 64 bytes a quad; glyphs have at most ~15 quads
  const int n = stb_easy_font_print(0, 0, str.data(), nullptr, quads.data(), static_cast<int>(quads.size()));
  std::vector<std::array<float, 4>> rects;
  for (int q = 0; q < n; ++q) {
    const float* v0 = reinterpret_cast<const float*>(quads.data() + q * 64);       // top-left vertex
    const float* v2 = reinterpret_cast<const float*>(quads.data() + q * 64 + 32);  // bottom-right vertex
    rects.push_back({v0[0], v0[1], v2[0], v2[1]});
  }
  return rects;
}
}  // namespace

void Canvas::text(float x, float y, const std::string& s, Color c, float scale) {
  for (const auto& r : glyph_rects(s)) fill_rect(x + r[0] * scale, y + r[1] * scale, x + r[2] * scale, y + r[3] * scale, c);
}

// Rotated counter-clockwise: the text's x runs up (-y), its y runs right (+x).
void Canvas::text_up(float x, float y, const std::string& s, Color c, float scale) {
  for (const auto& r : glyph_rects(s)) fill_rect(x + r[1] * scale, y - r[2] * scale, x + r[3] * scale, y - r[0] * scale, c);
}

float Canvas::text_width(const std::string& s, float scale) {
  if (s.empty()) return 0;
  std::vector<char> str = drawable(s);
  // stb_easy_font_width counts the one-unit gap after the last glyph.
  return (static_cast<float>(stb_easy_font_width(str.data())) - 1) * scale;
}

void Canvas::text_centered(float cx, float cy, const std::string& s, Color c, float scale) {
  text(std::round(cx - text_width(s, scale) / 2), std::round(cy - kCapHeight * scale / 2), s, c, scale);
}

void Canvas::text_right(float right, float cy, const std::string& s, Color c, float scale) {
  text(std::round(right - text_width(s, scale)), std::round(cy - kCapHeight * scale / 2), s, c, scale);
}

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

std::vector<double> Axis::ticks() const {
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) t.push_back(v);
  return t;
}

std::string Axis::label(double v) const {
  if (format) return format(v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, std::abs(v) < step * 1e-9 ? 0.0 : v);
  return buf;
}

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

Axis log10_axis(const std::vector<double>& positive_values) {
  std::vector<double> logs;
  for (double v : positive_values)
    if (std::isfinite(v) && v > 0) logs.push_back(std::log10(v));
  Axis a;
  if (logs.empty()) {
    a.lo = -4, a.hi = 0;
  } else {
    const auto [mn, mx] = std::minmax_element(logs.begin(), logs.end());
    a.lo = std::floor(*mn + 1e-9);  // a value on a power of ten starts the axis there
    a.hi = std::ceil(*mx - 1e-9);
    if (a.hi <= a.lo) a.hi = a.lo + 1;
  }
  a.step = std::max(1.0, std::ceil((a.hi - a.lo) / 8));
  a.decimals = 0;
  a.format = [](double e) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "1e%d", static_cast<int>(std::lround(e)));
    return std::string(buf);
  };
  return a;
}

// One chart: title and legend on top, framed plot area with grid lines, tick labels, curves with markers.
void draw_panel(Canvas& cv, const PanelBox& box, const std::string& title, const std::vector<double>& xs,
                const std::vector<Series>& series, const Axis& xa, const Axis& ya, const std::vector<VerticalLines>& vlines) {
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
  for (auto it = vlines.rbegin(); it != vlines.rend(); ++it)
    if (!it->xs.empty()) legend_entry(it->name, it->color, true);
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
  if (!xa.title.empty()) cv.text_centered((left + right) / 2, bottom + 48, xa.title, kText, kScale);
  for (const VerticalLines& v : vlines)
    for (double e : v.xs) cv.dashed_vertical(px(e), top, bottom, 2, v.color);
  // Frame.
  cv.fill_rect(left, top, right, top + 1, kAxis);
  cv.fill_rect(left, bottom, right + 1, bottom + 1, kAxis);
  cv.fill_rect(left, top, left + 1, bottom, kAxis);
  cv.fill_rect(right, top, right + 1, bottom, kAxis);

  bool any_value = false;
  for (const Series& s : series)
    for (double v : s.y) any_value = any_value || std::isfinite(v);
  if (!any_value) cv.text_centered((left + right) / 2, (top + bottom) / 2, "no data yet", kAxis, kScale);

  const bool markers = xs.size() <= 60;  // per series too: Series::markers
  for (const Series& s : series) {
    for (size_t i = 0; i + 1 < xs.size(); ++i)
      if (std::isfinite(s.y[i]) && std::isfinite(s.y[i + 1]))
        cv.line(px(xs[i]), py(s.y[i]), px(xs[i + 1]), py(s.y[i + 1]), 2.5f, s.color);
    for (size_t i = 0; i < xs.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      const bool isolated = (i == 0 || !std::isfinite(s.y[i - 1])) && (i + 1 == xs.size() || !std::isfinite(s.y[i + 1]));
      if ((markers && s.markers) || isolated) cv.disc(px(xs[i]), py(s.y[i]), 3.5f, s.color);
    }
  }
}

}  // namespace tl::train
