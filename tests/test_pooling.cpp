// Max / average / adaptive average pooling: output-size rules, float64 gradient checks, gradient contract,
// PyTorch parity (tests/torch_ref/fx_pooling.py), NHWC on the CPU, saved bytes, bad arguments, CUDA vs CPU.
#include <algorithm>
#include <array>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "layers/pooling.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {

Pool2dOptions opts(int k, int s, int p, bool ceil, bool include_pad = true) {
  return pool2d_options(k, s, p, ceil, include_pad);
}

// The configurations of fx_pooling.py (same names and options).
struct PoolCase {
  const char* name;
  bool max;
  Pool2dOptions o;
};
const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = {
      {"max_resnet_stem", true, opts(3, 2, 1, false)},  {"max_vgg", true, opts(2, 2, 0, false)},
      {"max_ceil", true, opts(3, 2, 0, true)},          {"max_ceil_pad", true, opts(3, 3, 1, true)},
      {"max_ceil_rule", true, opts(2, 2, 1, true)},     {"avg_densenet", false, opts(2, 2, 0, false)},
      {"avg_pad_incl", false, opts(3, 2, 1, false)},    {"avg_pad_excl", false, opts(3, 2, 1, false, false)},
      {"avg_ceil_incl", false, opts(3, 2, 1, true)},    {"avg_ceil_excl", false, opts(3, 2, 1, true, false)},
      {"avg_ceil_nopad", false, opts(2, 2, 0, true)},   {"max_ceil_tiny", true, opts(4, 3, 0, true)},
      {"avg_ceil_tiny", false, opts(4, 3, 0, true)},
      // Inception v3, GoogLeNet, SqueezeNet
      {"avg_incep_3s1p1", false, opts(3, 1, 1, false)}, {"avg_3s1p1_excl", false, opts(3, 1, 1, false, false)},
      {"max_googlenet_3s2_ceil", true, opts(3, 2, 0, true)}, {"max_googlenet_2s2_ceil", true, opts(2, 2, 0, true)},
  };
  return cases;
}
struct AdaptiveCase {
  const char* name;
  int64_t oh, ow;
};
const std::vector<AdaptiveCase>& adaptive_cases() {
  static const std::vector<AdaptiveCase> cases = {
      {"adaptive_1x1", 1, 1},        {"adaptive_7x7", 7, 7},           {"adaptive_7x7_same", 7, 7},
      {"adaptive_3x4", 3, 4},        {"adaptive_4x4_14", 4, 4},        {"adaptive_4x4_odd", 4, 4},
      {"adaptive_6x6_from_1", 6, 6}, {"adaptive_6x6_from_2", 6, 6},    {"adaptive_6x6_from_3", 6, 6},
      {"adaptive_6x6_from_4", 6, 6}, {"adaptive_6x6_from_5", 6, 6},    {"adaptive_6x6_from_6", 6, 6},
      {"adaptive_6x6_from_7", 6, 6}};
  return cases;
}

Variable pool(const Variable& x, const PoolCase& c) { return c.max ? max_pool2d(x, c.o) : avg_pool2d(x, c.o); }

// Distinct, well separated values (a random permutation of k*step per (n, c) plane), so max pooling has no ties
// and no finite-difference step crosses a kink. With step 1/8 and <= 256 values per plane they are exact in bf16.
Tensor distinct_values(const Shape& shape, uint64_t seed, double step = 0.1, DType dtype = DType::F64) {
  const int64_t plane = shape[2] * shape[3];
  std::mt19937_64 rng(seed);
  std::vector<double> v;
  for (int64_t p = 0; p < shape[0] * shape[1]; ++p) {
    std::vector<double> vals(static_cast<size_t>(plane));
    for (int64_t i = 0; i < plane; ++i) vals[static_cast<size_t>(i)] = (static_cast<double>(i) - plane / 2) * step;
    std::shuffle(vals.begin(), vals.end(), rng);
    v.insert(v.end(), vals.begin(), vals.end());
  }
  return Tensor::from_values(v, shape, dtype);
}

// Runs a pooling case through autograd: returns (y, dx) for input x and upstream gradient gy.
std::pair<Tensor, Tensor> run_pool(const PoolCase& c, const Tensor& x, const Tensor& gy) {
  Variable xv(x, true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = pool(xv, c);
  tape.backward(y, gy);
  return {y.value(), xv.grad()};
}

}  // namespace

