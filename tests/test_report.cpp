// Training reports: ClassificationMetrics against hand-computed values and PyTorch's argmax/topk, the text table and
// JSON; curve, prediction-grid and error-analysis PNGs (decoded back, sizes, colours where they must be), the epochs
// where curves draw "lr change" lines, per-image losses and the top-losses choice; progress output in both
// styles with a fake clock; the JSON-lines log and atomic file writing, including their errors.
// The PNGs are left in <build>/report_pngs for looking at.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "io/image.h"
#include "tl_testing.h"
#include "layers/loss.h"
#include "train/error_analysis.h"
#include "train/metrics.h"
#include "train/report.h"
#include "train/running_metrics.h"
#include "train/schedule.h"

using namespace tl;
using namespace tl::train;
using namespace tl::testing;

namespace {
const double kNaN = std::numeric_limits<double>::quiet_NaN();


Tensor labels(const std::vector<double>& v) { return Tensor::from_values(v, {static_cast<int64_t>(v.size())}, DType::I32); }

std::string output_dir() {
  const std::string dir = std::string(TL_FIXTURE_DIR) + "/../report_pngs";
  std::filesystem::create_directories(dir);
  return dir;
}

// Pixels within `tol` of colour (r, g, b) in the rectangle [x0, x1) x [y0, y1).
int count_color(const io::Image& img, int r, int g, int b, int x0, int y0, int x1, int y1, int tol = 40) {
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const uint8_t* p = img.at(y, x);
      if (std::abs(p[0] - r) <= tol && std::abs(p[1] - g) <= tol && std::abs(p[2] - b) <= tol) ++n;
    }
  return n;
}

io::Image solid(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  io::Image img(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = img.at(y, x);
      p[0] = r, p[1] = g, p[2] = b;
    }
  return img;
}
}  // namespace

// ---- Metrics ----

TEST(Metrics, HandComputedCountsTiesNaNAndLossWeighting) {
  // 6 classes, so top-k is top-5 and a true class ranked 6th is a miss.
  ClassificationMetrics m(6);
  EXPECT_EQ(m.top_k(), 5);
  EXPECT_TRUE(std::isnan(m.mean_loss()) && std::isnan(m.top1_accuracy()));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> batch1 = {
      0.1f, 0.9f, 0.2f, 0.3f, 0.4f, 0.5f,  // label 1: predicted 1 (right)
      0.6f, 0.5f, 0.4f, 0.3f, 0.2f, 0.1f,  // label 5: predicted 0, ranked 6th -> top-5 miss
      0.6f, 0.5f, 0.4f, 0.3f, 0.2f, 0.1f,  // label 4: predicted 0, ranked 5th -> top-5 hit
      1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f,  // all tied, label 4: predicted 0 (first), rank 4 -> hit
  };
  const std::vector<int32_t> labels1 = {1, 5, 4, 4};
  m.add_batch(batch1.data(), labels1.data(), 4, 2.0);
  const std::vector<float> batch2 = {
      1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f,  // all tied, label 5: rank 5 -> miss (ties go to the lower index)
      0.0f, 0.0f, nan,  0.0f, 5.0f, 0.0f,  // NaN ranks first: predicted 2 (right)
      0.0f, nan,  nan,  0.0f, 5.0f, 0.0f,  // two NaNs: predicted 1 (the first NaN); label 2 ranked 2nd -> hit
  };
  const std::vector<int32_t> labels2 = {5, 2, 2};
  m.add_batch(batch2.data(), labels2.data(), 3, 9.0);
  EXPECT_EQ(m.count(), 7);
  EXPECT_EQ(m.correct_top1(), 2);
  EXPECT_EQ(m.correct_top_k(), 5);
  EXPECT_DOUBLE_EQ(m.mean_loss(), (4 * 2.0 + 3 * 9.0) / 7);
  EXPECT_DOUBLE_EQ(m.top1_accuracy(), 2.0 / 7);
  EXPECT_DOUBLE_EQ(m.top_k_accuracy(), 5.0 / 7);
  EXPECT_EQ(m.confusion_at(1, 1), 1);
  EXPECT_EQ(m.confusion_at(5, 0), 2);
  EXPECT_EQ(m.confusion_at(4, 0), 2);
  EXPECT_EQ(m.confusion_at(2, 2), 1);
  EXPECT_EQ(m.confusion_at(2, 1), 1);
  int64_t total = 0;
  for (int64_t v : m.confusion()) total += v;
  EXPECT_EQ(total, 7);
  EXPECT_EQ(m.class_counts(), (std::vector<int64_t>{0, 1, 2, 0, 2, 2}));
  const std::vector<double> acc = m.per_class_accuracy();
  EXPECT_TRUE(std::isnan(acc[0]) && std::isnan(acc[3]));
  EXPECT_DOUBLE_EQ(acc[1], 1.0);
  EXPECT_DOUBLE_EQ(acc[2], 0.5);
  EXPECT_DOUBLE_EQ(acc[4], 0.0);
  const auto pairs = m.top_confused(2);
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].truth, 4);  // (4 -> 0) and (5 -> 0) both count 2: (truth, predicted) order
  EXPECT_EQ(pairs[0].predicted, 0);
  EXPECT_EQ(pairs[1].truth, 5);
  EXPECT_EQ(pairs[0].count, 2);

  // The Tensor overload: float64 logits and int64 labels are converted; an empty batch changes nothing.
  ClassificationMetrics t(3);
  EXPECT_EQ(t.top_k(), 3);
  t.add_batch(Tensor::from_values({0, 1, 2, 5, 1, 0}, {2, 3}, DType::F64),
              Tensor::from_values({2, 1}, {2}, DType::I64), 0.5);
  t.add_batch(Tensor::empty({0, 3}), Tensor::empty({0}, DType::I32), 100.0);
  EXPECT_EQ(t.count(), 2);
  EXPECT_EQ(t.correct_top1(), 1);
  EXPECT_EQ(t.correct_top_k(), 2);
  EXPECT_DOUBLE_EQ(t.mean_loss(), 0.5);
  t.reset();
  EXPECT_EQ(t.count(), 0);
  EXPECT_EQ(t.confusion_at(1, 0), 0);
}

