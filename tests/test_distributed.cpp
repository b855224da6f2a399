// Data-parallel training (core/distributed.h, train/data_parallel.h, io::LoaderOptions rank / world_size): the
// DistributedSampler split of each epoch's order, the single-process facade (no MPI), the gradient buckets, and,
// when mpirun is on PATH and the engine was built with MPI, end to end through the CLI: 2 processes x batch B give
// the losses and weights of 1 process x batch 2B, and a rank that hangs makes the other time out, after which a
// single-process --resume finishes the run.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/memory.h"
#include "core/distributed.h"
#include "core/nccl.h"
#include "io/loader.h"
#include "io/synthetic.h"
#include "layers/batchnorm.h"
#include "layers/elementwise.h"
#include "layers/loss.h"
#include "models/registry.h"
#include "train/data_parallel.h"
#include "train/freeze.h"
#include "train/optimizer.h"
#include "train/state_dict.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;
namespace fs = std::filesystem;

namespace {

std::vector<io::Sample> fake_samples(int n) {  // epoch_order never opens the files
  std::vector<io::Sample> s;
  for (int i = 0; i < n; ++i) s.push_back({"img" + std::to_string(i) + ".png", i % 2});
  return s;
}
io::LoaderOptions share_options(int rank, int world, bool pad, bool shuffle = true) {
  io::LoaderOptions o;
  o.batch_size = 2;
  o.num_workers = 1;
  o.shuffle = shuffle;
  o.seed = 7;
  o.rank = rank;
  o.world_size = world;
  o.pad_shares = pad;
  return o;
}
std::vector<int64_t> share(int n, int rank, int world, bool pad, int64_t epoch, bool shuffle = true) {
  io::DataLoader l(fake_samples(n), io::eval_resize_transform(8), share_options(rank, world, pad, shuffle));
  return l.epoch_order(epoch);
}

}  // namespace

// PyTorch's DistributedSampler on 5 samples, 2 ranks, no shuffle: [0, 2, 4] and [1, 3, 0] (padded with sample 0).
TEST(DistributedSampler, MatchesPyTorchsSplit) {
  EXPECT_EQ(share(5, 0, 2, true, 0, false), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(share(5, 1, 2, true, 0, false), (std::vector<int64_t>{1, 3, 0}));
  // More padding than samples per rank: 2 samples over 5 ranks repeat the order from its start.
  for (int r = 0; r < 5; ++r) EXPECT_EQ(share(2, r, 5, true, 0, false), (std::vector<int64_t>{r % 2})) << r;
}

TEST(DistributedSampler, PaddedSharesInterleaveTheSameShuffledOrder) {
  const int n = 10, world = 3;
  for (int64_t epoch : {0, 1, 5}) {
    const std::vector<int64_t> full = share(n, 0, 1, true, epoch);
    std::multiset<int64_t> all;
    for (int r = 0; r < world; ++r) {
      io::DataLoader l(fake_samples(n), io::eval_resize_transform(8), share_options(r, world, true));
      const std::vector<int64_t> s = l.epoch_order(epoch);
      ASSERT_EQ(s.size(), 4u) << "ceil(10 / 3) samples on every rank";
      EXPECT_EQ(l.epoch_size(), 4);
      EXPECT_EQ(l.batches_per_epoch(), 2);
      for (size_t k = 0; k < s.size(); ++k) EXPECT_EQ(s[k], full[(r + world * k) % n]) << "rank " << r << " pos " << k;
      EXPECT_EQ(s, share(n, r, world, true, epoch)) << "another process of the same rank: the same share";
      all.insert(s.begin(), s.end());
    }
    // The union is every sample, and only the 2 padding positions (the order's first 2) repeat.
    EXPECT_EQ(std::set<int64_t>(all.begin(), all.end()).size(), size_t(n));
    EXPECT_EQ(all.size(), size_t(12));
    EXPECT_EQ(all.count(full[0]), 2u);
    EXPECT_EQ(all.count(full[1]), 2u);
  }
  EXPECT_NE(share(n, 0, 1, true, 0), share(n, 0, 1, true, 1)) << "a new order each epoch";
}

TEST(DistributedSampler, UnpaddedSharesHoldEachSampleOnce) {
  const int n = 10, world = 4;
  std::multiset<int64_t> all;
  std::vector<size_t> sizes;
  for (int r = 0; r < world; ++r) {
    io::DataLoader l(fake_samples(n), io::eval_resize_transform(8), share_options(r, world, false));
    const std::vector<int64_t> s = l.epoch_order(3);
    EXPECT_EQ(l.epoch_size(), static_cast<int64_t>(s.size()));
    sizes.push_back(s.size());
    all.insert(s.begin(), s.end());
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 2, 2}));
  EXPECT_EQ(all.size(), size_t(n));
  EXPECT_EQ(std::set<int64_t>(all.begin(), all.end()).size(), size_t(n)) << "disjoint, and together every sample";
}

TEST(DistributedSampler, LoaderBatchesHoldItsShare) {
  const std::string d = scratch_dir("dist_loader");
  io::SyntheticOptions so;
  so.num_classes = 2;
  so.train_per_class = 7;  // 14 images over 3 ranks: 5 each with padding
  so.val_per_class = 0;
  so.min_side = 24;
  so.max_side = 32;
  io::write_synthetic_image_folder(d, so);
  const io::ImageFolder folder = io::scan_image_folder(d + "/train");
  io::LoaderOptions o = share_options(2, 3, true);
  o.num_workers = 2;
  io::DataLoader l(folder.samples, io::eval_resize_transform(16), o);
  for (int64_t epoch : {0, 1}) {
    std::vector<int64_t> got;
    l.start_epoch(epoch);
    while (const io::Batch* b = l.next()) got.insert(got.end(), b->samples, b->samples + b->size);
    EXPECT_EQ(got, l.epoch_order(epoch));
    EXPECT_EQ(got.size(), 5u);
  }
  o.rank = 3;
  EXPECT_THROW(io::DataLoader(folder.samples, io::eval_resize_transform(16), o), ValueError);
}

TEST(Distributed, SingleProcessNeedsNoMpi) {
  const Distributed d;
  EXPECT_EQ(d.rank(), 0);
  EXPECT_EQ(d.world_size(), 1);
  EXPECT_TRUE(d.is_main());
  Tensor t = Tensor::from_values({1.5, -2}, {2});
  d.all_reduce_sum(t, "test");
  d.broadcast(t, 0, "test");
  d.barrier("test");
  d.abort(1);  // one process: returns
  EXPECT_EQ(t.to_doubles(), (std::vector<double>{1.5, -2}));
  std::vector<double> v = {3, 4};
  d.all_reduce_sum(v, "test");
  EXPECT_EQ(v, (std::vector<double>{3, 4}));
  EXPECT_THROW(d.broadcast(t, 1, "test"), ValueError);
  if (launch_info_from_env().world_size == 1) {  // not itself run under mpirun
    const Distributed e = Distributed::from_env(5);
    EXPECT_EQ(e.world_size(), 1);
    EXPECT_EQ(e.timeout_s(), 5);
  }
  EXPECT_THROW(Distributed::from_env(0), ValueError);
}