TEST(Pooling, OutputSizesMatchPyTorch) {
  // Every (in, k, stride, pad, ceil) of the grid in fx_pooling.py that PyTorch accepts gives PyTorch's size;
  // every one it rejects (output too small) throws ShapeError here.
  const Tensor& t = fixture("pooling").at("output_sizes");
  std::vector<double> v = t.to_doubles();
  std::set<std::tuple<int, int, int, int, int>> accepted;
  int ceil_differs = 0;
  for (size_t r = 0; r + 6 <= v.size(); r += 6) {
    const int in = int(v[r]), k = int(v[r + 1]), s = int(v[r + 2]), p = int(v[r + 3]), ceil = int(v[r + 4]);
    accepted.insert({in, k, s, p, ceil});
    EXPECT_EQ(pool_output_size(in, k, s, p, ceil != 0), int64_t(v[r + 5]))
        << "in " << in << " k " << k << " s " << s << " p " << p << " ceil " << ceil;
    if (ceil && (!accepted.count({in, k, s, p, 0}) || pool_output_size(in, k, s, p, false) != int64_t(v[r + 5])))
      ++ceil_differs;
  }
  EXPECT_GT(accepted.size(), 300u);
  EXPECT_GT(ceil_differs, 20);  // the table exercises ceil mode
  for (int in = 1; in <= 12; ++in)
    for (int k = 1; k <= 4; ++k)
      for (int s = 1; s <= 3; ++s)
        for (int p = 0; p <= k / 2; ++p)
          for (int ceil = 0; ceil <= 1; ++ceil)
            if (!accepted.count({in, k, s, p, ceil})) {
              EXPECT_THROW(pool_output_size(in, k, s, p, ceil != 0), ShapeError) << in << " " << k << " " << s;
            }
  // Known networks: ResNet stem 112 -> 56, VGG 224 -> 112, ceil 7 -> 4 (floor 3).
  EXPECT_EQ(pool_output_size(112, 3, 2, 1, false), 56);
  EXPECT_EQ(pool_output_size(224, 2, 2, 0, false), 112);
  EXPECT_EQ(pool_output_size(7, 2, 2, 0, true), 4);
  EXPECT_EQ(pool_output_size(7, 2, 2, 0, false), 3);
  // Stride defaults to the kernel.
  Pool2dOptions o = pool2d_options(2);
  EXPECT_EQ(o.stride_h, 2);
  EXPECT_EQ(pool2d_output_shape({1, 3, 8, 6}, Pool2dOptions{3, 2}), (Shape{1, 3, 2, 3}));  // stride 0 == kernel
}

TEST(MaxPool, GradcheckFloat64) {
  for (const PoolCase& c : pool_cases()) {
    if (!c.max) continue;
    SCOPED_TRACE(c.name);
    expect_gradcheck([&](const std::vector<Variable>& v) { return max_pool2d(v[0], c.o); },
                     {distinct_values({1, 2, 6, 7}, 11)}, {true});
  }
}

TEST(AvgPool, GradcheckFloat64) {
  for (const PoolCase& c : pool_cases()) {
    if (c.max) continue;
    SCOPED_TRACE(c.name);
    expect_gradcheck([&](const std::vector<Variable>& v) { return avg_pool2d(v[0], c.o); },
                     {Tensor::randn({1, 2, 7, 6}, 12, DType::F64)}, {true});
  }
}

TEST(AdaptiveAvgPool, GradcheckFloat64) {
  for (auto [h, w, oh, ow] : std::vector<std::array<int64_t, 4>>{
           {5, 6, 1, 1}, {10, 9, 7, 7}, {5, 4, 3, 2}, {3, 4, 5, 7}, {14, 14, 4, 4}, {1, 1, 6, 6}, {5, 5, 6, 6}}) {
    SCOPED_TRACE(shape_str({h, w, oh, ow}));
    const int64_t out_h = oh, out_w = ow;  // C++17 lambdas cannot capture structured bindings (clang refuses)
    expect_gradcheck([&](const std::vector<Variable>& v) { return adaptive_avg_pool2d(v[0], out_h, out_w); },
                     {Tensor::randn({1, 2, h, w}, 13, DType::F64)}, {true});
  }
}

