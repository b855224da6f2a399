// Test utilities (see tl_testing.h).
#include "tl_testing.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>

namespace tl::testing {

double rel_error(const Tensor& actual, const Tensor& expected) {
  check_same_shape(actual, expected, "rel_error");
  std::vector<double> a = actual.to_doubles(), b = expected.to_doubles();
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
    max_ref = std::max(max_ref, std::fabs(b[i]));
  }
  if (max_ref == 0) return max_diff == 0 ? 0.0 : INFINITY;
  return max_diff / max_ref;
}

void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << ": result is undefined";
  ASSERT_TRUE(expected.defined()) << what << ": reference is undefined";
  ASSERT_EQ(actual.shape(), expected.shape())
      << what << ": shape " << shape_str(actual.shape()) << " vs reference " << shape_str(expected.shape());
  double err = rel_error(actual, expected);
  EXPECT_LE(err, tol) << what << ": relative error " << err << " > " << tol << " (" << actual.str() << " vs "
                      << expected.str() << ")";
}

namespace {
double weighted_sum(const Tensor& y, const Tensor& seed) {
  std::vector<double> a = y.to_doubles(), b = seed.to_doubles();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

void expect_gradcheck(const VarFn& fn, const std::vector<Tensor>& inputs, const std::vector<bool>& wrt, double tol,
                      double eps) {
  ASSERT_EQ(inputs.size(), wrt.size());
  std::vector<Tensor> base;
  for (const Tensor& t : inputs) {
    ASSERT_EQ(t.dtype(), DType::F64) << "gradcheck inputs must be float64";
    base.push_back(t.to(Device::CPU).clone());
  }
  // Analytical.
  Tape tape;
  TapeScope scope(tape);
  std::vector<Variable> vars;
  for (size_t i = 0; i < base.size(); ++i) vars.emplace_back(base[i].clone(), wrt[i]);
  Variable y = fn(vars);
  ASSERT_TRUE(y.requires_grad()) << "gradcheck: the output does not require a gradient";
  Tensor seed = Tensor::randn(y.shape(), 1234, DType::F64);
  tape.backward(y, seed);
  // Numerical, one element at a time.
  for (size_t i = 0; i < base.size(); ++i) {
    if (!wrt[i]) continue;
    Tensor analytical = vars[i].grad();
    ASSERT_TRUE(analytical.defined()) << "gradcheck: input " << i << " received no gradient";
    std::vector<double> numeric(static_cast<size_t>(base[i].numel()));
    double* p = base[i].data_as<double>();
    for (int64_t j = 0; j < base[i].numel(); ++j) {
      const double orig = p[j];
      auto eval = [&](double v) {
        p[j] = v;
        NoGradGuard no_grad;
        std::vector<Variable> vs;
        for (const Tensor& t : base) vs.emplace_back(t.clone(), false);
        return weighted_sum(fn(vs).value(), seed);
      };
      const double plus = eval(orig + eps), minus = eval(orig - eps);
      p[j] = orig;
      numeric[static_cast<size_t>(j)] = (plus - minus) / (2 * eps);
    }
    // numeric[] follows the input's memory order (NCHW or NHWC).
    Tensor num = Tensor::empty(base[i].shape(), DType::F64, Device::CPU, base[i].layout());
    std::copy(numeric.begin(), numeric.end(), num.data_as<double>());
    expect_close(analytical, num, tol, "gradcheck of input " + std::to_string(i));
  }
}

void expect_grad_contract(const std::function<void(Tensor&, bool)>& backward, const Tensor& like,
                          const std::string& what) {
  Tensor fresh;
  backward(fresh, false);
  ASSERT_TRUE(fresh.defined()) << what << ": backward with accumulate=false left the gradient undefined";
  const double tol = like.dtype() == DType::F64 ? 1e-12 : (like.dtype() == DType::F32 ? 1e-6 : kBf16Tol);
  Tensor prefill = Tensor::randn(like.shape(), 99, like.dtype(), like.device(), like.layout());
  Tensor assigned = prefill.clone();
  backward(assigned, false);
  expect_close(assigned, fresh, tol, what + " (accumulate=false must overwrite a pre-filled gradient)");
  Tensor accumulated = prefill.clone();
  backward(accumulated, true);
  Tensor expected = prefill.clone();
  expected.add_(fresh);
  expect_close(accumulated, expected, tol, what + " (accumulate=true must add to the existing gradient)");
}

const io::TensorFile& fixture(const std::string& name) {
  static std::map<std::string, io::TensorFile> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  const std::string path = std::string(TL_FIXTURE_DIR) + "/" + name + ".safetensors";
  try {
    return cache[name] = io::read_safetensors(path);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("PyTorch fixture missing or unreadable: ") + e.what() +
                             ". Run the tests through ctest (the torch_fixtures test writes them), or: "
                             "/usr/bin/python3 tests/torch_ref/make_fixtures.py " TL_FIXTURE_DIR);
  }
}

int run_command(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) text.append(buf, n);
  int status = ::pclose(pipe);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void run_torch_script(const std::string& script, const std::string& args) {
  std::string out;
  const std::string cmd = std::string(TL_PYTHON_EXE) + " " + TL_SOURCE_DIR + "/tests/torch_ref/" + script + " " + args;
  int rc = run_command(cmd, &out);
  if (rc != 0) throw std::runtime_error("PyTorch reference script failed (exit " + std::to_string(rc) + "): " + cmd +
                                        "\n" + out);
}

std::string test_dir(const std::string& name) {
  std::string dir = std::string(TL_FIXTURE_DIR) + "/" + name;
  std::filesystem::create_directories(dir);
  return dir;
}

namespace {
// Removes the scratch folders a test made once it has passed (gtest calls OnTestEnd after the test body and its
// fixture's TearDown). One per test process: ctest runs each test in its own process.
class ScratchCleaner : public ::testing::EmptyTestEventListener {
 public:
  void add(const std::string& dir) { dirs_.push_back(dir); }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    const char* keep = std::getenv("TL_KEEP_TEST_FILES");
    if (info.result()->Passed() && !(keep && *keep && std::string(keep) != "0")) {
      std::error_code ec;  // best effort: a folder that cannot be removed is not the test's failure
      for (const std::string& d : dirs_) std::filesystem::remove_all(d, ec);
    }
    dirs_.clear();
  }

 private:
  std::vector<std::string> dirs_;
};

ScratchCleaner& scratch_cleaner() {
  static ScratchCleaner* cleaner = [] {
    auto* c = new ScratchCleaner;  // the listener list owns it
    ::testing::UnitTest::GetInstance()->listeners().Append(c);
    return c;
  }();
  return *cleaner;
}
}  // namespace

std::string scratch_dir(const std::string& name) {
  const std::string dir = std::string(TL_FIXTURE_DIR) + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  scratch_cleaner().add(dir);
  return dir;
}

Tensor away_from_zero(const Shape& shape, uint64_t seed, double margin) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> mag(margin, 1.0);
  std::bernoulli_distribution sign(0.5);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = sign(rng) ? mag(rng) : -mag(rng);
  return Tensor::from_values(v, shape, DType::F64);
}

NoTF32::NoTF32() : conv_(cuda::allow_tf32_conv()), matmul_(cuda::allow_tf32_matmul()) {
  cuda::set_allow_tf32(false, false);
}
NoTF32::~NoTF32() { cuda::set_allow_tf32(conv_, matmul_); }

}  // namespace tl::testing