TEST(Distributed, LaunchInfoFromTheEnvironment) {
  static std::map<std::string, std::string> env;
  auto get = [](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  env = {};
  EXPECT_EQ(launch_info_from_env(get).world_size, 1);
  EXPECT_EQ(launch_info_from_env(get).launcher, "");
  env = {{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}};
  LaunchInfo li = launch_info_from_env(get);
  EXPECT_EQ(li.world_size, 4);
  EXPECT_EQ(li.rank, 3);
  EXPECT_EQ(li.local_rank, 1);
  EXPECT_EQ(li.launcher, "OpenMPI");
  env = {{"PMI_SIZE", "2"}, {"PMI_RANK", "1"}};
  li = launch_info_from_env(get);
  EXPECT_EQ(li.world_size, 2);
  EXPECT_EQ(li.rank, 1);
  EXPECT_EQ(li.launcher, "PMI");
  env = {{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "2"}};
  EXPECT_THROW(launch_info_from_env(get), ValueError);
  env = {{"OMPI_COMM_WORLD_SIZE", "two"}};
  EXPECT_THROW(launch_info_from_env(get), ValueError);
}

// A build without MPI launched as one of several ranks (the launcher's variables set by hand): refused, saying how to
// get MPI. With MPI, those variables without a real launcher would make MPI_Init fail, so this runs only without it
// (the minimal build of .ci/run).
TEST(Distributed, BuildWithoutMpiRefusesSeveralRanks) {
  if (Distributed::built_with_mpi()) GTEST_SKIP() << "built with MPI: the refusal is the build without it";
  const std::string d = scratch_dir("dist_nompi");
  std::string log;
  EXPECT_NE(run_command("OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 " + std::string(TL_CLI) + " train --data " + d +
                            " --out " + d + "/run",
                        &log),
            0);
  EXPECT_TRUE(contains(log, "launched by OpenMPI as rank 1 of 2 processes, but this tlengine was built without MPI"))
      << log;
  EXPECT_TRUE(contains(log, "libopenmpi-dev")) << log;
}

// Buckets: trainable parameters in reverse order, at most `bucket_bytes` each (unless one parameter is larger),
// frozen ones left out, rebuilt when the trainable set changes.
TEST(Distributed, GradientBucketsFollowBackwardOrderAndSkipFrozen) {
  auto model = models::create_model("resnet18", 4);
  const Distributed single;
  const int64_t limit = 1 << 20;
  train::GradientAverager avg(single, limit);
  avg.plan(*model);
  std::vector<std::string> flat, reversed;
  std::map<std::string, int64_t> bytes;
  for (auto& [name, p] : model->named_parameters()) {
    reversed.insert(reversed.begin(), name);
    bytes[name] = static_cast<int64_t>(p.value().nbytes());
  }
  const auto buckets = avg.bucket_names();
  EXPECT_GT(buckets.size(), 5u);
  for (const auto& b : buckets) {
    int64_t sum = 0;
    for (const std::string& n : b) sum += bytes[n];
    EXPECT_TRUE(sum <= limit || b.size() == 1) << b.front() << ": " << sum << " bytes";
    flat.insert(flat.end(), b.begin(), b.end());
  }
  EXPECT_EQ(flat, reversed);
  train::FreezeOptions f;
  f.freeze = "backbone";
  train::apply_freeze(*model, f);
  avg.plan(*model);
  EXPECT_EQ(avg.bucket_names(), (std::vector<std::vector<std::string>>{{"fc.bias", "fc.weight"}}));
}

// ---------------------------------------------------------------- several processes, through the CLI

namespace {

// Why the multi-process tests cannot run here, or "".
std::string mpi_missing() {
  if (!Distributed::built_with_mpi()) return "this tlengine was built without MPI (-DTL_WITH_MPI=OFF or no libopenmpi-dev)";
  if (run_command("command -v mpirun") != 0) return "mpirun is not on PATH (apt-get install openmpi-bin)";
  return "";
}
// mpirun as root needs OpenMPI's consent (CI runs as root); one OpenMP thread per rank on a small machine.
std::string mpirun(int np) {
  // Single-copy shared memory (CMA) needs ptrace rights that containers often lack: plain copies instead.
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none "
         "OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe -np " + std::to_string(np) + " ";
}
std::string tiny_data(const std::string& dir) {
  io::SyntheticOptions s;
  s.num_classes = 4;
  s.train_per_class = 8;  // 32 images: 4 steps of a global batch of 8, no padding
  s.val_per_class = 4;    // 16 images: 8 per rank
  s.min_side = 40;
  s.max_side = 56;
  s.format = "png";
  io::write_synthetic_image_folder(dir, s);
  return dir;
}
std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}
size_t count_of(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + 1)) ++n;
  return n;
}

// 2 processes x batch 4 against 1 process x batch 8, float64: the same global batches (rank r takes positions
// r, r + 2, ... of the same shuffled order), so the averaged gradient is the same mean over the same 8 images,
// summed in another order. Each step's rounding differences are ~1e-16 relative; over 8 steps of lr 0.01 SGD they
// stay many orders below the 1e-9 checked here (measured: ~1e-15). Squeezenet with --dropout 0 (no batch norm, no
// random masks per rank) or resnet18 with --freeze backbone --freeze-bn (batch norm on its running statistics;
// a trainable block with --freeze-bn would still use per-rank batch statistics): nothing depends on the per-rank
// batch.
// With `stop_and_resume`, a third 2-process run stops after 3 steps (mid-epoch 1) and resumes to the end: the same
// again (the train metrics of the stopped part, summed over the ranks, are carried in last.ckpt).
void expect_two_processes_match_one(const std::string& name, const std::string& model_args, bool stop_and_resume) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir(name);
  const std::string data = tiny_data(d + "/data");
  const std::string common = " train --data " + data + " " + model_args +
                             " --epochs 2 --image-size 64 --no-augment --precision fp64 --device cpu -j 1 --lr 0.01 "
                             "--seed 1 --dist-timeout 120";
  std::string log2, log1;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --out " + d + "/two", &log2), 0) << log2;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 8 --out " + d + "/one", &log1), 0)
      << log1;
  EXPECT_TRUE(contains(log2, "data parallel: 2 processes x batch 4 = global batch 8, lr 0.01")) << log2;
  EXPECT_EQ(count_of(log2, "epoch 1/2: train loss"), 1u) << "rank 1 prints nothing:\n" << log2;
  const std::vector<nlohmann::json> a = read_jsonl(d + "/two/metrics.jsonl"), b = read_jsonl(d + "/one/metrics.jsonl");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t e = 0; e < 2; ++e)
    for (const char* phase : {"train", "val"}) {
      EXPECT_EQ(a[e][phase]["count"], b[e][phase]["count"]) << phase << " epoch " << e + 1;
      EXPECT_EQ(a[e][phase]["top1"], b[e][phase]["top1"]) << phase << " epoch " << e + 1;
      const double x = a[e][phase]["loss"].get<double>(), y = b[e][phase]["loss"].get<double>();
      EXPECT_NEAR(x, y, 1e-9 * std::abs(y)) << phase << " epoch " << e + 1;
    }
  EXPECT_EQ(b[0]["val"]["count"], 16) << "every val image counted once";
  const train::StateDict wa = train::load_state_dict(d + "/two/last.ckpt"), wb = train::load_state_dict(d + "/one/last.ckpt");
  int compared = 0;
  for (const auto& [key, t] : wb.tensors) {
    if (key.rfind("model.", 0) != 0) continue;
    const std::vector<double> x = wa.tensors.at(key).to_doubles(), y = t.to_doubles();
    ASSERT_EQ(x.size(), y.size()) << key;
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-9 * (1 + std::abs(y[i]))) << key << "[" << i << "]";
    ++compared;
  }
  EXPECT_GT(compared, 10);
  if (!stop_and_resume) return;
  std::string log3;
  EXPECT_NE(run_command(mpirun(2) + TL_CLI + common + " -b 4 --out " + d + "/resumed --stop-after-steps 3", &log3), 0)
      << "stopped runs exit with 130\n" << log3;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --out " + d + "/resumed --resume", &log3), 0) << log3;
  EXPECT_TRUE(contains(log3, "at epoch 1, batch 3")) << log3;
  const std::vector<nlohmann::json> c = read_jsonl(d + "/resumed/metrics.jsonl");
  ASSERT_EQ(c.size(), 2u);
  for (size_t e = 0; e < 2; ++e)
    for (const char* phase : {"train", "val"}) {
      EXPECT_EQ(c[e][phase]["count"], b[e][phase]["count"]) << phase << " epoch " << e + 1;
      const double x = c[e][phase]["loss"].get<double>(), y = b[e][phase]["loss"].get<double>();
      EXPECT_NEAR(x, y, 1e-9 * std::abs(y)) << "resumed, " << phase << " epoch " << e + 1;
    }
}

}  // namespace

