// Optimizers and schedules: 10-step trajectories vs PyTorch 1.13 (two groups, a frozen parameter, a parameter
// without gradient for 3 steps), state-dict round trips (bit-identical resume, through a file), schedules vs
// PyTorch's schedulers, warmup, zero_grad, bad input, and the fused CUDA kernels vs the CPU.
#include <cmath>
#include <unistd.h>

#include <cstdio>

#include "train/optimizer.h"
#include "train/schedule.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;
using namespace tl::train;

namespace {

constexpr int kSteps = 10;
constexpr int kFrozen = 1, kLate = 3, kLateFrom = 3;  // as in tests/torch_ref/fx_optim.py

// The configurations of tests/torch_ref/fx_optim.py (CONFIGS): defaults, then body and head overrides.
struct Config {
  const char* name;
  OptimizerKind kind;
  HyperParams defaults;
  ParamGroup body, head;  // params filled in later
};
std::vector<Config> configs() {
  std::vector<Config> c;
  {
    Config k{"sgd_momentum", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.9), {}, {}};
    k.body.lr = 0.01;
    k.head.lr = 0.1;
    c.push_back(k);
  }
  {
    Config k{"sgd_nesterov_wd", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.9, 1e-2, true), {}, {}};
    k.body.lr = 0.01;
    k.head.lr = 0.1;
    k.head.weight_decay = 5e-4;
    c.push_back(k);
  }
  {
    Config k{"sgd_dampening", OptimizerKind::SGD, HyperParams::sgd(0.05, 0.8, 1e-3, false, 0.3), {}, {}};
    k.body.lr = 0.02;
    c.push_back(k);
  }
  {
    Config k{"adamw", OptimizerKind::AdamW, HyperParams::adamw(1e-3), {}, {}};
    k.body.weight_decay = 1e-2;
    k.head.lr = 1e-2;
    k.head.weight_decay = 0.1;
    c.push_back(k);
  }
  {
    Config k{"adam_wd", OptimizerKind::Adam, HyperParams::adam(1e-3, 1e-2, 0.8, 0.99, 1e-6), {}, {}};
    k.head.lr = 5e-3;
    k.head.weight_decay = 0.05;
    c.push_back(k);
  }
  {
    Config k{"adamw_amsgrad", OptimizerKind::AdamW, HyperParams::adamw(2e-3, 1e-2, 0.9, 0.999, 1e-8, true), {}, {}};
    k.head.lr = 1e-2;
    k.head.beta1 = 0.5;
    k.head.beta2 = 0.9;
    c.push_back(k);
  }
  return c;
}

std::string prefix(const Config& c, DType dt) { return std::string(c.name) + (dt == DType::F32 ? ".f32" : ".f64"); }

// The four parameters at their fixture values (p1 frozen), on `device`.
std::vector<Parameter> make_params(const Config& c, DType dt, Device device = Device::CPU) {
  const io::TensorFile& fx = fixture("optim");
  std::vector<Parameter> p;
  for (int k = 0; k < 4; ++k)
    p.emplace_back(fx.at(prefix(c, dt) + ".init.p" + std::to_string(k)).clone().to(device),
                   "p" + std::to_string(k), k != kFrozen);
  return p;
}

Optimizer make_optimizer(const Config& c, const std::vector<Parameter>& p) {
  ParamGroup body = c.body, head = c.head;
  body.name = "body";
  body.params = {p[0], p[1]};
  head.name = "head";
  head.params = {p[2], p[3]};
  return Optimizer(c.kind, {body, head}, c.defaults);
}

// Gives each parameter the fixture's gradient for step `s` (none for the frozen one and the late one early on).
void set_grads(const Config& c, DType dt, std::vector<Parameter>& p, int s) {
  const io::TensorFile& fx = fixture("optim");
  for (int k = 0; k < 4; ++k) {
    const std::string key = prefix(c, dt) + ".grad" + std::to_string(s) + ".p" + std::to_string(k);
    const bool has = k != kFrozen && !(k == kLate && s < kLateFrom);
    ASSERT_EQ(fx.has(key), has) << key;
    if (has) p[k].set_grad(fx.at(key).clone().to(p[k].value().device()));
  }
}

