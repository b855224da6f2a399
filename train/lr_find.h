// `tlengine lr-find`: the learning-rate range test (L. Smith, "Cyclical Learning Rates", 2015), as fastai's
// `Learner.lr_find` runs it: the training job as `tlengine train` would set it up (data, model and weights, freeze
// plan, optimizer and its head/body groups, loss), trained for up to `num_it` steps with a learning rate growing
// exponentially from `start_lr` to `end_lr`, recording the loss after each step, smoothed (an exponential moving
// average with bias correction, beta 0.98), and stopping once the smoothed loss exceeds 4x its minimum. From the
// smoothed curve it suggests a learning rate: where it falls fastest ("steep"), and a tenth of where it is lowest
// ("minimum"). The model is built fresh for the search and thrown away: nothing is written back to the weights.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/image.h"
#include "train/trainer.h"

namespace tl::train {

struct LrFindOptions {
  TrainOptions train;  // the job (its lr, schedule, epochs and checkpoint options are not used); train.out: outputs
  double start_lr = 1e-7;  // the head's lr at the first step; the body's is this x the train options' body/head ratio
  double end_lr = 10;      // reached at step num_it (never run: the last step runs just below it)
  int num_it = 100;
  bool stop_div = true;  // stop when the smoothed loss exceeds 4x its minimum
};

// fastai's SchedExp: the lr of step `i` (0-based) of `num_it`: start * (end / start)^(i / num_it).
double lr_find_rate(double start_lr, double end_lr, int64_t step, int64_t num_it);

// fastai's AvgSmoothLoss: avg = beta * avg + (1 - beta) * loss, reported as avg / (1 - beta^count) (the bias of
// starting the average at 0 removed, so the first value is the first loss).
class SmoothedLoss {
 public:
  explicit SmoothedLoss(double beta = 0.98) : beta_(beta) {}
  double add(double loss);  // returns the smoothed value including `loss`

 private:
  double beta_, avg_ = 0, beta_pow_ = 1;
};

// fastai's suggestion functions over the smoothed curve, with the first num_it/10 points (the noisy start) and
// the last 5 (the divergence) left out, as fastai does. NaN (and index -1) when fewer than 2 points remain.
struct LrSuggestions {
  double steep = std::numeric_limits<double>::quiet_NaN();    // lr where d(loss)/d(log lr) is most negative
  double minimum = std::numeric_limits<double>::quiet_NaN();  // a tenth of the lr at the lowest loss
  int64_t steep_index = -1, min_index = -1;                   // the points they come from
};
LrSuggestions suggest_lrs(const std::vector<double>& lrs, const std::vector<double>& smoothed, int64_t num_it);

struct LrFindResult {
  std::vector<double> lrs, losses, smoothed;  // per step run: head lr, the batch's loss, the smoothed loss
  std::string stopped;  // why it ended: "num_it", "diverged" (smoothed > 4x min), "nonfinite", "interrupted"
  LrSuggestions suggestions;
  nlohmann::json to_json(const LrFindOptions& o) const;
};

// Runs the search and writes <out>/lr_find.png and <out>/lr_find.json; logs a short table, the suggestions and
// a `tlengine train` command line using them. The weights file is only read.
LrFindResult run_lr_find(const LrFindOptions& o, std::ostream& log);

// The loss (smoothed, and raw, faint) against the lr on a log axis, the suggestions as labelled discs.
io::Image render_lr_find(const LrFindResult& r);

}  // namespace tl::train