TEST(DataParallel, TwoProcessesMatchOneWithTwiceTheBatchAndResumeSqueezenet) {
  expect_two_processes_match_one("ddp_squeezenet", "--arch squeezenet1_0 --dropout 0", true);
}

TEST(DataParallel, TwoProcessesMatchOneWithTwiceTheBatchFrozenResnet) {
  expect_two_processes_match_one("ddp_resnet", "--arch resnet18 --freeze backbone --freeze-bn --no-cache", false);
}

// resnet18 with every batch norm training: each rank's running statistics follow its own batches. The val phase
// must use one model's (rank 0's, the one best.bin holds) on every rank: the val loss summed over the 2 ranks is
// then what `eval` of best.bin gives on the whole val set (float32 both; measured 1e-8 relative; with each rank on
// its own statistics, i.e. without broadcast_buffers, the difference was 7e-2 at --lr 0.05).
TEST(DataParallel, ValMetricsComeFromRankZerosModel) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_val");
  const std::string data = tiny_data(d + "/data");
  std::string log;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + " train --data " + data + " --arch resnet18 --epochs 1 --image-size 32 "
                        "--no-augment --device cpu -j 1 -b 4 --lr 0.01 --out " + d + "/run", &log), 0) << log;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + " eval --weights " + d + "/run/best.bin --data " +
                        data + " --image-size 32 --device cpu --json " + d + "/eval.json", &log), 0) << log;
  const double trained = read_jsonl(d + "/run/metrics.jsonl").at(0)["val"]["loss"].get<double>();
  std::ifstream f(d + "/eval.json");
  const double evaluated = nlohmann::json::parse(f)["loss"].get<double>();
  EXPECT_NEAR(trained, evaluated, 1e-4 * std::abs(evaluated));
}

// --on-bad-image skip with batch 1: a rank whose batch was only a bad image still takes part in that step's
// reduction (with zeros) and updates with the mean; otherwise its collectives would fall out of step with the
// other rank's (a mismatched reduction, or a timeout).
TEST(DataParallel, RankWithOnlyBadImagesInABatchStillSteps) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_bad");
  const std::string data = tiny_data(d + "/data");
  for (const char* name : {"/zz_bad1.png", "/zz_bad2.jpg", "/zz_bad3.png"}) {
    std::ofstream f(data + "/train/" + io::synthetic_class_name(1) + name);
    f << "not an image";
  }
  std::string log;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + " train --data " + data + " --arch squeezenet1_0 --epochs 1 "
                        "--image-size 64 --no-augment --device cpu -j 1 -b 1 --on-bad-image skip --dist-timeout 30 "
                        "--out " + d + "/run", &log), 0) << log;
  const nlohmann::json m = read_jsonl(d + "/run/metrics.jsonl").at(0);
  EXPECT_EQ(m["train"]["count"], 33) << "35 samples padded to 36, 3 of them bad";
  EXPECT_EQ(m["val"]["count"], 16);
}

// Rank 1 stops answering before its 6th gradient all-reduce (epoch 2, step 2 of 4): rank 0 times out after
// --dist-timeout (15 s: far above a step, also on a loaded machine), names itself, the operation and the step, and
// MPI_Abort ends both; the checkpoint of epoch 1 is intact and a single process resumes from it to the end.
TEST(DataParallel, HungRankTimesOutAndResumeFinishes) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_hang");
  const std::string data = tiny_data(d + "/data");
  const std::string common = " train --data " + data + " --arch squeezenet1_0 --dropout 0 --epochs 2 --image-size 64 "
                             "--no-augment --device cpu -j 1 --lr 0.01 --out " + d + "/run";
  std::string log;
  const int rc = run_command("TL_TEST_HANG_AT_STEP=1:6 " + mpirun(2) + TL_CLI + common + " -b 4 --dist-timeout 15", &log);
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(rc, 124) << "the outer timeout killed it: the ranks hung\n" << log;
  EXPECT_TRUE(contains(log, "TL_TEST_HANG_AT_STEP: this rank hangs at epoch 2 step 2")) << log;
  EXPECT_TRUE(contains(log, "rank 0: all-reduce of the gradients (bucket 1 of 1) at epoch 2 step 2 timed out after 15 s"))
      << log;
  ASSERT_EQ(read_jsonl(d + "/run/metrics.jsonl").size(), 1u) << log;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 8 --resume", &log), 0) << log;
  EXPECT_TRUE(contains(log, "resumed " + d + "/run/last.ckpt at epoch 2, batch 0")) << log;
  const std::vector<nlohmann::json> m = read_jsonl(d + "/run/metrics.jsonl");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1]["epoch"], 2);
}

// ---------------------------------------------------------------- the overlapped reduction, in 2 ranks of this binary