void expect_bit_identical(const Tensor& a, const Tensor& b, const std::string& what) {
  const std::vector<double> x = a.to_doubles(), y = b.to_doubles();
  ASSERT_EQ(x.size(), y.size()) << what;
  size_t diff = 0;
  for (size_t i = 0; i < x.size(); ++i) diff += x[i] != y[i];
  EXPECT_EQ(diff, 0u) << what << ": " << diff << " of " << x.size() << " values differ";
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "tl_optim_" + std::to_string(::getpid()) + "_" + name;
}
}  // namespace

TEST(Optim, TrajectoriesMatchPyTorch) {
  const io::TensorFile& fx = fixture("optim");
  for (const Config& c : configs()) {
    for (DType dt : {DType::F32, DType::F64}) {
      const double tol = dt == DType::F32 ? 1e-6 : 1e-12;
      std::vector<Parameter> p = make_params(c, dt);
      Optimizer opt = make_optimizer(c, p);
      for (int s = 0; s < kSteps; ++s) {
        opt.zero_grad();
        set_grads(c, dt, p, s);
        if (s == 0) p[kFrozen].set_grad(Tensor::full(p[kFrozen].shape(), 1.0, dt));  // frozen: skipped anyway
        opt.step();
        for (int k = 0; k < 4; ++k) {
          const std::string key = prefix(c, dt) + ".after" + std::to_string(s) + ".p" + std::to_string(k);
          expect_close(p[k].value(), fx.at(key), tol, key);
        }
      }
      const std::string what = prefix(c, dt);
      expect_bit_identical(p[kFrozen].value(), fx.at(what + ".init.p1"), what + " frozen parameter");
      EXPECT_EQ(opt.state(0, 0).step, kSteps) << what;
      EXPECT_EQ(opt.state(0, 1).step, 0) << what << ": the frozen parameter has no state";
      EXPECT_FALSE(opt.state(0, 1).exp_avg.defined() || opt.state(0, 1).momentum_buffer.defined()) << what;
      EXPECT_EQ(opt.state(1, 1).step, kSteps - kLateFrom) << what << ": skipped while it had no gradient";
    }
  }
}

TEST(Optim, StateDictRoundTripIsBitIdentical) {
  for (const Config& c : configs()) {
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string what = prefix(c, dt);
      // Uninterrupted: 10 steps, with the body lr changed after step 2 (as a schedule would).
      std::vector<Parameter> a = make_params(c, dt);
      Optimizer opt_a = make_optimizer(c, a);
      for (int s = 0; s < kSteps; ++s) {
        if (s == 3) opt_a.set_lr(0, opt_a.lr(0) * 0.5);
        opt_a.zero_grad();
        set_grads(c, dt, a, s);
        opt_a.step();
      }
      // Interrupted after 5 steps: save parameters and optimizer to a file, load into fresh objects.
      std::vector<Parameter> b = make_params(c, dt);
      Optimizer opt_b = make_optimizer(c, b);
      for (int s = 0; s < 5; ++s) {
        if (s == 3) opt_b.set_lr(0, opt_b.lr(0) * 0.5);
        opt_b.zero_grad();
        set_grads(c, dt, b, s);
        opt_b.step();
      }
      StateDict saved;
      saved.insert("optimizer.", opt_b.state_dict());
      for (int k = 0; k < 4; ++k) saved.tensors["model.p" + std::to_string(k)] = b[k].value().clone();
      const std::string path = temp_path(what + ".safetensors");
      save_state_dict(path, saved);
      const StateDict loaded = load_state_dict(path);
      std::remove(path.c_str());

      std::vector<Parameter> r = make_params(c, dt);  // fresh, at the initial values, then restored
      for (int k = 0; k < 4; ++k) r[k].mutable_value().copy_(loaded.get_tensor("model.p" + std::to_string(k)));
      Optimizer opt_r = make_optimizer(c, r);
      opt_r.load_state_dict(loaded.extract("optimizer."));
      EXPECT_EQ(opt_r.lr(0), opt_b.lr(0)) << what << ": the changed lr is restored";
      for (int s = 5; s < kSteps; ++s) {
        opt_r.zero_grad();
        set_grads(c, dt, r, s);
        opt_r.step();
      }
      for (int k = 0; k < 4; ++k) expect_bit_identical(r[k].value(), a[k].value(), what + " p" + std::to_string(k));
      for (size_t g = 0; g < 2; ++g)
        for (size_t i = 0; i < 2; ++i) EXPECT_EQ(opt_r.state(g, i).step, opt_a.state(g, i).step) << what;
    }
  }
}