TEST(Metrics, BadInputIsRejectedWithoutChangingTheCounts) {
  ClassificationMetrics m(4);
  m.add_batch(Tensor::from_values({1, 0, 0, 0}, {1, 4}), labels({0}), 1.0);
  EXPECT_TRUE(contains(error_of([&] { m.add_batch(Tensor::zeros({2, 5}), labels({0, 1}), 1.0); }), "(N, 4)"));
  EXPECT_TRUE(contains(error_of([&] { m.add_batch(Tensor::zeros({2, 4}), labels({0}), 1.0); }), "labels must be (2)"));
  EXPECT_TRUE(contains(error_of([&] { m.add_batch(Tensor::zeros({2, 4}), Tensor::zeros({2}), 1.0); }), "int32 or int64"));
  const std::string bad_label = error_of([&] { m.add_batch(Tensor::zeros({3, 4}), labels({0, 3, 4}), 1.0); });
  EXPECT_TRUE(contains(bad_label, "label 4 of sample 2 is outside [0, 4)")) << bad_label;
  EXPECT_TRUE(contains(error_of([&] { m.add_batch(Tensor::zeros({1, 4}), labels({-1}), 1.0); }), "label -1"));
  EXPECT_EQ(m.count(), 1);  // nothing of the failed batches was counted
  EXPECT_EQ(m.correct_top1(), 1);
  EXPECT_DOUBLE_EQ(m.mean_loss(), 1.0);
  EXPECT_TRUE(contains(error_of([&] { ClassificationMetrics bad(0); }), "at least 1"));
  EXPECT_TRUE(contains(error_of([&] { m.table({"a", "b"}); }), "2 class names given for 4 classes"));
  EXPECT_TRUE(contains(error_of([&] { m.confusion_at(4, 0); }), "outside [0, 4)"));
}

TEST(Metrics, ArgmaxAndTopKMatchTorch) {
  const auto& f = fixture("metrics");
  for (const char* name : {"c10", "c3", "c1000", "c2"}) {
    SCOPED_TRACE(name);
    const std::string p = std::string(name) + ".";
    const Tensor x = f.at(p + "x"), t = f.at(p + "t");
    const int64_t n = x.size(0), c = x.size(1);
    const std::vector<double> pred = f.at(p + "pred").to_doubles(), hit = f.at(p + "topk_hit").to_doubles();
    const std::vector<double> tv = t.to_doubles();
    ClassificationMetrics all(static_cast<int>(c));
    ASSERT_EQ(all.top_k(), static_cast<int>(f.at(p + "k").item()));
    // Uneven batches; the row-by-row checks use a one-row metrics object each.
    all.add_batch(x.data_as<float>(), t.data_as<int32_t>(), n / 3, 1.0);
    all.add_batch(x.data_as<float>() + (n / 3) * c, t.data_as<int32_t>() + n / 3, n - n / 3, 1.0);
    std::vector<int64_t> confusion(static_cast<size_t>(c * c), 0);
    int64_t top1 = 0, topk = 0;
    for (int64_t i = 0; i < n; ++i) {
      ++confusion[static_cast<size_t>(tv[i] * c + pred[i])];
      top1 += pred[i] == tv[i];
      topk += hit[i] != 0;
      ClassificationMetrics one(static_cast<int>(c));
      one.add_batch(x.data_as<float>() + i * c, t.data_as<int32_t>() + i, 1, 0.0);
      EXPECT_EQ(one.correct_top_k(), hit[i] != 0 ? 1 : 0) << "row " << i;
    }
    EXPECT_EQ(all.confusion(), confusion);
    EXPECT_EQ(all.correct_top1(), top1);
    EXPECT_EQ(all.correct_top_k(), topk);
    EXPECT_GT(topk, top1);  // the fixture has top-k hits that are top-1 misses (except tiny C)
  }
}

