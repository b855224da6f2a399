// Test utilities: relative error, float64 central-difference gradient checks, the gradient-contract check,
// PyTorch fixtures and the GPU skip. Used by every tests/test_*.cpp.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace tl::testing {

// Targets from the engine-core issue.
constexpr double kGradcheckTol = 1e-6;  // float64 central differences
constexpr double kTorchTol = 1e-5;      // CPU float32 vs PyTorch
constexpr double kCudaTol = 1e-4;       // CUDA float32 (TF32 off) vs CPU
constexpr double kBf16Tol = 1e-2;       // bfloat16 / float16 vs CPU

// max |a - b| / max |b| over all elements (b is the reference); 0 when both are all zeros.
double rel_error(const Tensor& actual, const Tensor& expected);
// Fails (non-fatal) with both values when rel_error(actual, expected) > tol.
void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what);

// Analytical gradients of `fn` (via the tape) against central differences, in float64 on the CPU.
// `inputs` are float64 CPU tensors in any layout; `wrt[i]` says whether input i is differentiated.
// L = sum(seed * fn(inputs)) for a fixed random seed tensor. Kinks (ReLU at 0, max-pool ties) must be kept
// away from by the caller's choice of inputs; `eps` is the step.
using VarFn = std::function<Variable(const std::vector<Variable>&)>;
void expect_gradcheck(const VarFn& fn, const std::vector<Tensor>& inputs, const std::vector<bool>& wrt,
                      double tol = kGradcheckTol, double eps = 1e-6);

// Proves a backward function's contract: with accumulate=false it overwrites a pre-filled gradient,
// with accumulate=true it adds to it. `backward(grad, accumulate)` writes one gradient output.
void expect_grad_contract(const std::function<void(Tensor&, bool)>& backward, const Tensor& like,
                          const std::string& what);

// The PyTorch reference file tests/torch_ref/fx_<name>.py wrote (<build>/fixtures/<name>.safetensors).
const io::TensorFile& fixture(const std::string& name);

// The message of the tl::Error that fn() throws, or "" when it throws none.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Runs a command (through /bin/sh), returning its exit status; its output goes to `log` when given.
int run_command(const std::string& command, std::string* output = nullptr);
// "<python> <repo>/tests/torch_ref/<script> <args>" with Debian's PyTorch; fails the test when it fails.
void run_torch_script(const std::string& script, const std::string& args);
// A directory under the fixture directory for test files (created if missing, kept; several tests may share it).
std::string test_dir(const std::string& name);
// An empty scratch folder under the fixture directory that belongs to the running test alone (emptied first if it
// exists). It is removed when that test passes, so that the suite's peak disk use is what the tests running at the
// same time hold, not the sum of all of them (the model parity folders alone add up to ~25 GB); a failed test
// keeps it for inspection, and TL_KEEP_TEST_FILES=1 keeps every one.
std::string scratch_dir(const std::string& name);

// Inputs with |x| >= margin, so that ReLU/max kinks are never crossed by a finite-difference step.
Tensor away_from_zero(const Shape& shape, uint64_t seed, double margin = 0.05);

// A scope for CUDA-vs-CPU comparisons: TF32 off in convolutions and matmuls, restored afterwards.
class NoTF32 {
 public:
  NoTF32();
  ~NoTF32();

 private:
  bool conv_, matmul_;
};

}  // namespace tl::testing

// Skips a CUDA test when CUDA cannot run: a CPU-only build (TL_WITH_CUDA == 0) or no visible device.
#define TL_REQUIRE_CUDA()                                                                \
  do {                                                                                   \
    if (!::tl::cuda::available()) GTEST_SKIP() << ::tl::cuda::unavailable_reason();      \
  } while (0)
