// The per-step scalar table (train/step_scalars.h) and the optimizer's use of it: the entries the kernels read
// equal, bit for bit, the coefficients computed directly from the parameter's state (the pre-table way), for many
// steps of SGD/Adam/AdamW/amsgrad with an lr that changes every step, a frozen parameter and one that joins late;
// replay_step() (the host side of a replayed CUDA graph) gives the same step counts and entries as step().
#include <cmath>
#include <cstring>

#include "kernels/optim_coefficients.h"
#include "train/optimizer.h"
#include "train/step_scalars.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::train;

namespace {

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

::testing::AssertionResult same(const kernels::SgdCoefficients& a, const kernels::SgdCoefficients& b) {
  if (same_bits(a.neg_lr, b.neg_lr) && same_bits(a.weight_decay, b.weight_decay) && same_bits(a.momentum, b.momentum) &&
      same_bits(a.one_minus_dampening, b.one_minus_dampening) && a.nesterov == b.nesterov && a.first == b.first)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "neg_lr " << a.neg_lr << " vs " << b.neg_lr << ", first " << a.first
                                       << " vs " << b.first;
}
::testing::AssertionResult same(const kernels::AdamCoefficients& a, const kernels::AdamCoefficients& b) {
  const double x[] = {a.l2, a.decay_factor, a.beta1, a.one_minus_beta1, a.beta2, a.one_minus_beta2,
                      a.bias_correction2_sqrt, a.eps, a.neg_step_size};
  const double y[] = {b.l2, b.decay_factor, b.beta1, b.one_minus_beta1, b.beta2, b.one_minus_beta2,
                      b.bias_correction2_sqrt, b.eps, b.neg_step_size};
  for (int k = 0; k < 9; ++k)
    if (!same_bits(x[k], y[k])) return ::testing::AssertionFailure() << "field " << k << ": " << x[k] << " vs " << y[k];
  if (a.decoupled != b.decoupled || a.amsgrad != b.amsgrad) return ::testing::AssertionFailure() << "flags differ";
  return ::testing::AssertionSuccess();
}

struct Config {
  const char* name;
  OptimizerKind kind;
  HyperParams h;
};
std::vector<Config> configs() {
  return {{"sgd", OptimizerKind::SGD, HyperParams::sgd(0.05)},
          {"sgd_momentum", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.9)},
          {"sgd_nesterov_wd", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.9, 1e-2, true)},
          {"sgd_dampening", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.8, 1e-3, false, 0.3)},
          {"adam", OptimizerKind::Adam, HyperParams::adam(1e-3, 1e-2, 0.8, 0.99, 1e-6)},
          {"adam_amsgrad", OptimizerKind::Adam, HyperParams::adam(1e-3, 0.0, 0.9, 0.999, 1e-8, true)},
          {"adamw", OptimizerKind::AdamW, HyperParams::adamw(1e-3)},
          {"adamw_amsgrad", OptimizerKind::AdamW, HyperParams::adamw(2e-3, 1e-2, 0.5, 0.9, 1e-8, true)}};
}

constexpr int kFrozen = 1, kLate = 3, kLateFrom = 5;

// Four small parameters in two groups (p1 frozen, p3 without gradient before step kLateFrom).
std::vector<Parameter> make_params(DType dt) {
  std::vector<Parameter> p;
  for (int k = 0; k < 4; ++k) p.emplace_back(Tensor::randn({3, 2}, 10 + k, dt), "p" + std::to_string(k), k != kFrozen);
  return p;
}
Optimizer make_optimizer(const Config& c, const std::vector<Parameter>& p) {
  ParamGroup body("body", {p[0], p[1]}), head("head", {p[2], p[3]}, c.h.lr * 10);
  return Optimizer(c.kind, {body, head}, c.h);
}
void set_grads(std::vector<Parameter>& p, int s) {
  for (int k = 0; k < 4; ++k)
    if (k != kLate || s >= kLateFrom) p[k].set_grad(Tensor::randn(p[k].shape(), 100 * s + k, p[k].value().dtype()));
}
// An lr that changes every step, differently per group (a cosine schedule and a step decay).
void schedule(Optimizer& opt, const Config& c, int s) {
  opt.set_lr(0, c.h.lr * 0.5 * (1.0 + std::cos(M_PI * s / 40.0)));
  opt.set_lr(1, c.h.lr * 10 * std::pow(0.7, s / 3));
}

// Every updated parameter's entry equals the coefficients computed from its own state, the pre-table way.
void expect_entries_are_the_direct_coefficients(const Config& c, const Optimizer& opt, const std::string& what) {
  for (size_t g = 0; g < opt.num_groups(); ++g) {
    const HyperParams& h = opt.group_hyper(g);
    for (size_t i = 0; i < opt.group_params(g).size(); ++i) {
      const std::optional<size_t> offset = opt.step_scalar_offset(g, i);
      if (!offset) continue;
      const ParamState& st = opt.state(g, i);
      const std::string at = what + " group " + std::to_string(g) + " param " + std::to_string(i);
      if (c.kind == OptimizerKind::SGD) {
        // first: this update created the momentum buffer (step 1 of a momentum SGD).
        const bool first = h.momentum != 0.0 && st.step == 1;
        EXPECT_TRUE(same(opt.step_scalars().at<kernels::SgdCoefficients>(*offset),
                         kernels::sgd_coefficients(h.lr, h.weight_decay, h.momentum, h.dampening, h.nesterov, first)))
            << at;
      } else {
        EXPECT_TRUE(same(opt.step_scalars().at<kernels::AdamCoefficients>(*offset),
                         kernels::adam_coefficients(h.lr, h.weight_decay, h.beta1, h.beta2, h.eps, st.step,
                                                    c.kind == OptimizerKind::AdamW, h.amsgrad)))
            << at;
      }
    }
  }
}

}  // namespace

