// Error-analysis pictures (see error_analysis.h).
#include "train/error_analysis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "train/report.h"

namespace tl::train {

// ---------------------------------------------------------------------------------------------------------------
// Per-image losses and the top losses

namespace {
// First index of the largest value; NaN ranks above every number (as torch.argmax and ClassificationMetrics).
size_t argmax_nan_first(const double* row, size_t n) {
  size_t best = 0;
  for (size_t c = 0; c < n; ++c) {
    if (std::isnan(row[c])) return c;
    if (row[c] > row[best]) best = c;
  }
  return best;
}
}  // namespace

std::vector<ImageLoss> image_losses(const std::vector<double>& logits, const int32_t* labels, const int64_t* samples,
                                    int64_t n, int64_t num_classes) {
  TL_CHECK(num_classes >= 1 && n >= 0 && logits.size() == static_cast<size_t>(n * num_classes), ValueError,
           "image_losses: ", logits.size(), " logits for ", n, " images of ", num_classes, " classes");
  const size_t C = static_cast<size_t>(num_classes);
  std::vector<ImageLoss> out;
  for (int64_t i = 0; i < n; ++i) {
    TL_CHECK(labels[i] >= 0 && labels[i] < num_classes, ValueError, "image_losses: label ", labels[i],
             " of image ", samples[i], " is outside [0, ", num_classes, ")");
    const double* row = logits.data() + static_cast<size_t>(i) * C;
    const size_t pred = argmax_nan_first(row, C);
    double sum = 0;
    for (size_t c = 0; c < C; ++c) sum += std::exp(row[c] - row[pred]);
    const double lse = row[pred] + std::log(sum);  // log-sum-exp, shifted by the largest logit
    out.push_back({samples[i], labels[i], static_cast<int>(pred), lse - row[static_cast<size_t>(labels[i])],
                   std::exp(row[pred] - lse)});
  }
  return out;
}

std::vector<ImageLoss> top_losses(std::vector<ImageLoss> losses, size_t k) {
  auto key = [](const ImageLoss& a) { return std::isnan(a.loss) ? std::numeric_limits<double>::infinity() : a.loss; };
  auto higher = [&](const ImageLoss& a, const ImageLoss& b) {
    if (key(a) != key(b)) return key(a) > key(b);
    if (std::isnan(a.loss) != std::isnan(b.loss)) return std::isnan(a.loss);  // NaN above +inf
    return a.sample < b.sample;
  };
  k = std::min(k, losses.size());
  std::partial_sort(losses.begin(), losses.begin() + static_cast<std::ptrdiff_t>(k), losses.end(), higher);
  losses.resize(k);
  return losses;
}

bool write_top_losses_png(const std::string& path, const std::vector<ImageLoss>& top,
                          const std::vector<io::Sample>& samples, const std::vector<std::string>& classes,
                          const io::Compose& transform) {
  std::vector<GridItem> items;
  for (const ImageLoss& l : top) {
    TL_CHECK(l.sample >= 0 && static_cast<size_t>(l.sample) < samples.size() && l.truth >= 0 &&
                 static_cast<size_t>(l.truth) < classes.size() && l.predicted >= 0 &&
                 static_cast<size_t>(l.predicted) < classes.size(),
             ValueError, "top losses: image ", l.sample, " or its classes are outside the ", samples.size(),
             " samples and ", classes.size(), " classes");
    io::Image img;
    try {
      io::Rng rng(0);  // the val transforms draw nothing
      img = transform.apply_image(io::decode_image(samples[static_cast<size_t>(l.sample)].path), rng);
    } catch (const IOError&) {
      continue;  // a bad image (skipped by --on-bad-image skip) has no loss anyway
    }
    char note[48];
    std::snprintf(note, sizeof note, "loss %.2f", l.loss);
    items.push_back({std::move(img), classes[static_cast<size_t>(l.predicted)], classes[static_cast<size_t>(l.truth)],
                     static_cast<float>(l.probability), note});
  }
  if (items.empty()) return false;
  write_prediction_grid_png(path, items, 4);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Confusion matrix picture

Color blues(double t) {
  static const Color stops[] = {{247, 251, 255}, {198, 219, 239}, {107, 174, 214}, {33, 113, 181}, {8, 48, 107}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  auto mix = [&](uint8_t a, uint8_t b) { return static_cast<uint8_t>(std::lround(a + (b - a) * f)); };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

namespace {
constexpr float kScale = 2;          // titles, axis titles, colour-bar labels
constexpr int kMaxNumberedClasses = 30;
const Color kEmptyRow{225, 225, 225};

// Where things go in one panel (x relative to the panel's left edge).
struct MatrixLayout {
  int classes = 0;
  float cell = 0, label_scale = 1, label_w = 0;
  std::vector<std::string> labels;  // shortened class names
  float mx = 0, my = 56, size = 0;  // the matrix's top-left corner and side
  float width = 0, height = 0;      // the panel
};

// Shortens `s` in the middle ("class_wi~name_17") until it fits `max_width` pixels: class names often share a
// prefix and differ at the end.
std::string fit_middle(const std::string& s, float max_width, float scale) {
  if (Canvas::text_width(s, scale) <= max_width) return s;
  std::string head = s.substr(0, (s.size() + 1) / 2), tail = s.substr((s.size() + 1) / 2);
  while (!head.empty() && Canvas::text_width(head + "~" + tail, scale) > max_width) {
    if (head.size() > tail.size() || tail.empty()) head.pop_back();
    else tail.erase(0, 1);
  }
  return head + "~" + tail;
}

MatrixLayout layout_for(const std::vector<std::string>& classes) {
  MatrixLayout L;
  L.classes = static_cast<int>(classes.size());
  L.cell = std::clamp(std::round(560.0f / L.classes), 10.0f, 80.0f);
  L.cell = std::max(L.cell, std::ceil(140.0f / L.classes));  // room for the rotated "true class"
  L.label_scale = L.cell >= 18 ? 2 : 1;
  const float max_label = L.label_scale == 2 ? 160 : 110;
  for (const std::string& c : classes) {
    L.labels.push_back(fit_middle(c, max_label, L.label_scale));
    L.label_w = std::max(L.label_w, Canvas::text_width(L.labels.back(), L.label_scale));
  }
  L.size = L.cell * L.classes;
  L.mx = 40 + L.label_w + 10;  // room for the rotated "true class" and the names
  const float bar_room = 20 + 16 + 8 + Canvas::text_width("100000", kScale) + 16;
  L.width = std::max(L.mx + L.size + bar_room, 56 + Canvas::text_width("Recall per true class (%)", kScale));
  L.height = L.my + L.size + 8 + L.label_w + 56;
  return L;
}

std::string cell_number_fit(const std::string& s, float cell, float& scale) {
  scale = cell >= 28 && Canvas::text_width(s, 2) <= cell - 8 ? 2 : 1;
  return Canvas::text_width(s, scale) <= cell - 3 ? s : "";
}

// One panel: title, the C x C cells coloured by t (NaN: an empty row), optional numbers, names, axis titles and
// a colour bar from 0 to `bar_max`.
void draw_matrix(Canvas& cv, float ox, const MatrixLayout& L, const std::string& title, const std::vector<double>& t,
                 const std::vector<std::string>& numbers, const std::string& bar_max) {
  const int C = L.classes;
  const float mx = ox + L.mx, my = L.my;
  cv.text(ox + 16, 18, title, kText, kScale);
  for (int r = 0; r < C; ++r)
    for (int c = 0; c < C; ++c) {
      const double v = t[static_cast<size_t>(r * C + c)];
      const float x = mx + c * L.cell, y = my + r * L.cell;
      cv.fill_rect(x, y, x + L.cell, y + L.cell, std::isnan(v) ? kEmptyRow : blues(v));
      float scale = 1;
      const size_t i = static_cast<size_t>(r * C + c);
      const std::string s = numbers.empty() ? "" : cell_number_fit(numbers[i], L.cell, scale);
      if (!s.empty()) cv.text_centered(x + L.cell / 2, y + L.cell / 2, s, v > 0.5 ? kWhite : kText, scale);
    }
  if (L.cell >= 16)  // white gaps between cells
    for (int i = 1; i < C; ++i) {
      cv.fill_rect(mx + i * L.cell - 0.5f, my, mx + i * L.cell + 0.5f, my + L.size, kWhite);
      cv.fill_rect(mx, my + i * L.cell - 0.5f, mx + L.size, my + i * L.cell + 0.5f, kWhite);
    }
  // Frame, class names (true down the left, predicted rotated along the bottom) and axis titles.
  cv.fill_rect(mx - 1, my - 1, mx + L.size + 1, my, kAxis);
  cv.fill_rect(mx - 1, my + L.size, mx + L.size + 1, my + L.size + 1, kAxis);
  cv.fill_rect(mx - 1, my, mx, my + L.size, kAxis);
  cv.fill_rect(mx + L.size, my, mx + L.size + 1, my + L.size, kAxis);
  for (int i = 0; i < C; ++i) {
    const std::string& name = L.labels[static_cast<size_t>(i)];
    const float centre = (i + 0.5f) * L.cell;
    cv.text_right(mx - 6, my + centre, name, kText, L.label_scale);
    cv.text_up(std::round(mx + centre - kCapHeight * L.label_scale / 2),
               std::round(my + L.size + 6 + Canvas::text_width(name, L.label_scale)), name, kText, L.label_scale);
  }
  cv.text_centered(mx + L.size / 2, my + L.size + 8 + L.label_w + 24, "predicted class", kText, kScale);
  cv.text_up(ox + 12, std::round(my + L.size / 2 + Canvas::text_width("true class", kScale) / 2), "true class", kText,
             kScale);
  // Colour bar.
  const float bx = mx + L.size + 20, bw = 16;
  for (int y = 0; y < static_cast<int>(L.size); ++y)
    cv.fill_rect(bx, my + y, bx + bw, my + y + 1, blues(1.0 - (y + 0.5) / L.size));
  cv.fill_rect(bx - 1, my - 1, bx + bw + 1, my, kAxis);
  cv.fill_rect(bx - 1, my + L.size, bx + bw + 1, my + L.size + 1, kAxis);
  cv.fill_rect(bx - 1, my, bx, my + L.size, kAxis);
  cv.fill_rect(bx + bw, my, bx + bw + 1, my + L.size, kAxis);
  cv.text(bx + bw + 8, my, bar_max, kText, kScale);
  cv.text(bx + bw + 8, my + L.size - kCapHeight * kScale, "0", kText, kScale);
}
}  // namespace

io::Image render_confusion(const std::vector<int64_t>& confusion, const std::vector<std::string>& classes) {
  const size_t C = classes.size();
  TL_CHECK(C >= 1, ValueError, "confusion picture: no class names");
  TL_CHECK(confusion.size() == C * C, ValueError, "confusion picture: ", confusion.size(), " counts for ", C,
           " classes (expected ", C * C, ")");
  const MatrixLayout L = layout_for(classes);
  Canvas cv(static_cast<int>(std::ceil(2 * L.width)), static_cast<int>(std::ceil(L.height)), kWhite);
  const bool numbered = C <= kMaxNumberedClasses;

  const int64_t max_count = std::max<int64_t>(1, *std::max_element(confusion.begin(), confusion.end()));
  std::vector<double> counts_t, recall_t;
  std::vector<std::string> counts_s, recall_s;
  for (size_t r = 0; r < C; ++r) {
    int64_t row = 0;
    for (size_t c = 0; c < C; ++c) row += confusion[r * C + c];
    for (size_t c = 0; c < C; ++c) {
      const int64_t n = confusion[r * C + c];
      const double recall = row > 0 ? static_cast<double>(n) / static_cast<double>(row) : std::nan("");
      counts_t.push_back(static_cast<double>(n) / static_cast<double>(max_count));
      recall_t.push_back(recall);
      if (!numbered) continue;
      counts_s.push_back(std::to_string(n));
      recall_s.push_back(row > 0 ? std::to_string(std::lround(100 * recall)) : "");
    }
  }
  draw_matrix(cv, 0, L, "Confusion matrix (counts)", counts_t, counts_s, std::to_string(max_count));
  draw_matrix(cv, L.width, L, "Recall per true class (%)", recall_t, recall_s, "100");
  return std::move(cv.image());
}

void write_confusion_png(const std::string& path, const std::vector<int64_t>& confusion,
                         const std::vector<std::string>& classes) {
  write_png_atomic(path, render_confusion(confusion, classes));
}

std::vector<std::string> write_error_analysis(const std::string& dir, const std::vector<ImageLoss>& losses,
                                              const std::vector<int64_t>& confusion,
                                              const std::vector<io::Sample>& samples,
                                              const std::vector<std::string>& classes, const io::Compose& transform) {
  std::vector<std::string> written;
  const std::filesystem::path d(dir);
  const std::vector<ImageLoss> top = top_losses(losses, kTopLosses);
  if (write_top_losses_png((d / "top_losses.png").string(), top, samples, classes, transform))
    written.push_back("top_losses.png");
  write_confusion_png((d / "confusion.png").string(), confusion, classes);
  written.push_back("confusion.png");
  return written;
}

}  // namespace tl::train
