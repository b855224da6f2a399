// Writes seed checkpoints for fuzz_checkpoint into the directory given as argv[1]: real optimizer (SGD with
// momentum, Adam with amsgrad, after one step) and scheduler state, saved by save_state_dict as `tlengine train`
// saves its last.ckpt, so the seeds follow the format as it is, not a copy of it.
#include <cstdio>
#include <string>

#include "core/autograd.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/state_dict.h"

using namespace tl;
using namespace tl::train;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int n = 0;
  for (const auto& kind : {OptimizerKind::SGD, OptimizerKind::Adam}) {
    std::vector<Parameter> ps = {Parameter(Tensor::randn({3}, 1), "a.weight"),
                                 Parameter(Tensor::randn({2, 2}, 2), "b.weight")};
    HyperParams h = kind == OptimizerKind::SGD ? HyperParams::sgd(0.1, 0.9) : HyperParams::adam(1e-3);
    h.amsgrad = kind == OptimizerKind::Adam;
    Optimizer opt(kind, {ParamGroup("all", ps)}, h);
    LRScheduler sched(opt, LRSchedule::cosine(10, 0.0, 2), 4);
    sched.apply(1, 2);
    for (Parameter& p : ps) p.set_grad(Tensor::randn(p.value().shape(), 3));
    opt.step();
    StateDict sd;
    sd.insert("optimizer.", opt.state_dict());
    sd.insert("scheduler.", sched.state_dict());
    sd.set_int("epoch", 1);
    sd.set_double("best_acc", 0.5);
    sd.set_bool("flag", true);
    save_state_dict(dir + "/seed" + std::to_string(n++) + ".ckpt", sd);
  }
  return 0;
}