TEST(Pooling, GradContract) {
  const Tensor x = distinct_values({2, 3, 7, 6}, 21);
  for (const PoolCase& c : pool_cases()) {
    SCOPED_TRACE(c.name);
    const Tensor y = c.max ? max_pool2d_forward(x, c.o) : avg_pool2d_forward(x, c.o);
    const Tensor dy = Tensor::randn(y.shape(), 22, DType::F64);
    if (c.max)
      expect_grad_contract([&](Tensor& dx, bool acc) { max_pool2d_backward(x, y, dy, c.o, dx, acc); }, x, c.name);
    else
      expect_grad_contract([&](Tensor& dx, bool acc) { avg_pool2d_backward(dy, x.shape(), c.o, dx, acc); }, x, c.name);
  }
  const Tensor dy = Tensor::randn({2, 3, 4, 4}, 23, DType::F64);
  expect_grad_contract([&](Tensor& dx, bool acc) { adaptive_avg_pool2d_backward(dy, x.shape(), dx, acc); }, x,
                       "adaptive dx");
}

// A gradient accumulated into a dx of the other layout is added after conversion (layers/layer_util.h
// write_grad), in all three poolings.
TEST(Pooling, AccumulatesIntoTheOtherLayout) {
  const Tensor x = distinct_values({2, 3, 7, 6}, 24);
  const Pool2dOptions o = opts(3, 2, 1, false);
  const Tensor y = max_pool2d_forward(x, o);
  const Tensor dy = Tensor::randn(y.shape(), 25, DType::F64);
  const Tensor ady = Tensor::randn({2, 3, 2, 2}, 26, DType::F64);
  const Tensor base = Tensor::randn(x.shape(), 27, DType::F64);
  for (int which = 0; which < 3; ++which) {
    SCOPED_TRACE(which);
    auto run = [&](Tensor& dx, bool acc) {
      if (which == 0) max_pool2d_backward(x, y, dy, o, dx, acc);
      if (which == 1) avg_pool2d_backward(dy, x.shape(), o, dx, acc);
      if (which == 2) adaptive_avg_pool2d_backward(ady, x.shape(), dx, acc);
    };
    Tensor fresh;
    run(fresh, false);
    Tensor expected = base.clone();
    expected.add_(fresh);
    Tensor dx = base.to_layout(Layout::NHWC);
    run(dx, true);
    EXPECT_EQ(dx.layout(), Layout::NHWC);
    expect_close(dx, expected, 1e-12, "accumulated into NHWC");
  }
}

// float32 NCHW and NHWC (the CPU model layout) and float64, against PyTorch's float32 results.
TEST(Pooling, MatchesPyTorch) {
  const auto& f = fixture("pooling");
  for (auto [dt, layout] : {std::pair{DType::F32, Layout::NCHW}, std::pair{DType::F32, Layout::NHWC},
                            std::pair{DType::F64, Layout::NCHW}}) {
    const std::string how = std::string(" ") + dtype_name(dt) + " " + layout_name(layout);
    for (const PoolCase& c : pool_cases()) {
      SCOPED_TRACE(c.name + how);
      const std::string n = c.name;
      auto [y, gx] =
          run_pool(c, f.at(n + ".x").to(Device::CPU, dt, layout), f.at(n + ".gy").to(Device::CPU, dt, layout));
      expect_close(y, f.at(n + ".y"), kTorchTol, n + " y");
      expect_close(gx, f.at(n + ".gx"), kTorchTol, n + " dx");
    }
    for (const AdaptiveCase& c : adaptive_cases()) {
      SCOPED_TRACE(c.name + how);
      const std::string n = c.name;
      Variable x(f.at(n + ".x").to(Device::CPU, dt, layout), true);
      Tape tape;
      TapeScope scope(tape);
      Variable y = adaptive_avg_pool2d(x, c.oh, c.ow);
      expect_close(y.value(), f.at(n + ".y"), kTorchTol, n + " y");
      tape.backward(y, f.at(n + ".gy").to(Device::CPU, dt, layout));
      expect_close(x.grad(), f.at(n + ".gx"), kTorchTol, n + " dx");
    }
  }
}