TEST(Metrics, TableAndJson) {
  ClassificationMetrics m(3);
  // truth 0: 2 right, 1 as class 2; truth 1: 1 right; truth 2: none.
  const std::vector<float> x = {9, 0, 0, 9, 0, 0, 0, 0, 9, 0, 9, 0};
  const std::vector<int32_t> y = {0, 0, 0, 1};
  m.add_batch(x.data(), y.data(), 4, 0.25);
  const std::string text = m.table({"ants", "bees", "a_very_long_class_name_that_goes_on_and_on"});
  SCOPED_TRACE(text);
  EXPECT_TRUE(contains(text, "4 samples, mean loss 0.2500, top-1 75.00%, top-3 100.00%"));
  EXPECT_TRUE(contains(text, "class                     samples  correct  accuracy\n"));
  EXPECT_TRUE(contains(text, "ants                            3        2    66.67%\n"));
  EXPECT_TRUE(contains(text, "bees                            1        1   100.00%\n"));
  EXPECT_TRUE(contains(text, "a_very_long_class_name_~        0        0         -\n"));  // shortened to 24
  EXPECT_TRUE(contains(text, "true \\ predicted                ants        bees  a_very_lo~\n"));
  EXPECT_TRUE(contains(text, "ants                               2           0           1\n"));
  EXPECT_FALSE(contains(text, "goes_on"));
  // Default names.
  EXPECT_TRUE(contains(m.table(), "class 2"));

  const nlohmann::json j = m.to_json();
  EXPECT_EQ(j["count"], 4);
  EXPECT_DOUBLE_EQ(j["loss"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(j["top1"].get<double>(), 0.75);
  EXPECT_EQ(j["top_k"], 3);
  EXPECT_DOUBLE_EQ(j["top_k_accuracy"].get<double>(), 1.0);
  EXPECT_TRUE(j["per_class_accuracy"][2].is_null());
  EXPECT_DOUBLE_EQ(j["per_class_accuracy"][0].get<double>(), 2.0 / 3);
  EXPECT_EQ(j["class_counts"], nlohmann::json({3, 1, 0}));
  EXPECT_EQ(j["confusion"], nlohmann::json({{2, 0, 1}, {0, 1, 0}, {0, 0, 0}}));
  EXPECT_FALSE(m.to_json(false).contains("confusion"));
  EXPECT_TRUE(ClassificationMetrics(3).to_json()["loss"].is_null());

  // More than 20 classes: no matrix, the most confused pairs instead.
  ClassificationMetrics big(30);
  std::vector<float> xb(3 * 30, 0.0f);
  xb[0 * 30 + 7] = 1, xb[1 * 30 + 7] = 1, xb[2 * 30 + 3] = 1;
  const std::vector<int32_t> yb = {12, 12, 3};
  big.add_batch(xb.data(), yb.data(), 3, 1.0);
  const std::string big_text = big.table();
  EXPECT_FALSE(contains(big_text, "Confusion matrix"));
  EXPECT_TRUE(contains(big_text, "Most confused pairs (30 classes"));
  EXPECT_TRUE(contains(big_text, "      2  class 12 -> predicted as class 7\n")) << big_text;
}

// ---- RunningMetrics: the same counts, accumulated on the device ----

namespace {
// Batches of logits with ties, NaNs and repeated maxima, so that every ranking rule is exercised.
struct MetricBatches {
  std::vector<Tensor> logits, labels, losses;
};
MetricBatches tricky_batches(int classes, DType dt) {
  MetricBatches b;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> small(0, 3), label(0, classes - 1);
  for (int batch = 0; batch < 4; ++batch) {
    const int n = 3 + batch * 2;
    std::vector<double> x(static_cast<size_t>(n * classes)), y(static_cast<size_t>(n));
    for (double& v : x) v = small(rng) - 1.5;  // few distinct values: many ties
    if (batch == 2) x[4] = kNaN, x[static_cast<size_t>(classes + 1)] = kNaN;
    for (double& v : y) v = label(rng);
    b.logits.push_back(Tensor::from_values(x, {n, classes}, dt));
    b.labels.push_back(labels(y));
    b.losses.push_back(Tensor::from_values({0.25 * (batch + 1)}, {1}, dt == DType::F64 ? DType::F64 : DType::F32));
  }
  return b;
}
void expect_same_metrics(const ClassificationMetrics& got, const ClassificationMetrics& want, const std::string& what) {
  EXPECT_EQ(got.count(), want.count()) << what;
  EXPECT_EQ(got.correct_top1(), want.correct_top1()) << what;
  EXPECT_EQ(got.correct_top_k(), want.correct_top_k()) << what;
  EXPECT_EQ(got.confusion(), want.confusion()) << what;
  EXPECT_NEAR(got.mean_loss(), want.mean_loss(), 1e-12) << what;
}
}  // namespace

TEST(Metrics, RunningMetricsCountLikeClassificationMetrics) {
  for (DType dt : {DType::F32, DType::F64})
    for (int classes : {1, 3, 7}) {
      const MetricBatches b = tricky_batches(classes, dt);
      ClassificationMetrics want(classes), got(classes);
      RunningMetrics running(classes, Device::CPU);
      double loss_sum = 0;
      int64_t count = 0;
      for (size_t i = 0; i < b.logits.size(); ++i) {
        const double loss = b.losses[i].to_doubles()[0];
        want.add_batch(b.logits[i], b.labels[i], loss);
        running.add(b.logits[i], b.labels[i], b.losses[i]);
        loss_sum += loss * b.logits[i].size(0);
        count += b.logits[i].size(0);
        const RunningMetrics::Totals t = running.lagged();  // exact on the CPU
        EXPECT_EQ(t.count, count);
        EXPECT_EQ(t.correct, want.correct_top1());
        EXPECT_NEAR(t.loss_sum, loss_sum, 1e-12);
        EXPECT_EQ(t.nonfinite_batches, 0);
      }
      running.read_into(got);
      expect_same_metrics(got, want, std::to_string(classes) + " classes " + dtype_name(dt));
      EXPECT_EQ(running.exact().count, 0) << "read_into resets";
    }
}

TEST(Metrics, RunningMetricsCountNonFiniteLossesAndRejectBadLabels) {
  RunningMetrics running(3, Device::CPU);
  const Tensor x = Tensor::from_values({1, 2, 3, 3, 2, 1}, {2, 3});
  running.add(x, labels({0, 1}), Tensor::from_values({0.5}, {1}));
  running.add(x, labels({0, 1}), Tensor::from_values({kNaN}, {1}));
  running.add(x, labels({0, 1}), Tensor::from_values({std::numeric_limits<double>::infinity()}, {1}));
  EXPECT_EQ(running.exact().nonfinite_batches, 2);
  running.reset();
  running.add(x, labels({0, 3}), Tensor::from_values({0.5}, {1}));
  ClassificationMetrics m(3);
  EXPECT_TRUE(contains(error_of([&] { running.read_into(m); }), "outside [0, 3)"));
  EXPECT_EQ(m.count(), 0);
  EXPECT_THROW(running.add(Tensor::zeros({2, 4}), labels({0, 1}), Tensor::zeros({1})), ShapeError);
  EXPECT_THROW(running.add(x, labels({0}), Tensor::zeros({1})), ShapeError);
  EXPECT_THROW(running.add(x, labels({0, 1}), Tensor::zeros({2})), ShapeError);
}

TEST(Metrics, RunningMetricsCudaMatchesCpu) {
  TL_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
    const int classes = 7;
    const MetricBatches b = tricky_batches(classes, dt == DType::BF16 ? DType::F32 : dt);
    RunningMetrics cpu(classes, Device::CPU), gpu(classes, Device::CUDA);
    for (size_t i = 0; i < b.logits.size(); ++i) {
      // bf16 holds these small half-integers exactly, so the CPU reference sees the same values
      cpu.add(b.logits[i], b.labels[i], b.losses[i]);
      gpu.add(b.logits[i].to(Device::CUDA, dt, Layout::NCHW), b.labels[i].to(Device::CUDA), b.losses[i].to(Device::CUDA));
      const RunningMetrics::Totals lag = gpu.lagged();  // as of the previous call: the totals before this batch
      if (i == 0) {
        EXPECT_EQ(lag.count, 0);
      }
    }
    const RunningMetrics::Totals t = gpu.exact();
    EXPECT_EQ(t.count, cpu.exact().count);
    ClassificationMetrics want(classes), got(classes);
    cpu.read_into(want);
    gpu.read_into(got);
    expect_same_metrics(got, want, std::string("CUDA ") + dtype_name(dt));
  }
}

// ---- PNG charts ----

TEST(Report, CurvesPng) {
  const std::string dir = output_dir();
  std::vector<EpochRecord> history;
  for (int e = 1; e <= 25; ++e) {
    const double lr = e <= 7 ? 1e-3 : e <= 14 ? 1e-4 : 1e-5;
    history.push_back({e, 0.7 * std::exp(-0.15 * e) + 0.1, 0.5 * std::exp(-0.1 * e) + 0.2,
                       0.95 - 0.4 * std::exp(-0.2 * e), 0.93 - 0.3 * std::exp(-0.3 * e), lr});
  }
  history[9].val_loss = kNaN;  // a missing value breaks the val curve
  const std::string path = dir + "/curves.png";
  write_curves_png(path, history, LRSchedule::step(7).step_epochs(25));  // lines at 8, 15 and 22
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const io::Image img = io::decode_image(path);
  ASSERT_EQ(img.width, 1280);
  ASSERT_EQ(img.height, 480);
  // Both curves in both panels (plot areas: x 88..616 and 728..1256, y 56..416).
  EXPECT_GT(count_color(img, 31, 119, 180, 90, 60, 614, 414), 500);   // train loss
  EXPECT_GT(count_color(img, 255, 127, 14, 90, 60, 614, 414), 500);   // val loss
  EXPECT_GT(count_color(img, 31, 119, 180, 730, 60, 1254, 414), 500);  // train accuracy
  EXPECT_GT(count_color(img, 255, 127, 14, 730, 60, 1254, 414), 500);  // val accuracy
  EXPECT_GT(count_color(img, 40, 40, 40, 0, 0, 1280, 480, 10), 1000);   // text
  EXPECT_EQ(img.at(470, 5)[0], 255);                                     // background stays white

  // Edge cases still give a full-size, non-blank chart.
  struct Case {
    const char* name;
    std::vector<EpochRecord> h;
  };
  const std::vector<Case> cases = {
      {"one_epoch", {{1, 0.69, 0.65, 0.55, 0.6, 1e-3}}},
      {"flat", {{1, 0.5, 0.25, 1.0, 1.0, 1e-3}, {2, 0.5, 0.25, 1.0, 1.0, 1e-3}, {3, 0.5, 0.25, 1.0, 1.0, 1e-3}}},
      {"zero", {{0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0}}},
      {"nan_val", {{1, 1.0, kNaN, 0.5, kNaN, 1e-3}, {2, 0.8, kNaN, 0.6, kNaN, 1e-3}}},
      {"all_nan", {{1, kNaN, kNaN, kNaN, kNaN, kNaN}}},
      {"inf", {{1, std::numeric_limits<double>::infinity(), 1.0, 0.5, 0.5, 1e-3}, {2, 2.0, 1.0, 0.6, 0.7, 1e-3}}},
      {"empty", {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string p = dir + "/curves_" + c.name + ".png";
    write_curves_png(p, c.h);
    const io::Image e = io::decode_image(p);
    EXPECT_EQ(e.width, 1280);
    EXPECT_EQ(e.height, 480);
    EXPECT_GT(count_color(e, 40, 40, 40, 0, 0, 1280, 480, 10), 1000);
    const bool has_train = std::string(c.name) != "all_nan" && std::string(c.name) != "empty";
    if (has_train) {
      EXPECT_GT(count_color(e, 31, 119, 180, 90, 52, 614, 420) + count_color(e, 255, 127, 14, 90, 52, 614, 420), 20);
    }
  }
  EXPECT_TRUE(contains(error_of([&] { write_curves_png(dir + "/no/such/dir/c.png", history); }), "no/such/dir/c.png"));
}

TEST(Report, PredictionGridPng) {
  const std::string dir = output_dir();
  std::vector<GridItem> items;
  const uint8_t shades[5][3] = {{200, 180, 40}, {60, 60, 200}, {30, 160, 160}, {120, 60, 20}, {160, 160, 160}};
  const int sizes[5][2] = {{300, 200}, {224, 224}, {50, 80}, {500, 375}, {160, 160}};
  const char* names[5][2] = {{"ants", "ants"}, {"bees", "ants"}, {"bees", "bees"},
                             {"a_rather_long_class_name", "ants"}, {"ants", "a_rather_long_class_name"}};
  for (int i = 0; i < 5; ++i)
    items.push_back({solid(sizes[i][0], sizes[i][1], shades[i][0], shades[i][1], shades[i][2]), names[i][0],
                     names[i][1], 0.5f + 0.1f * i});
  const std::string path = dir + "/grid.png";
  write_prediction_grid_png(path, items, 3);
  const io::Image img = io::decode_image(path);
  ASSERT_EQ(img.width, 3 * kGridCellWidth);
  ASSERT_EQ(img.height, 2 * kGridCellHeight);
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    const int cx = (i % 3) * kGridCellWidth + kGridCellWidth / 2, tile_top = (i / 3) * kGridCellHeight + 38;
    const uint8_t* centre = img.at(tile_top + kGridTile / 2, cx);
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(centre[k], shades[i][k], 2);
    const bool right = std::string(names[i][0]) == names[i][1];
    const uint8_t* frame = img.at(tile_top - 2, cx);
    EXPECT_EQ(frame[0] > 150, !right);  // red frame when wrong, green when right
    EXPECT_EQ(frame[1] > 100, right);
    // Title and caption text in the verdict's colour.
    const int x0 = (i % 3) * kGridCellWidth, y0 = (i / 3) * kGridCellHeight;
    const int title = right ? count_color(img, 0, 140, 0, x0, y0, x0 + kGridCellWidth, y0 + 34, 10)
                            : count_color(img, 210, 20, 20, x0, y0, x0 + kGridCellWidth, y0 + 34, 10);
    EXPECT_GT(title, 100);
  }
  // A 300x200 image is letterboxed: the tile's top rows are the grey background, not the image.
  const uint8_t* above = img.at(38 + 2, kGridCellWidth / 2);
  EXPECT_EQ(above[0], 235);
  // The unused sixth cell is blank.
  EXPECT_EQ(count_color(img, 255, 255, 255, 2 * kGridCellWidth, kGridCellHeight, 3 * kGridCellWidth,
                        2 * kGridCellHeight, 0),
            kGridCellWidth * kGridCellHeight);
  // Fewer items than columns: the grid narrows.
  EXPECT_EQ(render_prediction_grid({items[0], items[1]}, 8).width, 2 * kGridCellWidth);

  EXPECT_TRUE(contains(error_of([&] { render_prediction_grid(items, 0); }), "columns must be at least 1"));
  EXPECT_TRUE(contains(error_of([&] { render_prediction_grid({}, 3); }), "no images"));
  std::vector<GridItem> bad = {items[0]};
  bad[0].image.pixels.resize(10);
  EXPECT_TRUE(contains(error_of([&] { render_prediction_grid(bad, 3); }), "image 0 (true class 'ants') has an invalid size"));
}

// ---- "lr change" lines ----

// Lines only where the schedule jumps (StepLR, MultiStepLR), never for cosine with or without warmup, whose lr
// differs at every epoch; and exactly where lr_at's value differs from the previous epoch's for the step ones.
TEST(Report, LrChangeLinesOnlyWhereTheScheduleSteps) {
  EXPECT_EQ(LRSchedule::step(7).step_epochs(25), (std::vector<int>{8, 15, 22}));
  EXPECT_EQ(LRSchedule::step(5).step_epochs(10), (std::vector<int>{6}));  // epoch 11 is not run
  EXPECT_EQ(LRSchedule::multi_step({20, 10, 10, 0, 30}).step_epochs(25), (std::vector<int>{11, 21}));
  EXPECT_TRUE(LRSchedule::cosine(25, 0.0, 3).step_epochs(25).empty());
  EXPECT_TRUE(LRSchedule::cosine(25).step_epochs(25).empty());
  EXPECT_TRUE(LRSchedule::constant().step_epochs(25).empty());
  EXPECT_TRUE(LRSchedule::step(7, 1.0).step_epochs(25).empty());
  for (const LRSchedule& s : {LRSchedule::step(7), LRSchedule::step(1, 0.5), LRSchedule::multi_step({0, 3, 3, 9})}) {
    SCOPED_TRACE(s.describe());
    const std::vector<int> lines = s.step_epochs(12);
    for (int e = 1; e < 12; ++e) {
      const bool changed = s.lr_at(0.1, e) != s.lr_at(0.1, e - 1);
      EXPECT_EQ(changed, std::count(lines.begin(), lines.end(), e + 1) == 1) << "0-based epoch " << e;
    }
  }

  // The picture: a history whose lr changes every epoch (cosine with warmup) gets no dashed line; the lines given
  // are drawn at their epochs. Loss panel: plot x 88..616 over the epoch axis [1 - 0.72, 25 + 0.72].
  const LRSchedule cosine = LRSchedule::cosine(25, 0.0, 3);
  std::vector<EpochRecord> history;
  for (int e = 1; e <= 25; ++e)
    history.push_back({e, 1.0 / e, 1.2 / e, 0.5 + e / 60.0, 0.45 + e / 60.0, cosine.lr_at(0.1, e - 1, 9, 10)});
  // The number of dashed-line pixels (exactly the line colour) in each column of the loss plot.
  auto dashed_columns = [](const io::Image& img) {
    std::vector<int> n(640, 0);
    for (int x = 90; x < 614; ++x)
      n[static_cast<size_t>(x)] = count_color(img, 150, 150, 150, x, 60, x + 1, 414, 0);
    return n;
  };
  const std::vector<int> none = dashed_columns(render_curves(history, cosine.step_epochs(25)));
  EXPECT_LT(*std::max_element(none.begin(), none.end()), 20);
  write_curves_png(output_dir() + "/curves_cosine_warmup.png", history, cosine.step_epochs(25));
  const std::vector<int> steps = LRSchedule::step(7).step_epochs(25);
  const std::vector<int> lines = dashed_columns(render_curves(history, steps));
  for (int e : steps) {
    SCOPED_TRACE(e);
    const int x = static_cast<int>(88 + (e - 0.28) / 25.44 * 528);
    EXPECT_GT(*std::max_element(lines.begin() + x - 2, lines.begin() + x + 3), 150);
  }
  int line_columns = 0;
  for (int v : lines) line_columns += v > 150;
  EXPECT_LE(line_columns, 3 * 3);  // at most 2-3 columns per line: nowhere else
}

TEST(Report, UnfreezeLinesAtTheEpochsThatUnfroze) {
  // --unfreeze layer4@3 --freeze-epochs style history: epochs 3 and 6 unfroze something. Green dashed lines (and a
  // legend entry) at exactly those epochs, in both panels; a history without unfreezing has no green pixel.
  std::vector<EpochRecord> history;
  for (int e = 1; e <= 8; ++e)
    history.push_back({e, 1.0 / e, 1.1 / e, 0.5 + e / 20.0, 0.45 + e / 20.0, 0.01, e == 3 || e == 6});
  auto green_columns = [](const io::Image& img, int x0) {
    std::vector<int> n(640, 0);
    for (int x = 90; x < 614; ++x)
      n[static_cast<size_t>(x)] = count_color(img, 44, 160, 44, x0 + x, 60, x0 + x + 1, 414, 0);
    return n;
  };
  const io::Image img = render_curves(history);
  write_png_atomic(output_dir() + "/curves_unfreeze.png", img);
  for (int panel_x : {0, 640}) {
    SCOPED_TRACE(panel_x);
    const std::vector<int> cols = green_columns(img, panel_x);
    for (int e : {3, 6}) {
      SCOPED_TRACE(e);
      const int x = static_cast<int>(88 + (e - 0.5) / 8.0 * 528);  // epoch axis [1 - 0.5, 8 + 0.5]
      EXPECT_GT(*std::max_element(cols.begin() + x - 3, cols.begin() + x + 4), 150);
    }
    int line_columns = 0;
    for (int v : cols) line_columns += v > 150;
    EXPECT_LE(line_columns, 2 * 3);
    EXPECT_GT(count_color(img, 44, 160, 44, panel_x + 300, 10, panel_x + 640, 50, 0), 10);  // the legend's sample
  }
  for (EpochRecord& r : history) r.unfrozen = false;
  const io::Image plain = render_curves(history);
  EXPECT_EQ(count_color(plain, 44, 160, 44, 0, 0, plain.width, plain.height, 0), 0);
}

// ---- Error analysis ----

TEST(ErrorAnalysis, ImageLossesAreEachImagesCrossEntropy) {
  // By hand: logits (0, ln 3) give p = (1/4, 3/4); equal logits predict the first class; NaN ranks first.
  const std::vector<double> l = {0, std::log(3.0), 5, 5, kNaN, 0, 0, std::log(3.0)};
  const int32_t truth[] = {0, 1, 1, 1};
  const int64_t samples[] = {7, 8, 9, 10};
  const std::vector<ImageLoss> r = image_losses(l, truth, samples, 4, 2);
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].sample, 7);
  EXPECT_EQ(r[0].predicted, 1);
  EXPECT_NEAR(r[0].loss, std::log(4.0), 1e-15);
  EXPECT_NEAR(r[0].probability, 0.75, 1e-15);
  EXPECT_EQ(r[1].predicted, 0);
  EXPECT_NEAR(r[1].loss, std::log(2.0), 1e-15);
  EXPECT_NEAR(r[1].probability, 0.5, 1e-15);
  EXPECT_EQ(r[2].predicted, 0);
  EXPECT_TRUE(std::isnan(r[2].loss));
  EXPECT_NEAR(r[3].loss, std::log(4.0 / 3.0), 1e-15);

  // Each image's loss is the engine's cross-entropy (checked against PyTorch in test_loss.cpp) of that image alone,
  // in float64, for large logits too (a max-subtracted log-sum-exp).
  const int64_t n = 23, C = 7;
  const Tensor x = Tensor::randn({n, C}, 5, DType::F64);
  std::vector<double> v = x.to_doubles();
  for (double& e : v) e *= 30;
  std::vector<int32_t> y;
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) y.push_back(static_cast<int32_t>((i * 5) % C)), idx.push_back(i);
  const std::vector<ImageLoss> all = image_losses(v, y.data(), idx.data(), n, C);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<double> row(v.begin() + i * C, v.begin() + (i + 1) * C);
    const double want = cross_entropy_forward(Tensor::from_values(row, {1, C}, DType::F64),
                                              Tensor::from_values({static_cast<double>(y[i])}, {1}, DType::I32))
                            .item();
    EXPECT_NEAR(all[static_cast<size_t>(i)].loss, want, 1e-12 * std::max(1.0, want)) << i;
    EXPECT_GE(all[static_cast<size_t>(i)].probability, 1.0 / C);
  }
  EXPECT_TRUE(contains(error_of([&] { image_losses(v, y.data(), idx.data(), n, C + 1); }), "logits for 23 images"));
  y[3] = static_cast<int32_t>(C);
  EXPECT_TRUE(contains(error_of([&] { image_losses(v, y.data(), idx.data(), n, C); }), "label 7 of image 3"));
}