TEST(Optim, StateDictContents) {
  const Config c = configs()[5];  // adamw_amsgrad
  std::vector<Parameter> p = make_params(c, DType::F32);
  Optimizer opt = make_optimizer(c, p);
  set_grads(c, DType::F32, p, 0);
  opt.step();
  const StateDict sd = opt.state_dict();
  EXPECT_EQ(sd.get_string("kind"), "adamw");
  EXPECT_EQ(sd.get_int("num_groups"), 2);
  EXPECT_EQ(sd.get_string("group.1.name"), "head");
  EXPECT_EQ(sd.get_double("group.1.lr"), 1e-2);
  EXPECT_EQ(sd.get_double("group.1.beta1"), 0.5);
  EXPECT_TRUE(sd.get_bool("group.0.amsgrad"));
  EXPECT_EQ(sd.get_string("group.1.param.0.name"), "p2");
  EXPECT_EQ(sd.get_int("state.0.0.step"), 1);
  EXPECT_EQ(sd.get_int("state.1.1.step"), 0);
  EXPECT_TRUE(sd.has_tensor("state.0.0.exp_avg") && sd.has_tensor("state.0.0.max_exp_avg_sq"));
  EXPECT_FALSE(sd.has_tensor("state.0.1.exp_avg")) << "frozen: no state";
  EXPECT_FALSE(sd.has_tensor("state.1.1.exp_avg")) << "no gradient yet: no state";
  // The dict owns copies: a later step does not change it.
  const std::vector<double> before = sd.get_tensor("state.0.0.exp_avg").to_doubles();
  set_grads(c, DType::F32, p, 1);
  opt.step();
  EXPECT_EQ(sd.get_tensor("state.0.0.exp_avg").to_doubles(), before);
  // Values round-trip exactly through text.
  StateDict v;
  v.set_double("x", 0.1 * 3);
  v.set_double("tiny", 4.9e-324);
  EXPECT_EQ(v.get_double("x"), 0.1 * 3);
  EXPECT_EQ(v.get_double("tiny"), 4.9e-324);
}