TEST(Pooling, MaxBackwardRoutesToFirstMaximum) {
  // A window of equal values: PyTorch gives the whole gradient to the first (row-major) element.
  // Every window has ties: x = [3 3 1; 3 3 3; 0 3 3], 2x2 windows, stride 1; window k's first maximum is at
  // (0,0), (0,1), (1,0), (1,1) in turn.
  Tensor x = Tensor::from_values({3, 3, 1, 3, 3, 3, 0, 3, 3}, {1, 1, 3, 3}, DType::F64);
  Tensor y = max_pool2d_forward(x, opts(2, 1, 0, false)), dx;
  Tensor dy = Tensor::from_values({1, 10, 100, 1000}, {1, 1, 2, 2}, DType::F64);
  max_pool2d_backward(x, Tensor(), dy, opts(2, 1, 0, false), dx, false);
  EXPECT_EQ(y.to_doubles(), (std::vector<double>{3, 3, 3, 3}));
  EXPECT_EQ(dx.to_doubles(), (std::vector<double>{1, 10, 0, 100, 1000, 0, 0, 0, 0}));
}

TEST(Pooling, NhwcOnCpuMatchesNchw) {
  const Tensor x = distinct_values({2, 3, 7, 6}, 31, 0.1, DType::F32);
  for (const PoolCase& c : pool_cases()) {
    SCOPED_TRACE(c.name);
    const Tensor gy = Tensor::randn(pool2d_output_shape(x.shape(), c.o), 32);
    auto [y, gx] = run_pool(c, x, gy);
    auto [y2, gx2] = run_pool(c, x.to_layout(Layout::NHWC), gy.to_layout(Layout::NHWC));
    EXPECT_EQ(y2.layout(), Layout::NHWC);
    EXPECT_EQ(gx2.layout(), Layout::NHWC);
    expect_close(y2, y, 1e-6, std::string(c.name) + " nhwc y");
    expect_close(gx2, gx, 1e-6, std::string(c.name) + " nhwc dx");
  }
  Tensor ya = adaptive_avg_pool2d_forward(x, 4, 5), dxa, dxa2;
  Tensor ya2 = adaptive_avg_pool2d_forward(x.to_layout(Layout::NHWC), 4, 5);
  expect_close(ya2, ya, 1e-6, "adaptive nhwc y");
  Tensor gy = Tensor::randn(ya.shape(), 33);
  adaptive_avg_pool2d_backward(gy, x.shape(), dxa, false);
  adaptive_avg_pool2d_backward(gy.to_layout(Layout::NHWC), x.shape(), dxa2, false);
  expect_close(dxa2, dxa, 1e-6, "adaptive nhwc dx");
}

TEST(Pooling, SavesOnlyWhatBackwardNeeds) {
  const Tensor x = Tensor::randn({2, 3, 8, 8}, 41);
  Tape tape;
  TapeScope scope(tape);
  Variable xv(x, true);
  Variable a = max_pool2d(xv, opts(3, 2, 1, false));
  EXPECT_EQ(tape.saved_bytes(), x.nbytes());  // CPU: x only (the argmax is recomputed)
  Variable b = avg_pool2d(xv, opts(2, 2, 0, false));
  Variable c = adaptive_avg_pool2d(xv, 1, 1);
  EXPECT_EQ(tape.saved_bytes(), x.nbytes());  // average poolings save nothing
  EXPECT_EQ(tape.size(), 3u);
  Variable frozen(x, false);
  max_pool2d(frozen, opts(2, 2, 0, false));  // nothing needs a gradient: nothing recorded
  EXPECT_EQ(tape.size(), 3u);
}

TEST(Pooling, BadArgumentsThrow) {
  try {
    max_pool2d_forward(Tensor::zeros({3, 8, 8}), opts(2, 2, 0, false));
    FAIL() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 8, 8]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(max_pool2d_forward(Tensor::zeros({1, 1, 8, 8}), opts(3, 2, 2, false)), ShapeError);  // pad > k/2
  EXPECT_THROW(avg_pool2d_forward(Tensor::zeros({1, 1, 2, 2}), opts(3, 1, 0, false)), ShapeError);  // too small
  EXPECT_THROW(adaptive_avg_pool2d_forward(Tensor::zeros({1, 1, 4, 4}), 0, 1), ShapeError);
  EXPECT_THROW(max_pool2d_forward(Tensor::zeros({1, 1, 4, 4}, DType::I32), opts(2, 2, 0, false)), DTypeError);
  try {
    Tensor dx;
    avg_pool2d_backward(Tensor::zeros({1, 1, 3, 3}), {1, 1, 8, 8}, opts(2, 2, 0, false), dx, false);
    FAIL() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 1, 3, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[1, 1, 4, 4]"), std::string::npos) << e.what();
  }
}