TEST(ErrorAnalysis, TopLossesAreTheHighestInOrder) {
  std::vector<ImageLoss> l;
  const double losses[] = {0.5, 2.0, kNaN, 0.1, 2.0, 7.5, std::numeric_limits<double>::infinity(), 0.3};
  for (int i = 0; i < 8; ++i) l.push_back({100 + i, 0, 1, losses[i], 0.5});
  std::vector<int64_t> order;
  for (const ImageLoss& t : top_losses(l, 6)) order.push_back(t.sample);
  // NaN first, then +inf, 7.5, the two 2.0 in sample order, 0.5.
  EXPECT_EQ(order, (std::vector<int64_t>{102, 106, 105, 101, 104, 100}));
  EXPECT_EQ(top_losses(l, 100).size(), 8u);
  // From logits: the more the true class's logit trails, the higher the loss.
  const std::vector<double> logits = {2, 0, 0, 0.5, 1, 1, 0, 3, -1, 4};  // 5 images, 2 classes, all true class 0
  const int32_t truth[5] = {0, 0, 0, 0, 0};
  const int64_t samples[5] = {0, 1, 2, 3, 4};
  std::vector<int64_t> by_loss;
  for (const ImageLoss& t : top_losses(image_losses(logits, truth, samples, 5, 2), 3)) by_loss.push_back(t.sample);
  EXPECT_EQ(by_loss, (std::vector<int64_t>{4, 3, 1}));  // margins -5, -3, -0.5 (then 0 and +2)
  EXPECT_TRUE(top_losses({}, 16).empty());
  EXPECT_TRUE(top_losses(l, 0).empty());
}