// The step in parts (data-parallel: bucket by bucket, train/data_parallel.h) against step(), every configuration,
// float32 and float64, 10 steps: the same weights, state and step counts, to the bit. The parts name the frozen
// parameter (skipped) and leave p2 to the last part; p3 has no gradient for 3 steps (skipped, no state). The
// parts run out of order, and each gradient gets its values only after begin_parts() (as a bucket's mean arrives
// after the plan), so the plan must not read them.
TEST(Optim, StepInPartsIsBitIdenticalToStep) {
  for (const Config& c : configs()) {
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string what = prefix(c, dt);
      std::vector<Parameter> a = make_params(c, dt), b = make_params(c, dt);
      Optimizer opt_a = make_optimizer(c, a), opt_b = make_optimizer(c, b);
      std::vector<std::vector<Optimizer::ParamSlot>> parts(2);
      for (int k : {3, 1}) parts[0].push_back(*opt_b.slot_of(b[k]));
      parts[1].push_back(*opt_b.slot_of(b[0]));
      EXPECT_FALSE(opt_b.slot_of(Parameter(Tensor::zeros({1}), "other")).has_value());
      for (int s = 0; s < kSteps; ++s) {
        if (s == 3) opt_a.set_lr(0, opt_a.lr(0) * 0.5), opt_b.set_lr(0, opt_b.lr(0) * 0.5);
        opt_a.zero_grad();
        set_grads(c, dt, a, s);
        opt_a.step();
        opt_b.zero_grad();
        set_grads(c, dt, b, s);
        std::vector<Tensor> right;  // the gradients' values, written after the plan
        for (Parameter& p : b) {
          right.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
          if (p.grad().defined()) {
            Tensor g = p.grad();  // shares the storage
            g.fill_(1e3);         // the plan must not read the values
          }
        }
        opt_b.begin_parts(parts);
        ASSERT_EQ(opt_b.num_parts(), 3u);
        for (size_t k = 0; k < b.size(); ++k)
          if (right[k].defined()) {
            Tensor g = b[k].grad();
            g.copy_(right[k]);
          }
        for (size_t part : {2, 0, 1}) opt_b.step_part(part);
      }
      for (int k = 0; k < 4; ++k) expect_bit_identical(b[k].value(), a[k].value(), what + " p" + std::to_string(k));
      const StateDict sa = opt_a.state_dict(), sb = opt_b.state_dict();
      ASSERT_EQ(sa.tensors.size(), sb.tensors.size()) << what;
      for (const auto& [key, t] : sa.tensors) expect_bit_identical(sb.tensors.at(key), t, what + " " + key);
      for (size_t g = 0; g < 2; ++g)
        for (size_t i = 0; i < 2; ++i) EXPECT_EQ(opt_b.state(g, i).step, opt_a.state(g, i).step) << what;
      EXPECT_EQ(opt_b.state(1, 1).step, kSteps - kLateFrom) << what;
    }
  }
}

// Misuse of the parts: a parameter named twice, a slot that does not exist, a part that was not planned.
TEST(Optim, StepInPartsRefusesMisuse) {
  const Config c = configs().front();
  std::vector<Parameter> p = make_params(c, DType::F32);
  Optimizer opt = make_optimizer(c, p);
  const Optimizer::ParamSlot s0 = *opt.slot_of(p[0]);
  EXPECT_TRUE(contains(error_of([&] { opt.begin_parts({{s0}, {s0}}); }), "is named by parts 0 and 1"));
  EXPECT_TRUE(contains(error_of([&] { opt.begin_parts({{Optimizer::ParamSlot{0, 7}}}); }), "does not exist"));
  opt.begin_parts({{s0}});
  EXPECT_TRUE(contains(error_of([&] { opt.step_part(2); }), "planned in 2 part(s)"));
}

TEST(Optim, ZeroGradSetsNoneAndStepWithoutGradientsDoesNothing) {
  const Config c = configs()[0];
  std::vector<Parameter> p = make_params(c, DType::F64);
  Optimizer opt = make_optimizer(c, p);
  set_grads(c, DType::F64, p, 0);
  opt.step();
  opt.zero_grad();
  for (const Parameter& q : p) EXPECT_FALSE(q.grad().defined());
  std::vector<std::vector<double>> before;
  for (const Parameter& q : p) before.push_back(q.value().to_doubles());
  opt.step();
  for (size_t k = 0; k < p.size(); ++k) EXPECT_EQ(p[k].value().to_doubles(), before[k]);
  EXPECT_EQ(opt.state(0, 0).step, 1);
}