// One rank of DataParallel.OverlappedReductionEqualsReductionAfterBackward, which runs this test binary under
// mpirun (MPI is initialised once per process, so this is the only test such a run holds); it skips otherwise.
// resnet18 in buckets of 1 MB (20): for the whole model, and with the head unused (the loss on the features,
// so fc's bucket, the first to reduce, gets no gradient), the gradients averaged by buckets started during backward
// equal, to the bit, those averaged after it, and they are the same on both ranks (each rank's batch differs).
// Buckets start before backward returns (the last one from the hook call for conv1's weight, the last gradient;
// two are allowed to start in finish()); with fc unused, its bucket starts in begin(), before backward, and without
// that every bucket would wait for it (they start in order).
TEST(DataParallelRank, OverlappedReductionEqualsReductionAfterBackward) {
  if (launch_info_from_env().world_size == 1)
    GTEST_SKIP() << "a rank of DataParallel.OverlappedReductionEqualsReductionAfterBackward (run by it, under mpirun)";
  const Distributed dist = Distributed::from_env(60);
  ASSERT_EQ(dist.world_size(), 2);
  auto model = models::create_model("resnet18", 4);
  train::broadcast_parameters(dist, *model);
  const Tensor x = Tensor::randn({2, 3, 32, 32}, 100 + static_cast<uint64_t>(dist.rank()));
  const Tensor labels = Tensor::from_values({1, 3}, {2}, DType::I32);
  for (const bool head_unused : {false, true}) {
    std::vector<std::vector<double>> grads[2];
    for (int overlapped = 0; overlapped < 2; ++overlapped) {
      train::GradientAverager avg(dist, 1 << 20);
      Tape tape;
      TapeScope scope(tape);
      const Variable out = head_unused ? model->features(Variable(x)) : model->forward(Variable(x));
      const Variable loss = cross_entropy(out, labels);
      if (overlapped) {
        avg.begin(*model, 0, 0, tape);
        tape.backward(loss, Tensor(), avg.leaf_ready_hook());
        avg.finish();
        const train::GradientAverager::Overlap o = avg.last_overlap();
        EXPECT_GE(o.buckets, 10) << "buckets of 1 MB";
        EXPECT_GE(o.started_during_backward, o.buckets - 2) << "head unused: " << head_unused;
      } else {
        tape.backward(loss);
        avg.average(*model, 0, 0);
        EXPECT_EQ(avg.last_overlap().started_during_backward, 0);
      }
      for (auto& [name, p] : model->named_parameters()) {
        grads[overlapped].push_back(p.grad().defined() ? p.grad().to_doubles() : std::vector<double>{});
        EXPECT_EQ(p.grad().defined(), !(head_unused && name.rfind("fc.", 0) == 0)) << name;
        p.zero_grad();
      }
    }
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i) ASSERT_EQ(grads[0][i], grads[1][i]) << "parameter " << i;
    std::vector<double> mine;
    for (const auto& g : grads[1]) mine.insert(mine.end(), g.begin(), g.end());
    Tensor rank0 = Tensor::from_values(mine, {static_cast<int64_t>(mine.size())}, DType::F64);
    dist.broadcast(rank0, 0, "rank 0's gradients");
    EXPECT_EQ(rank0.to_doubles(), mine) << "the mean is the same on every rank";
  }
  // Gradients that share storage (add hands its output's gradient to both inputs, here the caller's seed) get the
  // mean in new tensors: the seed keeps its values.
  struct TwoParams : nn::Module {
    TwoParams() {
      add_parameter("a", Tensor::zeros({2}));
      add_parameter("b", Tensor::zeros({2}));
    }
  } two;
  const double r = dist.rank() + 1.0;
  const Tensor seed = Tensor::from_values({r, 2 * r}, {2});
  train::GradientAverager avg(dist);
  Tape tape;
  TapeScope scope(tape);
  const auto params = two.named_parameters();
  const Variable y = add(params[0].second, params[1].second);
  avg.begin(two, 0, 0, tape);
  tape.backward(y, seed, avg.leaf_ready_hook());
  avg.finish();
  EXPECT_EQ(seed.to_doubles(), (std::vector<double>{r, 2 * r}));
  for (const auto& [name, p] : params) EXPECT_EQ(p.grad().to_doubles(), (std::vector<double>{1.5, 3})) << name;
}

TEST(DataParallel, OverlappedReductionEqualsReductionAfterBackward) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string log;
  const std::string filter =
      " --gtest_color=no --gtest_filter=DataParallelRank.OverlappedReductionEqualsReductionAfterBackward";
  EXPECT_EQ(run_command(mpirun(2) + self + filter, &log), 0) << log;
  EXPECT_EQ(count_of(log, "[  PASSED  ] 1 test."), 2u) << "both ranks ran it (not skipped):\n" << log;
  EXPECT_EQ(count_of(log, "SKIPPED"), 0u) << log;
}

namespace {
// Runs the rank test `test` (DataParallelRank.<test>) in 2 processes of this binary under mpirun.
void run_rank_test(const std::string& test) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string log;
  EXPECT_EQ(run_command(mpirun(2) + self + " --gtest_color=no --gtest_filter=DataParallelRank." + test, &log), 0) << log;
  EXPECT_EQ(count_of(log, "[  PASSED  ] 1 test."), 2u) << "both ranks ran it (not skipped):\n" << log;
  EXPECT_EQ(count_of(log, "SKIPPED"), 0u) << log;
}

// `n` steps of resnet18 (conv1, bn1 and layer1 frozen; the loss on the features, so fc is unused and gets no
// gradient) on this rank's batches, the gradients averaged in buckets of 1 MB started during backward; the update
// after every bucket (finish() then opt.step()) or bucket by bucket (finish_and_step). Returns the weights and
// the optimizer's state dict.
struct Trajectory {
  std::vector<std::vector<double>> weights;
  train::StateDict state;
  int64_t buckets = 0;
};
Trajectory train_steps(const Distributed& dist, models::Model& model, const std::vector<Tensor>& start,
                       train::OptimizerKind kind, bool bucketwise, int n) {
  auto params = model.named_parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].second.mutable_value().copy_(start[i]);
  nn::invalidate_derived_state();
  std::vector<Parameter> body, head;
  for (auto& [name, p] : params) (name.rfind("fc.", 0) == 0 ? head : body).push_back(p);
  const train::HyperParams h = kind == train::OptimizerKind::SGD ? train::HyperParams::sgd(0.05, 0.9, 1e-4)
                                                                  : train::HyperParams::adam(1e-2, 1e-4);
  train::Optimizer opt(kind, {train::ParamGroup("body", body), train::ParamGroup("head", head, 0.1)}, h);
  train::GradientAverager avg(dist, 1 << 20);
  Trajectory r;
  for (int s = 0; s < n; ++s) {
    const Tensor x = Tensor::randn({2, 3, 32, 32}, 1000 + 10 * static_cast<uint64_t>(s) + static_cast<uint64_t>(dist.rank()));
    const Tensor labels =
        Tensor::from_values({static_cast<double>(s % 4), static_cast<double>((s + 1 + dist.rank()) % 4)}, {2}, DType::I32);
    Tape tape;
    TapeScope scope(tape);
    const Variable loss = cross_entropy(model.features(Variable(x)), labels);
    avg.begin(model, 0, s, tape);
    tape.backward(loss, Tensor(), avg.leaf_ready_hook());
    if (bucketwise) {
      avg.finish_and_step(opt);
    } else {
      avg.finish();
      opt.step();
    }
    opt.zero_grad();
    r.buckets = avg.last_overlap().buckets;
  }
  for (auto& [name, p] : model.named_parameters()) r.weights.push_back(p.value().to_doubles());
  r.state = opt.state_dict();
  return r;
}
}  // namespace