// The grid of the highest losses: images in loss order (told apart by their colour), each with its loss line.
TEST(ErrorAnalysis, TopLossesPng) {
  const std::string dir = output_dir();
  const std::string d = scratch_dir("top_losses_png");
  const uint8_t shades[5][3] = {{200, 180, 40}, {60, 60, 200}, {30, 160, 160}, {120, 60, 20}, {160, 160, 160}};
  std::vector<io::Sample> samples;
  for (int i = 0; i < 5; ++i) {
    samples.push_back({d + "/img" + std::to_string(i) + ".png", i % 2});
    write_png_atomic(samples.back().path, solid(40 + 10 * i, 50, shades[i][0], shades[i][1], shades[i][2]));
  }
  samples.push_back({d + "/missing.png", 0});  // fails to decode: left out
  std::vector<ImageLoss> losses;
  const double loss[6] = {0.2, 3.1, 0.05, 1.4, 0.7, 9.0};
  for (int i = 0; i < 6; ++i) losses.push_back({i, i % 2, 1 - i % 2, loss[i], 0.8});
  const std::vector<std::string> classes = {"ants", "a_rather_long_class_name"};
  const std::string path = dir + "/top_losses.png";
  ASSERT_TRUE(write_top_losses_png(path, top_losses(losses, 16), samples, classes, io::eval_resize_transform(32)));
  const io::Image img = io::decode_image(path);
  ASSERT_EQ(img.width, 4 * kGridCellWidth);
  ASSERT_EQ(img.height, 2 * (kGridCellHeight + kGridNoteHeight));
  const int order[5] = {1, 3, 4, 0, 2};  // by loss, highest first (sample 5 did not decode)
  for (int k = 0; k < 5; ++k) {
    SCOPED_TRACE(k);
    const int cx = (k % 4) * kGridCellWidth + kGridCellWidth / 2;
    const int top = (k / 4) * (kGridCellHeight + kGridNoteHeight);
    const uint8_t* centre = img.at(top + 38 + kGridTile / 2, cx);
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(centre[c], shades[order[k]][c], 2);
    // The loss line under the truth, in red (every prediction here is wrong).
    EXPECT_GT(count_color(img, 210, 20, 20, cx - 100, top + 38 + kGridTile + 34, cx + 100,
                          top + kGridCellHeight + kGridNoteHeight, 10), 50);
  }
  EXPECT_FALSE(write_top_losses_png(dir + "/none.png", {losses[5]}, samples, classes, io::eval_resize_transform(32)));
  EXPECT_FALSE(std::filesystem::exists(dir + "/none.png"));
  EXPECT_TRUE(contains(error_of([&] { write_top_losses_png(path, {{9, 0, 0, 1.0, 0.5}}, samples, classes,
                                                           io::eval_resize_transform(32)); }),
                       "image 9"));
}