TEST(Optim, SchedulesMatchPyTorch) {
  const io::TensorFile& fx = fixture("optim");
  const std::pair<const char*, LRSchedule> cases[] = {
      {"step", LRSchedule::step(7, 0.1)},
      {"multistep", LRSchedule::multi_step({5, 12, 12, 20}, 0.5)},
      {"cosine", LRSchedule::cosine(10, 1e-4)},
      {"cosine_long", LRSchedule::cosine(40, 0.0)},
  };
  for (const auto& [name, schedule] : cases) {
    const std::vector<double> ref = fx.at(std::string("sched.") + name).to_doubles();  // (30, 2)
    ASSERT_EQ(ref.size(), 60u);
    Parameter a(Tensor::zeros({1}), "a"), b(Tensor::zeros({1}), "b");
    ParamGroup g0{"g0", {a}}, g1{"g1", {b}};
    g0.lr = 0.1;
    g1.lr = 0.01;
    Optimizer opt(OptimizerKind::SGD, {g0, g1}, HyperParams::sgd(0.1, 0.9));
    LRScheduler sched(opt, schedule);
    for (int e = 0; e < 30; ++e) {
      sched.apply(e);
      // Bit-identical: the chainable recurrence is replayed with PyTorch's operations.
      EXPECT_EQ(opt.lr(0), ref[e * 2]) << name << " epoch " << e;
      EXPECT_EQ(opt.lr(1), ref[e * 2 + 1]) << name << " epoch " << e;
    }
  }
  // The closed form differs in the last bits at epoch 28 of StepLR(7): the test above tells them apart.
  EXPECT_NE(0.1 * 0.1 * 0.1 * 0.1 * 0.1, 0.1 * std::pow(0.1, 4.0));
  EXPECT_EQ(LRSchedule::step(7, 0.1).lr_at(0.1, 28), 0.1 * 0.1 * 0.1 * 0.1 * 0.1);
  // A milestone at epoch 0 applies at once, as in PyTorch.
  EXPECT_EQ(LRSchedule::multi_step({0}, 0.5).lr_at(1.0, 0), 0.5);
}

TEST(Optim, CosineWarmup) {
  const LRSchedule s = LRSchedule::cosine(5, 1e-3, 2);
  EXPECT_TRUE(s.per_step());
  const int spe = 4;
  double prev = 0.0;
  for (int e = 0; e < 2; ++e)
    for (int st = 0; st < spe; ++st) {
      const double lr = s.lr_at(0.1, e, st, spe);
      EXPECT_DOUBLE_EQ(lr, 0.1 * (e * spe + st + 1) / (2 * spe)) << e << "/" << st;
      EXPECT_GT(lr, prev);
      prev = lr;
    }
  EXPECT_EQ(s.lr_at(0.1, 1, spe - 1, spe), 0.1) << "warmup ends at the base lr";
  EXPECT_EQ(s.lr_at(0.1, 2, 3, spe), 0.1) << "cosine epoch 0, constant within the epoch";
  for (int e = 2; e <= 7; ++e) {
    const double closed = 1e-3 + (0.1 - 1e-3) * (1 + std::cos(M_PI * (e - 2) / 5)) / 2;
    EXPECT_NEAR(s.lr_at(0.1, e, 0, spe), closed, 1e-15) << e;
  }
  EXPECT_NEAR(s.lr_at(0.1, 7, 0, spe), 1e-3, 1e-15) << "min_lr after t_max cosine epochs";
  // Without warmup it is CosineAnnealingLR, whatever the step.
  const LRSchedule plain = LRSchedule::cosine(10, 1e-4);
  EXPECT_FALSE(plain.per_step());
  EXPECT_EQ(plain.lr_at(0.1, 3, 5, 8), plain.lr_at(0.1, 3));
}