// One rank of DataParallel.BucketwiseUpdateEqualsUpdateAfterEveryBucket: 4 steps of SGD (momentum, weight decay)
// and of Adam, two parameter groups, a frozen prefix and an unused head, each rank with its own batches. Updating
// each bucket's parameters as soon as its mean is in gives the weights and optimizer state (momentum / moments,
// step counts) of the update after every bucket, to the bit; the frozen prefix and the unused head do not move.
TEST(DataParallelRank, BucketwiseUpdateEqualsUpdateAfterEveryBucket) {
  if (launch_info_from_env().world_size == 1)
    GTEST_SKIP() << "a rank of DataParallel.BucketwiseUpdateEqualsUpdateAfterEveryBucket (run by it, under mpirun)";
  const Distributed dist = Distributed::from_env(60);
  ASSERT_EQ(dist.world_size(), 2);
  auto model = models::create_model("resnet18", 4);
  train::broadcast_parameters(dist, *model);
  std::vector<Tensor> start;
  for (auto& [name, p] : model->named_parameters()) {
    start.push_back(p.value().clone());
    const bool frozen = name.rfind("conv1.", 0) == 0 || name.rfind("bn1.", 0) == 0 || name.rfind("layer1.", 0) == 0;
    if (frozen) p.set_trainable(false);
  }
  model->train();
  for (const train::OptimizerKind kind : {train::OptimizerKind::SGD, train::OptimizerKind::Adam}) {
    const Trajectory all = train_steps(dist, *model, start, kind, false, 4);
    const Trajectory each = train_steps(dist, *model, start, kind, true, 4);
    EXPECT_GE(each.buckets, 8) << "buckets of 1 MB";
    const auto params = model->named_parameters();
    ASSERT_EQ(all.weights.size(), each.weights.size());
    int moved = 0;
    for (size_t i = 0; i < all.weights.size(); ++i) {
      const std::string& name = params[i].first;
      ASSERT_EQ(each.weights[i], all.weights[i]) << train::optimizer_kind_name(kind) << " " << name;
      const bool still = !params[i].second.trainable() || name.rfind("fc.", 0) == 0;
      if (still) {
        EXPECT_EQ(each.weights[i], start[i].to_doubles()) << name << " is frozen or unused";
      }
      moved += each.weights[i] != start[i].to_doubles();
    }
    EXPECT_GT(moved, 20) << train::optimizer_kind_name(kind);
    ASSERT_EQ(all.state.tensors.size(), each.state.tensors.size());
    for (const auto& [key, t] : all.state.tensors)
      ASSERT_EQ(each.state.tensors.at(key).to_doubles(), t.to_doubles()) << train::optimizer_kind_name(kind) << " " << key;
    int counts = 0;  // step counts (also 0: frozen, unused), by key
    for (size_t g = 0; g < 2; ++g)
      for (size_t i = 0; i < params.size(); ++i) {
        const std::string key = "state." + std::to_string(g) + "." + std::to_string(i) + ".step";
        if (!all.state.has_value(key)) continue;
        EXPECT_EQ(each.state.get_int(key), all.state.get_int(key)) << key;
        ++counts;
      }
    EXPECT_EQ(counts, static_cast<int>(params.size()));
  }
}

TEST(DataParallel, BucketwiseUpdateEqualsUpdateAfterEveryBucket) {
  run_rank_test("BucketwiseUpdateEqualsUpdateAfterEveryBucket");
}

// One rank of DataParallel.SyncBnReusesItsBufferAndNamesTheStepInATimeout. A batch norm layer with --sync-bn
// (enable_sync_bn on a model holding it as "block.bn") in training, forward and backward: from the second step on
// the reduction allocates no tensor (a step with the sync makes as many CPU allocations as one without), and the
// result is the statistics of both ranks' batches. Then rank 1 stays away from the forward's first all-reduce:
// rank 0 times out after 3 s naming itself, the layer, and the epoch and step the trainer's position holds.
TEST(DataParallelRank, SyncBnReusesItsBufferAndNamesTheStepInATimeout) {
  if (launch_info_from_env().world_size == 1)
    GTEST_SKIP() << "a rank of DataParallel.SyncBnReusesItsBufferAndNamesTheStepInATimeout (run by it, under mpirun)";
  const Distributed dist = Distributed::from_env(3);  // rank 1 comes 1.5 s after rank 0 gave up, 1.5 s before its barrier's deadline
  ASSERT_EQ(dist.world_size(), 2);
  struct Block : nn::Module {
    Block() { bn = &add_module<nn::BatchNorm2d>("bn", 3); }
    nn::BatchNorm2d* bn;
  };
  struct Net : nn::Module {
    Net() { block = &add_module<Block>("block"); }
    Block* block;
  } net;
  net.train();
  StepPosition at;
  ASSERT_EQ(train::enable_sync_bn(dist, net, &at), 1);
  nn::BatchNorm2d& bn = *net.block->bn;
  const Tensor x = Tensor::randn({2, 3, 4, 4}, 7 + static_cast<uint64_t>(dist.rank()));
  const Tensor dy = Tensor::randn({2, 3, 4, 4}, 70 + static_cast<uint64_t>(dist.rank()));
  auto step = [&] {  // forward and backward, dx included (its sums are reduced too)
    Tape tape;
    TapeScope scope(tape);
    const Variable y = bn(Variable(x.clone(), true));
    tape.backward(y, dy);
    return y.value().to_doubles();
  };
  for (int s = 0; s < 2; ++s) step();  // warm-up: the layer's buffer exists
  const double* buffer = bn.sync.buffer.data();
  const size_t a0 = memory_stats(Device::CPU).allocations;
  const std::vector<double> y = step();
  const size_t a1 = memory_stats(Device::CPU).allocations;
  EXPECT_EQ(bn.sync.buffer.data(), buffer) << "the buffer was reallocated";
  EXPECT_EQ(bn.sync.buffer.size(), 7u) << "the backward's 2 x 3 sums and the count";
  BatchNormSync saved = std::move(bn.sync);
  bn.sync = BatchNormSync{};
  step();
  const size_t a2 = memory_stats(Device::CPU).allocations;
  bn.sync = std::move(saved);
  EXPECT_EQ(a1 - a0, a2 - a1) << "the synchronised step allocates tensors the plain one does not";
  // Channel 0 is normalised over both ranks' values (beta = 0): zero-mean over both, not over this rank's alone.
  double mine = 0;
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 16; ++i) mine += y[static_cast<size_t>(n * 48 + i)];
  std::vector<double> total = {mine};
  dist.all_reduce_sum(total, "the sum of channel 0");
  EXPECT_NEAR(total[0], 0.0, 1e-4);
  EXPECT_GT(std::abs(mine), 1e-2) << "this rank's values alone are not zero-mean";
  // The timeout: rank 1 posts the matching all-reduce only after rank 0 gave up on it.
  at = StepPosition{1, 16};
  if (dist.rank() == 0) {
    const std::string message = error_of([&] { step(); });
    EXPECT_TRUE(contains(message, "rank 0: all-reduce of the batch-norm statistics of block.bn (--sync-bn) at epoch 2 "
                                  "step 17 timed out after 3 s"))
        << message;
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(4500));
    std::vector<double> sums(4, 0.0);  // the forward's first reduction: 3 channel sums and the count
    dist.all_reduce_sum(sums.data(), sums.size(), "the partner of rank 0's abandoned all-reduce");
  }
  dist.barrier("the end of the test");
}

TEST(DataParallel, SyncBnReusesItsBufferAndNamesTheStepInATimeout) {
  run_rank_test("SyncBnReusesItsBufferAndNamesTheStepInATimeout");
}