// confusion.png for 2, 10, 60 and 100 classes: both panels are drawn, and a cell's colour follows its value: the
// counts' largest cell is the darkest blue, and changing one cell changes its colour from pale to dark.
TEST(ErrorAnalysis, ConfusionPng) {
  const std::string dir = output_dir();
  for (int C : {2, 10, 60, 100}) {
    SCOPED_TRACE(C);
    std::vector<std::string> classes;
    for (int i = 0; i < C; ++i)
      classes.push_back((i % 3 == 1 ? "class_with_a_long_name_" : "c") + std::to_string(i));
    std::vector<int64_t> m(static_cast<size_t>(C * C), 0);
    for (int r = 0; r < C; ++r) {
      m[static_cast<size_t>(r * C + r)] = 40;
      if (r != C - 2) m[static_cast<size_t>(r * C + (r + 1) % C)] = 3 + r % 5;  // row C - 2: a recall of 100%
    }
    m[static_cast<size_t>(C * C - 1)] = 50;  // the largest count stays at the last cell
    const std::string path = dir + "/confusion_" + std::to_string(C) + ".png";
    write_confusion_png(path, m, classes);
    const io::Image high = io::decode_image(path);
    EXPECT_LT(high.width, 3000);
    EXPECT_LT(high.height, 1600);
    EXPECT_GT(count_color(high, 40, 40, 40, 0, 0, high.width, high.height, 10), 500);  // text
    const Color dark = blues(1), pale = blues(0);
    // Each panel has the darkest blue (the largest count; a 100% recall) and the palest (zeros).
    for (int panel = 0; panel < 2; ++panel) {
      const int x0 = panel * high.width / 2, x1 = x0 + high.width / 2;
      EXPECT_GT(count_color(high, dark.r, dark.g, dark.b, x0, 0, x1, high.height, 3), 40) << panel;
      EXPECT_GT(count_color(high, pale.r, pale.g, pale.b, x0, 0, x1, high.height, 1), 40) << panel;
    }
    // Cell (0, 0) at 40 against 1: only that cell changes in the counts panel.
    m[0] = 1;
    const io::Image low = render_confusion(m, classes);
    ASSERT_EQ(low.width, high.width);
    int bx0 = high.width, by0 = high.height, bx1 = -1, by1 = -1;
    for (int y = 0; y < high.height; ++y)
      for (int x = 0; x < high.width / 2; ++x)
        if (std::memcmp(high.at(y, x), low.at(y, x), 3) != 0)
          bx0 = std::min(bx0, x), by0 = std::min(by0, y), bx1 = std::max(bx1, x), by1 = std::max(by1, y);
    ASSERT_GE(bx1, 0);
    EXPECT_LE(bx1 - bx0, 80);  // one cell
    EXPECT_LE(by1 - by0, 80);
    const uint8_t* h = high.at(by0 + 2, bx0 + 2);  // a corner of the cell, away from its number
    const uint8_t* l = low.at(by0 + 2, bx0 + 2);
    const Color want_h = blues(40.0 / 50), want_l = blues(1.0 / 50);
    EXPECT_NEAR(h[2], want_h.b, 2);
    EXPECT_NEAR(h[0], want_h.r, 2);
    EXPECT_NEAR(l[0], want_l.r, 2);
    EXPECT_GT(l[0], h[0] + 100);  // pale against dark
  }
  // Long names are cut in the middle: names that differ only at the end stay apart.
  const std::string stem = "a_rather_long_class_name_that_goes_on_";
  EXPECT_NE(render_confusion({1, 0, 0, 1}, {stem + "1", stem + "2"}).pixels,
            render_confusion({1, 0, 0, 1}, {stem + "1", stem + "3"}).pixels);
  // An empty row (a class without images) is grey in the recall panel, not NaN-coloured; one class works.
  write_confusion_png(dir + "/confusion_1.png", {5}, {"only"});
  const io::Image empty_row = render_confusion({3, 1, 0, 0}, {"a", "b"});
  EXPECT_GT(count_color(empty_row, 225, 225, 225, empty_row.width / 2, 0, empty_row.width, empty_row.height, 0), 1000);
  EXPECT_TRUE(contains(error_of([&] { render_confusion({1, 2, 3}, {"a", "b"}); }), "3 counts for 2 classes"));
  EXPECT_TRUE(contains(error_of([&] { render_confusion({}, {}); }), "no class names"));
}