TEST(Optim, SchedulerStateRoundTrip) {
  Parameter a(Tensor::zeros({2}), "a"), b(Tensor::zeros({2}), "b");
  ParamGroup g0{"body", {a}}, g1{"head", {b}};
  g1.lr = 0.01;
  Optimizer opt(OptimizerKind::Adam, {g0, g1}, HyperParams::adam(0.001));
  LRScheduler sched(opt, LRSchedule::cosine(20, 1e-5, 3), 7);
  sched.apply(9, 0);
  const std::vector<double> at9 = sched.last_lrs();
  sched.apply(10, 0);
  const std::vector<double> at10 = sched.last_lrs();
  sched.apply(9, 0);
  const StateDict sd = sched.state_dict();

  // Resume: the optimizer comes back with the last lrs; the scheduler must still know the base lrs.
  Optimizer opt2(OptimizerKind::Adam, {g0, g1}, HyperParams::adam(0.001));
  opt2.load_state_dict(opt.state_dict());
  LRScheduler sched2(opt2, LRSchedule::cosine(20, 1e-5, 3), 7);
  sched2.load_state_dict(sd);
  EXPECT_EQ(sched2.base_lrs(), sched.base_lrs());
  EXPECT_EQ(sched2.epoch(), 9);
  EXPECT_EQ(sched2.last_lrs(), at9);
  sched2.apply(10, 0);
  EXPECT_EQ(sched2.last_lrs(), at10);

  // A different schedule or steps per epoch is refused with what differs.
  LRScheduler other(opt2, LRSchedule::step(7, 0.1), 7);
  EXPECT_TRUE(contains(error_of([&] { other.load_state_dict(sd); }), "StepLR")) << error_of([&] {
    other.load_state_dict(sd);
  });
  LRScheduler other_spe(opt2, LRSchedule::cosine(20, 1e-5, 3), 8);
  EXPECT_TRUE(contains(error_of([&] { other_spe.load_state_dict(sd); }), "steps per epoch"));
}

TEST(Optim, BadInput) {
  Parameter w(Tensor::randn({3, 2}, 1), "fc.weight"), bias(Tensor::randn({3}, 2), "fc.bias");
  auto make = [&](OptimizerKind kind, HyperParams h) { return Optimizer(kind, {ParamGroup{"head", {w, bias}}}, h); };
  // Hyper-parameters, as torch.optim checks them.
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::SGD, HyperParams::sgd(-0.1)); }), "learning rate"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::SGD, HyperParams::sgd(0.1, -0.9)); }), "momentum"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::SGD, HyperParams::sgd(0.1, 0.0, 0.0, true)); }),
                       "Nesterov"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::SGD, HyperParams::sgd(0.1, 0.9, -1e-4)); }),
                       "weight_decay"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::Adam, HyperParams::adam(1e-3, 0.0, 1.0)); }), "beta1"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::AdamW, HyperParams::adamw(1e-3, 0.0, 0.9, -0.1)); }),
                       "beta2"));
  EXPECT_TRUE(contains(error_of([&] { make(OptimizerKind::Adam, HyperParams::adam(1e-3, 0, 0.9, 0.999, -1)); }),
                       "eps"));
  // Groups and parameters.
  EXPECT_TRUE(contains(error_of([&] { Optimizer(OptimizerKind::SGD, {}, HyperParams::sgd(0.1)); }),
                       "no parameter groups"));
  EXPECT_TRUE(contains(error_of([&] {
                         Optimizer(OptimizerKind::SGD, {ParamGroup{"body", {}}}, HyperParams::sgd(0.1));
                       }),
                       "group 'body' has no parameters"));
  const std::string dup = error_of([&] {
    Optimizer(OptimizerKind::SGD, {ParamGroup{"body", {w}}, ParamGroup{"head", {w, bias}}}, HyperParams::sgd(0.1));
  });
  EXPECT_TRUE(contains(dup, "'fc.weight' appears in more than one")) << dup;
  Parameter half(Tensor::zeros({2}, DType::BF16), "bf");
  EXPECT_TRUE(contains(error_of([&] { Optimizer(OptimizerKind::SGD, {ParamGroup{"g", {half}}}, HyperParams::sgd(1)); }),
                       "'bf' is bfloat16"));
  EXPECT_TRUE(contains(error_of([] { parse_optimizer_kind("rmsprop"); }), "choose sgd, adam or adamw"));
  EXPECT_EQ(parse_optimizer_kind("AdamW"), OptimizerKind::AdamW);
  // A gradient of the wrong dtype is named at step(), before any parameter changed.
  {
    Optimizer opt = make(OptimizerKind::SGD, HyperParams::sgd(0.1));
    w.set_grad(Tensor::full({3, 2}, 1.0));  // w comes first in the group and is fine
    bias.set_grad(Tensor::zeros({3}, DType::F64));
    const std::vector<double> w_before = w.value().to_doubles();
    const std::string e = error_of([&] { opt.step(); });
    EXPECT_TRUE(contains(e, "gradient of parameter 'fc.bias'")) << e;
    EXPECT_EQ(w.value().to_doubles(), w_before);
    EXPECT_EQ(opt.state(0, 0).step, 0);
    w.zero_grad();
    bias.zero_grad();
    EXPECT_TRUE(contains(error_of([&] { opt.set_lr(0, -1.0); }), "invalid learning rate"));
  }
  // Schedules.
  EXPECT_TRUE(contains(error_of([] { LRSchedule::step(0); }), "step_size"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::step(3, 0.0); }), "gamma"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::multi_step({3, -1}); }), "milestone -1"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::cosine(0); }), "t_max"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::cosine(5, -1.0); }), "min_lr"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::cosine(5, 0.0, -2); }), "warmup_epochs"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::step(3).lr_at(0.1, -1); }), "negative"));
  EXPECT_TRUE(contains(error_of([] { LRSchedule::cosine(3, 0, 1).lr_at(0.1, 0, 4, 4); }), "step 4"));
  // State files.
  const std::string missing = error_of([] { load_state_dict("/nonexistent/dir/ckpt.safetensors"); });
  EXPECT_TRUE(contains(missing, "/nonexistent/dir/ckpt.safetensors")) << missing;
  StateDict bad;
  bad.set_string("n", "12x");
  EXPECT_TRUE(contains(error_of([&] { bad.get_int("n"); }), "'n' = '12x' is not an integer"));
  EXPECT_TRUE(contains(error_of([&] { bad.get_double("absent"); }), "no value 'absent'"));
}