// The NCCL path on one GPU, one rank: 3 SGD steps of resnet18 with the gradients averaged by NCCL (buckets of 1 MB
// started during backward on the communication stream, ordered by events) give the losses and weights of the same
// steps without it: the mean over one rank is the gradient itself, so any mistake in the buckets' offsets, event
// order or copies back shows. cuDNN's backward may pick non-deterministic algorithms, hence the tolerance.
TEST(DataParallelNccl, OneRankMatchesTheRunWithoutIt) {
  if (!NcclComm::built_with_nccl()) GTEST_SKIP() << "built without NCCL (-DTL_WITH_NCCL, with CUDA and MPI)";
  if (!cuda::available()) GTEST_SKIP() << cuda::unavailable_reason();
  const Distributed single;
  NcclComm nccl(single);
  const Tensor x = Tensor::randn({4, 3, 64, 64}, 11, DType::F32, Device::CUDA);
  const Tensor labels = Tensor::from_values({0, 1, 2, 3}, {4}, DType::I32, Device::CUDA);
  std::vector<double> losses[2], weights[2];
  for (int with_nccl = 0; with_nccl < 2; ++with_nccl) {
    auto model = models::create_model("resnet18", 4, 3);
    model->to(Device::CUDA);
    train::GradientAverager avg(single, 1 << 20, &nccl);
    for (int step = 0; step < 3; ++step) {
      Tape tape;
      TapeScope scope(tape);
      const Variable loss = cross_entropy(model->forward(Variable(x)), labels);
      losses[with_nccl].push_back(loss.value().item());
      if (with_nccl) avg.begin(*model, 0, step, tape);
      tape.backward(loss, Tensor(), with_nccl ? avg.leaf_ready_hook() : LeafReadyFn());
      if (with_nccl) avg.finish();
      for (auto& [name, p] : model->named_parameters()) {
        p.mutable_value().add_(p.grad(), -0.05);
        p.zero_grad();
      }
      nn::invalidate_derived_state();
    }
    if (with_nccl) {
      EXPECT_GE(avg.last_overlap().buckets, 10);
      EXPECT_GT(avg.last_overlap().started_during_backward, 0);
    }
    weights[with_nccl] = model->named_parameters().front().second.value().to_doubles();
  }
  for (int step = 0; step < 3; ++step)
    EXPECT_NEAR(losses[1][step], losses[0][step], 1e-4 * std::abs(losses[0][step])) << "step " << step + 1;
  ASSERT_EQ(weights[0].size(), weights[1].size());
  for (size_t i = 0; i < weights[0].size(); ++i) ASSERT_NEAR(weights[1][i], weights[0][i], 1e-4) << i;
}

// A build without NCCL refuses CUDA training over several processes, saying how to get NCCL or what to do instead.
TEST(DataParallelNccl, BuildWithoutNcclRefusesWithAClearMessage) {
  if (NcclComm::built_with_nccl()) GTEST_SKIP() << "built with NCCL: the refusal is the build without it";
  const Distributed single;
  const std::string e = error_of([&] { NcclComm nccl(single); });
  EXPECT_TRUE(contains(e, "needs NCCL, and this tlengine was built without it")) << e;
  EXPECT_TRUE(contains(e, "-DTL_WITH_NCCL=ON")) << e;
  EXPECT_TRUE(contains(e, "--device cpu")) << e;
}

// ---------------------------------------------------------------- --sync-bn

namespace {

// How far run `a` is from run `b` (both in --out folders of the same job): the largest relative difference of
// their per-epoch train and val losses (metrics.jsonl), and of the model tensors in last.ckpt (weights, running
// statistics), |a - b| / (1 + |b|).
struct RunDiff {
  double loss = 0, weights = 0;
  int losses = 0, tensors = 0;  // how many were compared
};
RunDiff run_diff(const std::string& a, const std::string& b) {
  RunDiff r;
  const std::vector<nlohmann::json> ma = read_jsonl(a + "/metrics.jsonl"), mb = read_jsonl(b + "/metrics.jsonl");
  EXPECT_EQ(ma.size(), mb.size()) << a << " vs " << b;
  for (size_t e = 0; e < std::min(ma.size(), mb.size()); ++e)
    for (const char* phase : {"train", "val"}) {
      const double x = ma[e][phase]["loss"].get<double>(), y = mb[e][phase]["loss"].get<double>();
      r.loss = std::max(r.loss, std::abs(x - y) / std::abs(y));
      ++r.losses;
    }
  const train::StateDict sa = train::load_state_dict(a + "/last.ckpt"), sb = train::load_state_dict(b + "/last.ckpt");
  for (const auto& [key, t] : sb.tensors) {
    if (key.rfind("model.", 0) != 0) continue;
    const std::vector<double> x = sa.tensors.at(key).to_doubles(), y = t.to_doubles();
    EXPECT_EQ(x.size(), y.size()) << key;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
      r.weights = std::max(r.weights, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
    ++r.tensors;
  }
  if (sb.has_value("partial_train")) {  // stopped inside an epoch: the loss sum of its steps so far
    const double x = nlohmann::json::parse(sa.get_string("partial_train"))["loss_sum"].get<double>();
    const double y = nlohmann::json::parse(sb.get_string("partial_train"))["loss_sum"].get<double>();
    r.loss = std::max(r.loss, std::abs(x - y) / std::abs(y));
    ++r.losses;
  }
  return r;
}

}  // namespace

// --sync-bn against 1 process with the global batch: PyTorch 1.13's SyncBatchNorm runs only on CUDA, so the
// reference is what it computes, batch norm over the union of the ranks' batches, i.e. 1 process x batch 8 where
// 2 processes x batch 4 take the same 8 images per step (the DistributedSampler split). resnet18 with every batch
// norm training.
//  - float64 (the CPU reference path), 2 epochs of 4 steps: the statistics are the same double sums in another
//    order, so the runs agree to ~1e-15 relative per step (measured over the run: 2e-13); 1e-9 as the other
//    DataParallel tests (without --sync-bn: 0.6).
//  - float32 (the fast path, NHWC or NCHW as the build runs it), one step (--stop-after-steps 1: its loss, and the
//    weights and running statistics after one update): this job's losses grow over 2 epochs at lr 0.01 and
//    float32 rounding alone moves them by ~10%, so longer float32 runs bound nothing. After one step the only
//    differences are float32 rounding of sums over the batch in another order (a few ulps, 6e-8 each, measured
//    5e-8), scaled by lr 0.01 in the update and by momentum 0.1 in the running statistics: 1e-6 leaves a margin of
//    20. Per-rank statistics (no --sync-bn) move the weights by ~8e-2, so the test can fail.
TEST(DataParallel, SyncBnTwoProcessesMatchOneWithTwiceTheBatch) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_syncbn");
  const std::string data = tiny_data(d + "/data");
  for (const char* precision : {"fp64", "fp32"}) {
    const std::string p = precision;
    const bool one_step = p == "fp32";
    const std::string common = " train --data " + data + " --arch resnet18 --epochs 2 --image-size 64 --no-augment "
                               "--device cpu -j 1 --lr 0.01 --seed 1 --dist-timeout 120 --precision " + p +
                               (one_step ? " --stop-after-steps 1" : "");
    const int rc = one_step ? 130 : 0;  // a stopped run exits with 130
    std::string log;
    ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --sync-bn --out " + d + "/sync_" + p, &log), rc) << log;
    EXPECT_TRUE(contains(log, "sync batch norm: 20 of 20 batch norm layers use the statistics of the global batch "
                              "(2 x 4)")) << log;
    ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 8 --sync-bn --out " + d +
                              "/one_" + p, &log), rc) << log;
    EXPECT_TRUE(contains(log, "--sync-bn: one process, nothing to synchronise")) << log;
    const RunDiff sync = run_diff(d + "/sync_" + p, d + "/one_" + p);
    const double tol = one_step ? 1e-6 : 1e-9;
    EXPECT_LE(sync.loss, tol) << p;
    EXPECT_LE(sync.weights, tol) << p;
    EXPECT_EQ(sync.losses, one_step ? 1 : 4) << p << ": train and val losses per epoch, or the stopped step's";
    EXPECT_GT(sync.tensors, 100) << "weights, biases, running means and variances";
    std::cerr << p << ": --sync-bn vs 1 x 8: losses " << sync.loss << ", weights " << sync.weights << "\n";
    if (!one_step) continue;  // the one-step float32 runs also show that per-rank statistics differ
    ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --out " + d + "/plain_" + p, &log), rc) << log;
    const RunDiff plain = run_diff(d + "/plain_" + p, d + "/one_" + p);
    std::cerr << p << ": per-rank batch norm vs 1 x 8: losses " << plain.loss << ", weights " << plain.weights << "\n";
    EXPECT_GT(plain.weights, 1e-3) << p << ": per-rank statistics must differ from the global batch's";
  }
}