// ---- Progress, logs, files ----

// Class names with bytes the PNG font has no glyph for (non-ASCII, non-UTF-8, control bytes) are drawn as '?':
// stb_easy_font indexes its glyph table with (byte - 32), which read outside it for such bytes (found by UBSan).
TEST(Report, PredictionGridDrawsBytesWithoutAGlyphAsQuestionMarks) {
  const std::string dir = output_dir();
  auto grid = [&](const std::string& name, const std::string& file) {
    std::vector<GridItem> items{{solid(64, 64, 90, 90, 90), name, "caf" + name.substr(3), 0.7f}};
    write_prediction_grid_png(dir + "/" + file, items, 1);
    return io::decode_image(dir + "/" + file).pixels;
  };
  EXPECT_EQ(grid(std::string("caf\xe9\xff\x01"), "glyphless.png"), grid("caf???", "questions.png"));
}

TEST(Report, ProgressLinesAndBar) {
  double now = 100.0;
  auto clock = [&] { return now; };
  {
    std::ostringstream os;
    Progress p("train", 3, 25, 20, os, ProgressStyle::Lines, clock);
    EXPECT_EQ(p.style(), ProgressStyle::Lines);
    for (int b = 1; b <= 20; ++b) {
      now += 0.5;
      p.update(b, 8, 1.0 / b, 0.5);
    }
    p.finish();
    p.finish();  // idempotent
    std::vector<std::string> lines;
    std::istringstream in(os.str());
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    ASSERT_EQ(lines.size(), 10u) << os.str();  // batches 2, 4, ..., 18 and the summary
    EXPECT_EQ(lines[0], "train epoch 3/25  batch 2/20  16.0 img/s  loss 0.5000  acc 50.00%  ETA 0:09");
    EXPECT_EQ(lines[8], "train epoch 3/25  batch 18/20  16.0 img/s  loss 0.0556  acc 50.00%  ETA 0:01");
    EXPECT_EQ(lines[9], "train epoch 3/25  done: 160 images in 10.0 s (16.0 img/s)  loss 0.0500  acc 50.00%");
    EXPECT_FALSE(contains(os.str(), "\r"));
  }
  {
    std::ostringstream os;  // 3 batches: a line for each of the first two, then the summary
    Progress p("val", 1, 1, 3, os, ProgressStyle::Lines, clock);
    p.update(1, 4, kNaN, kNaN);
    p.update(2, 4, 0.25, 1.0);
    p.update(3, 4, 0.25, 1.0);
    p.finish();
    const std::string s = os.str();
    EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 3);
    EXPECT_TRUE(contains(s, "val epoch 1/1  batch 1/3  -  loss -  acc -  ETA 0:00\n")) << s;  // no time passed
    EXPECT_TRUE(contains(s, "val epoch 1/1  batch 2/3  -  loss 0.2500  acc 100.00%"));
  }
  {
    std::ostringstream os;  // bar: redrawn at most every 0.1 s, always on the last batch
    Progress p("train", 1, 2, 100, os, ProgressStyle::Bar, clock);
    for (int b = 1; b <= 100; ++b) {
      now += 1.0 / 32;  // exact in binary: redraws at batches 1, 5, 9, ..., 97 and the last
      p.update(b, 2, 0.5, 0.25);
    }
    p.finish();
    const std::string s = os.str();
    EXPECT_EQ(std::count(s.begin(), s.end(), '\r'), 25 + 1 + 1);  // and one for the summary
    EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1);
    EXPECT_TRUE(contains(s, "[####################]  batch 100/100"));
    EXPECT_TRUE(contains(s, "[##########..........]"));
    EXPECT_TRUE(contains(s, "\rtrain epoch 1/2  done: 200 images in 3.1 s (64.0 img/s)  loss 0.5000  acc 25.00%"));
  }
  // Auto with a stream that is not std::cerr: plain lines.
  std::ostringstream os;
  EXPECT_EQ(Progress("x", 1, 1, 1, os).style(), ProgressStyle::Lines);
}