TEST(Optim, LoadStateDictMismatchesLeaveOptimizerUnchanged) {
  const Config c = configs()[3];  // adamw
  std::vector<Parameter> p = make_params(c, DType::F32);
  Optimizer opt = make_optimizer(c, p);
  set_grads(c, DType::F32, p, 0);
  opt.step();
  const StateDict good = opt.state_dict();

  std::vector<Parameter> q = make_params(c, DType::F32);
  Optimizer fresh = make_optimizer(c, q);
  auto expect_refused = [&](const StateDict& sd, const std::string& part) {
    const std::string e = error_of([&] { fresh.load_state_dict(sd); });
    EXPECT_TRUE(contains(e, part)) << "expected '" << part << "' in: " << e;
    EXPECT_EQ(fresh.state(0, 0).step, 0) << "unchanged after a refused load";
    EXPECT_EQ(fresh.lr(1), 1e-2);
  };
  {
    StateDict sd = good;
    sd.set_string("kind", "sgd");
    expect_refused(sd, "holds 'sgd' optimizer state");
  }
  {
    StateDict sd = good;
    sd.set_int("num_groups", 3);
    expect_refused(sd, "3 parameter groups");
  }
  {
    StateDict sd = good;
    sd.set_string("group.1.param.0.name", "classifier.weight");
    expect_refused(sd, "'classifier.weight' in the checkpoint but 'p2' here");
  }
  {
    StateDict sd = good;
    sd.tensors["state.1.0.exp_avg"] = Tensor::zeros({5, 3});
    expect_refused(sd, "has shape [5, 3]");
  }
  {
    StateDict sd = good;
    sd.tensors.erase("state.0.0.exp_avg_sq");
    expect_refused(sd, "lacks its exp_avg");
  }
  {
    StateDict sd = good;
    sd.set_double("group.0.lr", -1.0);
    expect_refused(sd, "invalid learning rate");
  }
  {
    StateDict sd = good;
    sd.values.erase("state.1.0.step");
    expect_refused(sd, "no value 'state.1.0.step'");
  }
  fresh.load_state_dict(good);
  EXPECT_EQ(fresh.state(0, 0).step, 1);
}