TEST(StepScalars, TableEntriesAreAlignedAndReadBack) {
  StepScalars t;
  EXPECT_EQ(t.bytes(), 0u);
  const size_t a = t.add(kernels::sgd_coefficients(0.1, 0.0, 0.9, 0.0, false, true));
  const size_t b = t.add(int32_t{7});
  const size_t c = t.add(kernels::adam_coefficients(1e-3, 0.0, 0.9, 0.999, 1e-8, 3, false, false));
  EXPECT_EQ(a, 0u);
  EXPECT_EQ(b % StepScalars::kAlign, 0u);
  EXPECT_GT(b, a);
  EXPECT_EQ(c % StepScalars::kAlign, 0u);
  EXPECT_EQ(t.bytes(), c + sizeof(kernels::AdamCoefficients));
  EXPECT_TRUE(same(t.at<kernels::SgdCoefficients>(a), kernels::sgd_coefficients(0.1, 0.0, 0.9, 0.0, false, true)));
  EXPECT_EQ(t.at<int32_t>(b), 7);
  EXPECT_TRUE(same(t.at<kernels::AdamCoefficients>(c),
                   kernels::adam_coefficients(1e-3, 0.0, 0.9, 0.999, 1e-8, 3, false, false)));
  EXPECT_THROW(t.at<kernels::AdamCoefficients>(c + StepScalars::kAlign), ValueError);  // runs past the end
  EXPECT_THROW(t.at<int32_t>(b + 4), ValueError);                 // not an entry's start
  t.clear();
  EXPECT_EQ(t.bytes(), 0u);
  EXPECT_EQ(t.add(1.5), 0u);  // a new step's table starts at 0 again
  EXPECT_EQ(t.next_slot(), 0);
  EXPECT_EQ(t.uploads(), 0);
  EXPECT_EQ(t.device_generation(), 0);
}

TEST(Optim, StepScalarsEqualTheDirectCoefficientsBitForBit) {
  for (const Config& c : configs()) {
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string what = std::string(c.name) + (dt == DType::F32 ? ".f32" : ".f64");
      std::vector<Parameter> p = make_params(dt);
      Optimizer opt = make_optimizer(c, p);
      for (int s = 0; s < 40; ++s) {
        opt.zero_grad();
        set_grads(p, s);
        schedule(opt, c, s);
        opt.step();
        expect_entries_are_the_direct_coefficients(c, opt, what + " step " + std::to_string(s));
        EXPECT_FALSE(opt.step_scalar_offset(0, kFrozen).has_value()) << what;
        EXPECT_EQ(opt.step_scalar_offset(1, 1).has_value(), s >= kLateFrom) << what;
      }
      EXPECT_EQ(opt.state(1, 1).step, 40 - kLateFrom) << what;
    }
  }
}

TEST(Optim, ReplayStepDoesTheHostSideOfAStep) {
  for (const Config& c : configs()) {
    const std::string what = c.name;
    std::vector<Parameter> pa = make_params(DType::F32), pb = make_params(DType::F32);
    Optimizer a = make_optimizer(c, pa), b = make_optimizer(c, pb);
    constexpr int kEager = kLateFrom + 1;  // the late parameter's first update is eager (not in a replay)
    for (int s = 0; s < 30; ++s) {
      a.zero_grad();
      set_grads(pa, s);
      schedule(a, c, s);
      a.step();
      schedule(b, c, s);
      if (s < kEager) {
        b.zero_grad();
        set_grads(pb, s);
        b.step();
      } else {
        b.replay_step();  // the graph's kernels would update pb; the host side advances as a step would
      }
      for (size_t g = 0; g < 2; ++g)
        for (size_t i = 0; i < 2; ++i) {
          const std::string at = what + " step " + std::to_string(s) + " p" + std::to_string(g * 2 + i);
          ASSERT_EQ(b.state(g, i).step, a.state(g, i).step) << at;
          ASSERT_EQ(b.step_scalar_offset(g, i).has_value(), a.step_scalar_offset(g, i).has_value()) << at;
        }
      expect_entries_are_the_direct_coefficients(c, b, what + " replay " + std::to_string(s));
    }
    // A loaded state replaces the step counts: there is nothing to replay until the next step().
    b.load_state_dict(a.state_dict());
    b.replay_step();
    EXPECT_EQ(b.state(0, 0).step, a.state(0, 0).step) << what;
    EXPECT_FALSE(b.step_scalar_offset(0, 0).has_value()) << what;
  }
}