TEST(Report, JsonLinesAndAtomicWrites) {
  const std::string dir = output_dir();
  const std::string path = dir + "/metrics.jsonl";
  std::filesystem::remove(path);
  {
    JsonLinesWriter w(path);
    w.write({{"epoch", 1}, {"phase", "train"}, {"loss", 0.5}});
    // Flushed: readable while the writer is still open.
    std::ifstream in(path);
    std::string line;
    ASSERT_TRUE(std::getline(in, line));
    EXPECT_EQ(nlohmann::json::parse(line)["loss"], 0.5);
    w.write({{"epoch", 1}, {"phase", "val"}, {"loss", kNaN}, {"name", std::string("bad\xff utf8")}});
  }
  JsonLinesWriter(path).write({{"epoch", 2}});  // appends
  std::ifstream in(path);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1]["phase"], "val");
  EXPECT_TRUE(rows[1]["loss"].is_null());
  EXPECT_EQ(rows[2]["epoch"], 2);
  const std::string open_error = error_of([&] { JsonLinesWriter(dir + "/missing/m.jsonl"); });
  EXPECT_TRUE(contains(open_error, "cannot open metrics log '" + dir + "/missing/m.jsonl'")) << open_error;

  const std::string file = dir + "/atomic.bin";
  write_file_atomic(file, "old", 3);
  write_file_atomic(file, "new contents", 12);
  std::ifstream f(file, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(f), {}), "new contents");
  EXPECT_FALSE(std::filesystem::exists(file + ".tmp"));
  EXPECT_TRUE(contains(error_of([&] { write_file_atomic(dir + "/missing/a.bin", "x", 1); }), "missing/a.bin"));
  // A directory in the way of the rename: the error names the file and the temporary file is cleaned up.
  std::filesystem::create_directories(dir + "/a_dir");
  std::filesystem::create_directories(dir + "/a_dir/inside");
  EXPECT_TRUE(contains(error_of([&] { write_file_atomic(dir + "/a_dir", "x", 1); }), "a_dir"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/a_dir.tmp"));
  EXPECT_TRUE(contains(error_of([&] { write_png_atomic(dir + "/x.png", io::Image()); }), "invalid size"));
}