TEST(PoolingCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  NoTF32 no_tf32;
  const Shape shape{2, 5, 9, 10};  // 90 values per plane: exact in bf16 with step 1/8
  const Tensor x = distinct_values(shape, 51, 0.125, DType::F32);
  for (const PoolCase& c : pool_cases()) {
    SCOPED_TRACE(c.name);
    const Tensor gy = Tensor::randn(pool2d_output_shape(shape, c.o), 52);
    auto [y_cpu, dx_cpu] = run_pool(c, x, gy);
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      for (DType dt : {DType::F32, DType::BF16}) {
        const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
        const Tensor xg = x.to(Device::CUDA, dt, layout), gyg = gy.to(Device::CUDA, dt, layout);
        auto [y_gpu, dx_gpu] = run_pool(c, xg, gyg);
        EXPECT_TRUE(y_gpu.is_cuda() && y_gpu.layout() == layout && y_gpu.dtype() == dt) << y_gpu.str();
        expect_close(y_gpu, y_cpu, tol, std::string(c.name) + " cuda y");
        expect_close(dx_gpu, dx_cpu, tol, std::string(c.name) + " cuda dx");
        if (c.max) {
          const Tensor y_out = y_gpu;  // a structured binding cannot be captured in C++17
          expect_grad_contract([&](Tensor& g, bool acc) { max_pool2d_backward(xg, y_out, gyg, c.o, g, acc); }, xg,
                               std::string(c.name) + " cuda dx contract");
          Tensor dx_own;  // without y: our own kernel recomputes the argmax (also where cuDNN would run)
          max_pool2d_backward(xg, Tensor(), gyg, c.o, dx_own, false);
          expect_close(dx_own, dx_cpu, tol, std::string(c.name) + " cuda dx (own kernel)");
        }
        if (!c.max)
          expect_grad_contract([&](Tensor& g, bool acc) { avg_pool2d_backward(gyg, shape, c.o, g, acc); }, xg,
                               std::string(c.name) + " cuda dx contract");
      }
    }
  }
}

TEST(AdaptiveAvgPoolCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  for (auto [h, w, oh, ow] :
       std::vector<std::array<int64_t, 4>>{{7, 7, 1, 1}, {3, 2, 1, 1}, {10, 9, 7, 7}, {14, 14, 7, 7}, {5, 4, 7, 3},
                                           {14, 14, 4, 4}, {1, 1, 6, 6}, {3, 3, 6, 6}, {7, 7, 6, 6}}) {
    const Tensor x = Tensor::randn({2, 6, h, w}, 61), gy = Tensor::randn({2, 6, oh, ow}, 62);
    Tensor y_cpu = adaptive_avg_pool2d_forward(x, oh, ow), dx_cpu;
    adaptive_avg_pool2d_backward(gy, x.shape(), dx_cpu, false);
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      for (DType dt : {DType::F32, DType::BF16}) {
        const double tol = dt == DType::F32 ? kCudaTol : kBf16Tol;
        const std::string what = "adaptive " + shape_str({h, w, oh, ow}) + " " + layout_name(layout) + " " +
                                 dtype_name(dt);
        const Tensor xg = x.to(Device::CUDA, dt, layout), gyg = gy.to(Device::CUDA, dt, layout);
        Tensor y = adaptive_avg_pool2d_forward(xg, oh, ow), dx;
        adaptive_avg_pool2d_backward(gyg, x.shape(), dx, false);
        expect_close(y, y_cpu, tol, what + " y");
        expect_close(dx, dx_cpu, tol, what + " dx");
        expect_grad_contract([&](Tensor& g, bool acc) { adaptive_avg_pool2d_backward(gyg, x.shape(), g, acc); }, xg,
                             what + " contract");
      }
    }
  }
}