// Nothing to synchronise, or a combination that cannot work: refused before any work, naming the option.
TEST(DataParallel, SyncBnRefusedWhereItCannotApply) {
  const std::string d = scratch_dir("syncbn_refused");
  const std::string data = tiny_data(d + "/data");
  const std::string common = std::string("OMP_NUM_THREADS=1 ") + TL_CLI + " train --data " + data +
                             " --epochs 1 --image-size 32 --no-augment --device cpu -j 1 -b 4 --sync-bn --out " + d +
                             "/run";
  std::string log;
  EXPECT_NE(run_command(common + " --arch squeezenet1_0", &log), 0);
  EXPECT_TRUE(contains(log, "--sync-bn: squeezenet1_0 has no batch norm layer; drop --sync-bn")) << log;
  EXPECT_NE(run_command(common + " --arch resnet18 --freeze backbone --freeze-bn", &log), 0);
  EXPECT_TRUE(contains(log, "--sync-bn: every batch norm layer of resnet18 is frozen and uses its running statistics "
                            "(--freeze-bn)")) << log;
  if (!mpi_missing().empty()) return;  // the rest needs several processes
  EXPECT_NE(run_command(mpirun(2) + TL_CLI + " train --data " + data + " --epochs 1 --image-size 32 --no-augment "
                        "--device cpu -j 1 -b 4 --sync-bn --on-bad-image skip --dist-timeout 60 --out " + d + "/run2",
                        &log), 0);
  EXPECT_TRUE(contains(log, "--sync-bn with --on-bad-image skip on several processes")) << log;
}

// The feature cache on 2 processes: each rank runs the frozen part (conv1 .. layer3, batch norm on its running
// statistics) on half of the train images, the ranks exchange the rows, and every epoch each rank trains layer4 and
// fc on its share, from rows either rank extracted. --sync-bn gives layer4's batch norm (training) the global
// batch's statistics, so the run equals 1 process x batch 8 with the cache (float64: 1e-9, as above); a wrong
// exchange would train on zeros or on another image's features. The 2-process run keeps its cache in scratch files
// under the shared --out (--cache-budget 0): one per rank.
TEST(DataParallel, FeatureCacheWithSeveralProcessesMatchesOne) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_cache");
  const std::string data = tiny_data(d + "/data");
  const std::string common = " train --data " + data + " --arch resnet18 --freeze until=layer3 --freeze-bn --sync-bn "
                             "--epochs 2 --image-size 64 --no-augment --precision fp64 --device cpu -j 1 --lr 0.01 "
                             "--seed 1 --dist-timeout 120";
  std::string log2, log1;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --cache-budget 0 --out " + d + "/two", &log2), 0) << log2;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 8 --out " + d + "/one", &log1), 0)
      << log1;
  EXPECT_TRUE(contains(log2, "feature cache: on at layer3")) << log2;
  EXPECT_TRUE(contains(log2, "memory-mapped scratch file")) << log2;
  EXPECT_TRUE(contains(log1, "feature cache: on at layer3")) << log1;
  EXPECT_TRUE(contains(log2, "sync batch norm: 5 of 20 batch norm layers")) << log2;
  const RunDiff diff = run_diff(d + "/two", d + "/one");
  EXPECT_LE(diff.loss, 1e-9);
  EXPECT_LE(diff.weights, 1e-9);
  EXPECT_GT(diff.tensors, 100);
}

// --cache-views 3 on 2 processes: each rank extracts 3 augmented views of its half of the train images (view v is
// epoch v's draws, seeded per sample, so the same on any rank), the ranks exchange the rows of every view, and each
// epoch picks a view per sample; the run equals 1 process x batch 8 with the same cache, float64, 1e-9 as above
// (the same images and views, summed in another order). A rank that gathered only view 0, or picked its views by
// another rule, would train on other images' augmentations.
TEST(DataParallel, FeatureCacheViewsWithSeveralProcessesMatchOne) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_cache_views");
  const std::string data = tiny_data(d + "/data");
  const std::string common = " train --data " + data + " --arch resnet18 --freeze until=layer3 --freeze-bn --sync-bn "
                             "--cache-views 3 --epochs 2 --image-size 64 --precision fp64 --device cpu -j 1 "
                             "--lr 0.01 --seed 1 --dist-timeout 120";
  std::string log2, log1;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 4 --out " + d + "/two", &log2), 0) << log2;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 8 --out " + d + "/one", &log1), 0)
      << log1;
  EXPECT_TRUE(contains(log2, "feature cache: on with 3 augmented views per image")) << log2;
  EXPECT_TRUE(contains(log1, "feature cache: on with 3 augmented views per image")) << log1;
  const RunDiff diff = run_diff(d + "/two", d + "/one");
  std::cerr << "--cache-views 3, 2 x 4 vs 1 x 8: losses " << diff.loss << ", weights " << diff.weights << "\n";
  EXPECT_LE(diff.loss, 1e-9);
  EXPECT_LE(diff.weights, 1e-9);
  EXPECT_GT(diff.tensors, 100);
}

namespace {
// The "N images skipped:" block of a log (the first one), or "".
std::string skipped_block(const std::string& log) {
  const size_t start = log.find(" skipped:\n");
  if (start == std::string::npos) return "";
  size_t line = log.rfind('\n', start);
  line = line == std::string::npos ? 0 : line + 1;
  size_t end = log.find('\n', start) + 1;
  while (end < log.size() && log.compare(end, 2, "  ") == 0) end = log.find('\n', end) + 1;
  return log.substr(line, end - line);
}
}  // namespace