TEST(Optim, CudaMatchesCpu) {
  TL_REQUIRE_CUDA();
  for (const Config& c : configs()) {
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string what = prefix(c, dt);
      const double tol = dt == DType::F32 ? 1e-5 : 1e-12;
      std::vector<Parameter> cpu = make_params(c, dt), gpu = make_params(c, dt, Device::CUDA);
      // A parameter spanning several chunks, and a channels-last one, in the head group.
      for (int k = 0; k < 2; ++k) {
        const Tensor v = k == 0 ? Tensor::randn({3 * 8192 + 5}, 7, dt) : Tensor::randn({4, 3, 5, 6}, 8, dt);
        cpu.emplace_back(v.clone(), "extra" + std::to_string(k));
        gpu.emplace_back(v.to(Device::CUDA, dt, k == 1 ? Layout::NHWC : Layout::NCHW), "extra" + std::to_string(k));
      }
      auto build = [&](std::vector<Parameter>& p) {
        ParamGroup body = c.body, head = c.head;
        body.params = {p[0], p[1]};
        head.params = {p[2], p[3], p[4], p[5]};
        return Optimizer(c.kind, {body, head}, c.defaults);
      };
      Optimizer oc = build(cpu), og = build(gpu);
      for (int s = 0; s < kSteps; ++s) {
        oc.zero_grad();
        og.zero_grad();
        set_grads(c, dt, cpu, s);
        set_grads(c, dt, gpu, s);
        for (int k = 4; k < 6; ++k) {
          const Tensor g = Tensor::randn(cpu[k].shape(), 100 + s * 2 + k, dt);
          cpu[k].set_grad(g);
          gpu[k].set_grad(g.to(Device::CUDA, dt, gpu[k].value().layout()));
        }
        oc.set_lr(1, oc.lr(1) * 0.9);  // the lr changes every step: no table rebuild
        og.set_lr(1, og.lr(1) * 0.9);
        oc.step();
        og.step();
      }
      for (size_t k = 0; k < cpu.size(); ++k)
        expect_close(gpu[k].value().to(Device::CPU), cpu[k].value(), tol, what + " " + cpu[k].name());
      // Launches: body 1 per step; head 1 per step, 2 from step 3 on while the late parameter's step count
      // differs from the others'. Tables: uploaded when the partition changed, not every step.
      const Optimizer::CudaStats& st = og.cuda_stats();
      EXPECT_EQ(st.launches, 10 + 10 + (c.kind == OptimizerKind::SGD ? 1 : 7)) << what;
      EXPECT_LE(st.table_uploads, 8) << what;
    }
  }
}

TEST(Optim, CudaResumeIsBitIdentical) {
  TL_REQUIRE_CUDA();
  const Config c = configs()[5];  // adamw_amsgrad
  const DType dt = DType::F32;
  std::vector<Parameter> a = make_params(c, dt, Device::CUDA), b = make_params(c, dt, Device::CUDA);
  Optimizer oa = make_optimizer(c, a), ob = make_optimizer(c, b);
  for (int s = 0; s < kSteps; ++s) {
    oa.zero_grad();
    set_grads(c, dt, a, s);
    oa.step();
  }
  for (int s = 0; s < 5; ++s) {
    ob.zero_grad();
    set_grads(c, dt, b, s);
    ob.step();
  }
  const StateDict sd = ob.state_dict();
  std::vector<Parameter> r = make_params(c, dt, Device::CUDA);
  for (int k = 0; k < 4; ++k) r[k].mutable_value().copy_(b[k].value());
  Optimizer orr = make_optimizer(c, r);
  orr.load_state_dict(sd);
  for (int s = 5; s < kSteps; ++s) {
    orr.zero_grad();
    set_grads(c, dt, r, s);
    orr.step();
  }
  for (int k = 0; k < 4; ++k) expect_bit_identical(r[k].value(), a[k].value(), "cuda resume p" + std::to_string(k));
}
