// libFuzzer target: a training checkpoint (train/state_dict.h) read from memory and applied the way
// `tlengine train --resume` applies it: optimizer state (SGD with momentum, Adam with amsgrad) and the
// learning-rate scheduler. Each step must succeed or throw tl::Error.
#include <cstddef>
#include <cstdint>

#include "core/autograd.h"
#include "core/error.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/state_dict.h"

namespace {
using namespace tl;
using namespace tl::train;

std::vector<Parameter> params() {
  return {Parameter(Tensor::zeros({3}, DType::F32, Device::CPU), "a.weight"),
          Parameter(Tensor::zeros({2, 2}, DType::F32, Device::CPU), "b.weight")};
}

template <typename Fn>
void expect_ok_or_error(Fn&& fn) {
  try {
    fn();
  } catch (const tl::Error&) {
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  StateDict sd;
  try {
    sd = load_state_dict_memory(data, size, "fuzz-input");
  } catch (const tl::Error&) {
    return 0;
  }
  for (const auto& kind : {OptimizerKind::SGD, OptimizerKind::Adam}) {
    const HyperParams h = kind == OptimizerKind::SGD ? HyperParams::sgd(0.1, 0.9) : HyperParams::adam(1e-3);
    Optimizer opt(kind, {ParamGroup("all", params())}, h);
    expect_ok_or_error([&] { opt.load_state_dict(sd.extract("optimizer.")); });
    expect_ok_or_error([&] {
      LRScheduler sched(opt, LRSchedule::cosine(10, 0.0, 2), 4);
      sched.load_state_dict(sd.extract("scheduler."));
    });
  }
  expect_ok_or_error([&] { (void)sd.get_int("epoch"); });
  expect_ok_or_error([&] { (void)sd.get_double("best_acc"); });
  expect_ok_or_error([&] { (void)sd.get_bool("flag"); });
  return 0;
}