// --on-bad-image skip on 2 processes: rank 0's report lists the bad images of every rank (each rank meets some of
// the 6: without the gather rank 0 lists only its own), each once, in the order of the 1-process run with the
// global batch, whose report it equals line for line.
TEST(DataParallel, SkippedImagesOfEveryRankAreReportedOnce) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_skipped");
  const std::string data = tiny_data(d + "/data");
  std::vector<std::string> bad;
  for (int k = 0; k < 6; ++k) {
    bad.push_back(data + "/train/" + io::synthetic_class_name(k % 4) + "/zz_bad" + std::to_string(k) + ".png");
    std::ofstream(bad.back()) << "not an image";
  }
  const std::string common = " train --data " + data + " --arch squeezenet1_0 --dropout 0 --epochs 1 "
                             "--image-size 64 --no-augment --device cpu -j 1 --on-bad-image skip --dist-timeout 60";
  std::string log2, log1;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " -b 2 --out " + d + "/two", &log2), 0) << log2;
  ASSERT_EQ(run_command(std::string("OMP_NUM_THREADS=1 ") + TL_CLI + common + " -b 4 --out " + d + "/one", &log1), 0)
      << log1;
  const std::string two = skipped_block(log2), one = skipped_block(log1);
  EXPECT_TRUE(contains(two, "6 images skipped:")) << log2;
  for (const std::string& path : bad) EXPECT_EQ(count_of(log2, "\n  " + path + ": "), 1u) << path << "\n" << log2;
  EXPECT_EQ(two, one);
  EXPECT_EQ(read_jsonl(d + "/two/metrics.jsonl").at(0)["train"]["count"], 32);
}

// Against PyTorch 1.13's DistributedDataParallel (tests/torch_ref/ddp_parity.py: gloo, 2 processes on the CPU): the
// same job on both sides. The same start weights (finetune_parity.py's init.pth, converted), the same per-rank order
// (--no-shuffle here, PyTorch's own DistributedSampler without shuffling there: rank r takes positions r, r + 2, ...),
// per-rank batch norm (DDP's default) with rank 0's running statistics for val (broadcast_buffers), the val set
// split without padding and the metrics summed over the ranks; resnet18 at 64 px, batch 4 per process, 2 epochs,
// SGD (momentum 0.9) and Adam. Float64 on both sides: the same trajectory up to summation order (1e-16 per
// operation; measured 6e-16 with SGD), so 1e-9 relative, as in Train.FinetuneReachesTheSameLossesAsPyTorch, while a
// wrong averaging, order or batch-norm semantics moves the losses by far more. Not 32 px: there layer4's per-rank
// batch norm normalises 4 values per channel (1x1 maps), which amplified the 1e-16 differences to 1e-10 within an
// epoch and, at lr 0.01, to 4e-6 by the second (measured).
TEST(DataParallel, MatchesPyTorchDdp) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_torch");
  const std::string data = tiny_data(d + "/data");
  run_torch_script("finetune_parity.py", "weights " + data + " " + d);
  std::string log;
  ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + d + "/init.pth " + d + "/init.bin", &log), 0) << log;
  struct Case {
    std::string optimizer, lr;
  };
  for (const Case& c : {Case{"sgd", "0.001"}, Case{"adam", "0.0001"}}) {
    run_torch_script("ddp_parity.py", data + " " + d + " 2 " + c.lr + " 4 " + c.optimizer + " fp64 resnet18 64");
    std::ifstream f(d + "/ddp_" + c.optimizer + "_fp64.json");
    const nlohmann::json ref = nlohmann::json::parse(f);
    const std::string out = d + "/run_" + c.optimizer;
    ASSERT_EQ(run_command(mpirun(2) + TL_CLI + " train --data " + data + " --arch resnet18 --weights " + d +
                              "/init.bin --epochs 2 --image-size 64 --val-transform resize --no-augment --no-shuffle "
                              "--precision fp64 --device cpu -j 1 -b 4 --schedule constant --momentum 0.9 --optimizer " +
                              c.optimizer + " --lr " + c.lr + " --dist-timeout 120 --out " + out, &log), 0) << log;
    const std::vector<nlohmann::json> ours = read_jsonl(out + "/metrics.jsonl");
    ASSERT_EQ(ours.size(), 2u) << log;
    for (size_t e = 0; e < 2; ++e)
      for (const char* phase : {"train", "val"}) {
        const double t = ref[std::string(phase) + "_loss"][e].get<double>(), mine = ours[e][phase]["loss"].get<double>();
        EXPECT_NEAR(mine, t, 1e-9 * std::abs(t)) << c.optimizer << " epoch " << e + 1 << " " << phase << " loss";
        std::printf("[ddp parity] %s epoch %zu %s loss: tlengine %.12g, PyTorch DDP %.12g\n", c.optimizer.c_str(), e + 1,
                    phase, mine, t);
      }
  }
}

// Only train is data-parallel: the other commands launched as one of several processes are refused on every rank,
// naming the command and saying to run it as one process. The launcher's variables set by hand (the check reads
// them before any MPI call, so this runs in any build, without mpirun).
TEST(DataParallel, OnlyTrainRunsOnSeveralProcesses) {
  const std::string d = scratch_dir("ddp_commands");
  for (const std::string& cmd : std::vector<std::string>{"lr-find --data " + d, "eval --weights " + d + "/w.bin --data " + d,
                                "predict --weights " + d + "/w.bin " + d + "/a.png", "bench --arch resnet18",
                                "inspect --arch resnet18"}) {
    std::string log;
    EXPECT_NE(run_command("OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 " + std::string(TL_CLI) + " " + cmd, &log), 0)
        << cmd << "\n" << log;
    const std::string name = cmd.substr(0, cmd.find(' '));
    EXPECT_TRUE(contains(log, name + ": launched by OpenMPI as rank 1 of 2 processes, but only `train` runs on "
                                      "several processes (data parallel); run " + name + " as one process, without "
                                      "mpirun")) << log;
  }
}

// --resume with another number of processes or batch size: inside an epoch only with the same global batch (refused
// otherwise, saying why), at an epoch's end with any, the log saying what changed (the lr is not scaled).
TEST(DataParallel, ResumeWithAnotherNumberOfProcesses) {
  const std::string why = mpi_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string d = scratch_dir("ddp_resume_world");
  const std::string data = tiny_data(d + "/data");
  const std::string common = " train --data " + data + " --arch squeezenet1_0 --dropout 0 --image-size 64 "
                             "--no-augment --device cpu -j 1 --lr 0.01 --dist-timeout 120 --out " + d + "/run";
  const std::string one = std::string("OMP_NUM_THREADS=1 ") + TL_CLI;
  std::string log;
  EXPECT_EQ(run_command(mpirun(2) + TL_CLI + common + " --epochs 2 -b 4 --stop-after-steps 2", &log), 130) << log;
  EXPECT_NE(run_command(one + common + " --epochs 2 -b 4 --resume", &log), 0) << log;
  EXPECT_TRUE(contains(log, "was written inside epoch 1 (after step 2) by 2 process(es) x batch 4 = global batch 8; "
                            "this run's global batch is 1 x 4 = 4")) << log;
  ASSERT_EQ(run_command(one + common + " --epochs 2 -b 8 --resume", &log), 0) << log;
  EXPECT_TRUE(contains(log, "resuming with 1 process(es) x batch 8 = global batch 8 (the checkpoint: 2 x 4 = 8)\n"))
      << log;
  ASSERT_EQ(run_command(mpirun(2) + TL_CLI + common + " --epochs 3 -b 2 --resume", &log), 0) << log;
  EXPECT_TRUE(contains(log, "resumed " + d + "/run/last.ckpt at epoch 3, batch 0")) << log;
  EXPECT_TRUE(contains(log, "resuming with 2 process(es) x batch 2 = global batch 4 (the checkpoint: 1 x 8 = 8); "
                            "the lr is not scaled (--lr 0.01)")) << log;
  const std::vector<nlohmann::json> m = read_jsonl(d + "/run/metrics.jsonl");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0]["train"]["count"], 32);
  EXPECT_EQ(m[2]["train"]["count"], 32);
}
