// Faults that must lose nothing (issue #8): a full disk or file-size limit while writing weights and checkpoints,
// an output folder that cannot be written, a read-only data folder, image files that vanish or get truncated
// between epochs, symlink loops in the data folder, file and class names that are not UTF-8, and weights holding
// NaN or infinite values.
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/dataset.h"
#include "io/files.h"
#include "io/loader.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "io/synthetic.h"
#include "io/utf8.h"
#include "models/registry.h"
#include "models/weights.h"
#include "train/predict.h"
#include "train/report.h"
#include "train/state_dict.h"
#include "train/trainer.h"
#include "tl_testing.h"
#include "tl_training.h"

using namespace tl;
using namespace tl::testing;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
bool any_tmp_file(const std::string& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().extension() == ".tmp") return true;
  return false;
}

// While alive, files of this process cannot grow past `bytes`: write() fails with EFBIG (SIGXFSZ is ignored),
// as it fails with ENOSPC on a full disk. Needs no privileges and no mount.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit l = old_;
    l.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &l);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_{};
  sighandler_t old_handler_;
};

// Class folders of small PNGs: root/<split>/<class>/<file>.
void write_pngs(const std::string& root, const std::vector<std::string>& classes,
                const std::vector<std::string>& files, const std::vector<std::string>& splits = {"train", "val"}) {
  for (const std::string& split : splits)
    for (size_t c = 0; c < classes.size(); ++c) {
      const std::string dir = root + "/" + split + "/" + classes[c];
      fs::create_directories(dir);
      for (size_t i = 0; i < files.size(); ++i)
        io::write_image(dir + "/" + files[i], io::synthetic_image(static_cast<int>(c), 20, 24, i * 7 + c));
    }
}

train::TrainOptions tiny(const std::string& data, const std::string& out) {
  return tiny_training(data, out, 16, 1, 4, 1);
}

std::string cli() { return std::string(TL_CLI); }

bool can_unshare_mounts() { return run_command("unshare -m true") == 0; }

}  // namespace

// ---- 0. Host out of memory ---------------------------------------------------------------------------------------

// A step that does not fit the process's memory (ulimit -v) ends with exit code 2, says the host ran out of memory
// and which batch size to try, instead of crashing.
TEST(Faults, HostOutOfMemoryGivesAClearMessageAndExitCode) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves more address space than the limit allows";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  GTEST_SKIP() << "AddressSanitizer reserves more address space than the limit allows";
#endif
#endif
  std::string out;
  const int rc = run_command("bash -c 'ulimit -v 3000000; CUDA_VISIBLE_DEVICES= " + cli() +
                                 " bench --model resnet50 --mode full --batch 256 --warmup 0 --steps 1 --device cpu' 2>&1",
                             &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_TRUE(contains(out, "host out of memory")) << out;
  EXPECT_TRUE(contains(out, "try --batch-size 128")) << out;
}

// ---- 1. Disk full / file-size limit during an atomic write -------------------------------------------------------

TEST(Faults, AtomicWriteHittingTheFileSizeLimitKeepsTheOldFile) {
  const std::string d = fresh_dir("faults_fsize");
  const std::string path = d + "/data.bin";
  io::write_file_atomic(path, "old contents", 12);
  const std::string big(200000, 'x');
  std::string err;
  {
    FileSizeLimit limit(65536);
    err = error_of([&] { io::write_file_atomic(path, big.data(), big.size()); });
  }
  EXPECT_TRUE(contains(err, path)) << err;
  EXPECT_TRUE(contains(err, "File too large")) << err;
  EXPECT_TRUE(contains(err, "200000 bytes")) << err;  // what it needed
  EXPECT_TRUE(contains(err, "free on the filesystem of")) << err;
  EXPECT_TRUE(contains(err, "ulimit -f")) << err;
  EXPECT_EQ(slurp(path), "old contents");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  // Without the limit the same write goes through.
  io::write_file_atomic(path, big.data(), big.size());
  EXPECT_EQ(slurp(path), big);
}

TEST(Faults, CheckpointAndWeightsWritesFailCleanlyAndThePreviousFilesStillLoad) {
  const std::string d = fresh_dir("faults_fsize_ckpt");
  auto model = models::create_model("resnet18", 3, 1);
  const std::string best = d + "/best.bin", last = d + "/last.ckpt";
  models::save_weights(*model, best, {"a", "b", "c"});
  train::StateDict sd;
  sd.tensors["w"] = Tensor::full({1 << 18}, 1.0);
  sd.set_int("epoch", 1);
  train::save_state_dict(last, sd);
  const std::string best_before = slurp(best), last_before = slurp(last);

  auto model2 = models::create_model("resnet18", 3, 2);
  sd.tensors["w"] = Tensor::full({1 << 18}, 2.0);
  sd.set_int("epoch", 2);
  std::string err_best, err_last;
  {
    FileSizeLimit limit(1 << 20);  // 1 MiB: both files are larger
    err_best = error_of([&] { models::save_weights(*model2, best, {"a", "b", "c"}); });
    err_last = error_of([&] { train::save_state_dict(last, sd); });
  }
  EXPECT_TRUE(contains(err_best, best) && contains(err_best, "File too large")) << err_best;
  EXPECT_TRUE(contains(err_last, last) && contains(err_last, "File too large")) << err_last;
  EXPECT_EQ(slurp(best), best_before);
  EXPECT_EQ(slurp(last), last_before);
  EXPECT_FALSE(any_tmp_file(d));
  auto check = models::create_model("resnet18", 3, 3);
  EXPECT_EQ(models::load_weights(*check, best).loaded.size(), model->state().size());
  EXPECT_EQ(train::load_state_dict(last).get_int("epoch"), 1);
  // .npy (predict --logits) goes through the same writer.
  const std::string npy = d + "/x.npy";
  io::write_npy(npy, Tensor::full({4}, 1.0));
  {
    FileSizeLimit limit(4096);
    EXPECT_TRUE(contains(error_of([&] { io::write_npy(npy, Tensor::full({1 << 16}, 2.0)); }), npy));
  }
  EXPECT_EQ(io::read_npy(npy).numel(), 4);
}

// A real full disk: a 256 KiB tmpfs (needs CAP_SYS_ADMIN; skipped where mounting is not allowed).
TEST(Faults, DiskFullOnATmpfsNamesTheFileAndTheFreeSpace) {
  const std::string d = fresh_dir("faults_tmpfs");
  if (::mount("tmpfs", d.c_str(), "tmpfs", 0, "size=256k") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "); the file-size-limit tests cover it";
  struct Unmount {
    std::string dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{d};
  const std::string path = d + "/last.ckpt";
  io::write_file_atomic(path, "previous", 8);
  const std::string big(400 << 10, 'y');
  const std::string err = error_of([&] { io::write_file_atomic(path, big.data(), big.size()); });
  EXPECT_TRUE(contains(err, path) && contains(err, "No space left on device")) << err;
  EXPECT_TRUE(contains(err, std::to_string(big.size()) + " bytes")) << err;
  EXPECT_TRUE(contains(err, "free on the filesystem of '" + d + "'")) << err;
  EXPECT_EQ(slurp(path), "previous");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  // The metrics log: a line that does not fit is cut off again, the earlier lines stay parseable.
  {
    train::JsonLinesWriter log(d + "/metrics.jsonl");
    log.write({{"epoch", 1}});
    const std::string fill(300 << 10, 'z');
    EXPECT_TRUE(contains(error_of([&] { log.write({{"fill", fill}}); }), "metrics.jsonl"));
  }
  EXPECT_EQ(slurp(d + "/metrics.jsonl"), "{\"epoch\":1}\n");
}

// The CLI: a run that cannot write its checkpoint exits non-zero with the file named; the previous checkpoint stays
// and the run can be resumed once there is room.
TEST(Faults, CliTrainingThatCannotWriteItsCheckpointFailsAndKeepsThePreviousOne) {
  const std::string d = fresh_dir("faults_cli_fsize");
  write_pngs(d + "/data", {"a", "b"}, {"0.png", "1.png", "2.png", "3.png"});
  const std::string out = d + "/run";
  const std::string args = " train --data " + d + "/data --out " + out +
                           " --arch resnet18 --image-size 16 --batch-size 4 --workers 1 --device cpu --lr 0.01"
                           " --schedule constant --no-augment --seed 3";
  std::string log;
  ASSERT_EQ(run_command(cli() + args + " --epochs 1", &log), 0) << log;
  const std::string last_before = slurp(out + "/last.ckpt");
  // bash: SIGXFSZ ignored (inherited through exec), file size limit 1 MiB (ulimit counts 1024-byte blocks).
  const int rc = run_command("bash -c \"trap '' XFSZ; ulimit -f 1024; exec " + cli() + args +
                                 " --epochs 2 --resume\"",
                             &log);
  EXPECT_NE(rc, 0) << log;
  EXPECT_TRUE(contains(log, "File too large")) << log;
  EXPECT_TRUE(contains(log, out + "/best.bin") || contains(log, out + "/last.ckpt")) << log;
  EXPECT_EQ(slurp(out + "/last.ckpt"), last_before);
  EXPECT_FALSE(any_tmp_file(out));
  ASSERT_EQ(run_command(cli() + args + " --epochs 2 --resume", &log), 0) << log;
  EXPECT_EQ(train::load_state_dict(out + "/last.ckpt").get_int("epoch"), 2);
}

// ---- 2. An output folder that cannot be written ------------------------------------------------------------------

TEST(Faults, UnwritableOutFolderFailsBeforeAnyWorkNamingTheFolder) {
  const std::string d = fresh_dir("faults_out");
  std::ofstream(d + "/a_file") << "x";
  std::ostringstream log;
  // The data folder does not exist: the --out error must come first, before data or model are touched.
  train::TrainOptions o = tiny(d + "/no_data_here", d + "/a_file/run");
  std::string err = error_of([&] { train::run_training(o, log); });
  EXPECT_TRUE(contains(err, "--out") && contains(err, d + "/a_file/run") && contains(err, "is a file")) << err;
  o.out = d + "/a_file";
  err = error_of([&] { train::run_training(o, log); });
  EXPECT_TRUE(contains(err, "--out '" + d + "/a_file' is a file")) << err;
  EXPECT_EQ(log.str(), "");
  EXPECT_TRUE(contains(error_of([&] { io::ensure_writable_folder("", "--out"); }), "empty"));
  io::ensure_writable_folder(d + "/new/deeper", "--out");  // created, probe removed
  EXPECT_TRUE(fs::is_directory(d + "/new/deeper"));
  EXPECT_TRUE(fs::is_empty(d + "/new/deeper"));
}

// A read-only filesystem (a read-only bind mount in a private mount namespace: root cannot write there either,
// unlike a chmod'ed folder). Skipped where unshare is not allowed.
TEST(Faults, CliOutFolderOnAReadOnlyFilesystemFailsAtOnce) {
  if (!can_unshare_mounts()) GTEST_SKIP() << "unshare -m is not allowed here";
  const std::string d = fresh_dir("faults_out_ro");
  write_pngs(d + "/data", {"a", "b"}, {"0.png", "1.png"});
  fs::create_directories(d + "/ro");
  std::string log;
  const int rc = run_command("unshare -m sh -c 'mount --bind -o ro " + d + "/ro " + d + "/ro && exec " + cli() +
                                 " train --data " + d + "/data --out " + d +
                                 "/ro/run --device cpu --image-size 16 --epochs 1'",
                             &log);
  EXPECT_EQ(rc, 1) << log;
  EXPECT_TRUE(contains(log, "--out '" + d + "/ro/run'") && contains(log, "Read-only file system")) << log;
  EXPECT_FALSE(contains(log, "data:")) << log;  // nothing else happened first
}

// ---- 3. A read-only data folder ----------------------------------------------------------------------------------

TEST(Faults, TrainingWritesNothingIntoTheDataFolder) {
  const std::string d = fresh_dir("faults_data_ro");
  write_pngs(d + "/data", {"a", "b"}, {"0.png", "1.png", "2.png"});
  auto listing = [&] {
    std::map<std::string, std::pair<uintmax_t, fs::file_time_type>> m;
    m[d + "/data"] = {0, fs::last_write_time(d + "/data")};
    for (const auto& e : fs::recursive_directory_iterator(d + "/data"))
      m[e.path().string()] = {e.is_regular_file() ? e.file_size() : 0, e.last_write_time()};
    return m;
  };
  const auto before = listing();
  std::ostringstream log;
  train::TrainOptions o = tiny(d + "/data", d + "/run");
  o.epochs = 2;
  train::run_training(o, log);
  train::EvalOptions eo;
  eo.weights = d + "/run/best.bin";
  eo.data = d + "/data";
  eo.device = "cpu";
  eo.image_size = 16;
  eo.val_transform = "resize";
  train::run_eval(eo, log);
  EXPECT_EQ(listing(), before);
  // And for real: the same run on a read-only bind mount of the data.
  if (!can_unshare_mounts()) GTEST_SKIP() << "unshare -m is not allowed here";
  std::string out;
  const int rc = run_command("unshare -m sh -c 'mount --bind -o ro " + d + "/data " + d + "/data && exec " + cli() +
                                 " train --data " + d + "/data --out " + d +
                                 "/run_ro --device cpu --image-size 16 --batch-size 4 --workers 1 --epochs 1'",
                             &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(fs::exists(d + "/run_ro/best.bin")) << out;
  EXPECT_EQ(listing(), before);
}

// ---- 4. Files that disappear or get truncated between epochs -----------------------------------------------------

TEST(Faults, ImageThatVanishesOrIsTruncatedMidRunIsNamedThenThePolicyApplies) {
  const std::string d = fresh_dir("faults_vanish");
  write_pngs(d, {"a", "b"}, {"0.png", "1.png", "2.png", "3.png"}, {"train"});
  const io::ImageFolder folder = io::scan_image_folder(d + "/train");
  for (io::OnBadImage policy : {io::OnBadImage::Fail, io::OnBadImage::Skip}) {
    write_pngs(d, {"a", "b"}, {"0.png", "1.png", "2.png", "3.png"}, {"train"});  // all back in place
    io::LoaderOptions lo;
    lo.batch_size = 3;
    lo.num_workers = 2;
    lo.on_bad_image = policy;
    lo.pinned = false;
    io::DataLoader loader(folder.samples, io::eval_resize_transform(16), lo);
    auto run_epoch = [&](int64_t epoch) {
      loader.start_epoch(epoch);
      int64_t n = 0;
      while (const io::Batch* b = loader.next()) n += b->size;
      return n;
    };
    EXPECT_EQ(run_epoch(0), 8);
    const std::string gone = d + "/train/a/1.png", cut = d + "/train/b/2.png";
    fs::remove(gone);
    const std::string bytes = slurp(cut);
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 3);
    if (policy == io::OnBadImage::Fail) {
      const std::string err = error_of([&] { run_epoch(1); });
      EXPECT_TRUE(contains(err, gone) && contains(err, "No such file")) << err;
      EXPECT_TRUE(contains(err, "--on-bad-image skip")) << err;
    } else {
      EXPECT_EQ(run_epoch(1), 6);
      ASSERT_EQ(loader.skipped().size(), 2u);
      const std::string report = loader.skipped_report();
      EXPECT_TRUE(contains(report, gone) && contains(report, "No such file")) << report;
      EXPECT_TRUE(contains(report, cut)) << report;
    }
  }
}

// ---- 5. Symlink loops --------------------------------------------------------------------------------------------

TEST(Faults, SymlinkLoopsInTheDataFolderNeitherHangNorCrash) {
  const std::string d = fresh_dir("faults_symlinks");
  write_pngs(d, {"a", "b"}, {"0.png", "1.png"}, {"train"});
  fs::create_directory_symlink("..", d + "/train/a/up");          // a/up -> train: loops back above a/
  fs::create_directory_symlink(".", d + "/train/b/here");         // b/here -> b itself
  fs::create_symlink("self.png", d + "/train/b/self.png");        // a file symlink to itself (ELOOP on open)
  fs::create_directory_symlink("loop2", d + "/train/a/loop1");    // loop1 -> loop2 -> loop1: unresolvable, so
                                                                  // a file without an image extension (ignored)
  fs::create_directory_symlink("loop1", d + "/train/a/loop2");
  const io::ImageFolder f = io::scan_image_folder(d + "/train");
  EXPECT_EQ(f.classes, (std::vector<std::string>{"a", "b"}));
  std::vector<std::string> paths;
  for (const io::Sample& s : f.samples) paths.push_back(s.path);
  EXPECT_EQ(paths, (std::vector<std::string>{d + "/train/a/0.png", d + "/train/a/1.png", d + "/train/b/0.png",
                                             d + "/train/b/1.png", d + "/train/b/self.png"}));
  ASSERT_EQ(f.not_followed.size(), 2u);
  std::string all;
  for (const std::string& s : f.not_followed) all += s + "\n";
  EXPECT_TRUE(contains(all, d + "/train/a/up: symlink loop")) << all;
  EXPECT_TRUE(contains(all, d + "/train/b/here: symlink loop")) << all;
  // The looping file is a sample like in torchvision; reading it fails with its name, and --on-bad-image decides.
  io::LoaderOptions lo;
  lo.batch_size = 8;
  lo.num_workers = 1;
  lo.pinned = false;
  {
    io::DataLoader loader(f.samples, io::eval_resize_transform(16), lo);
    loader.start_epoch(0);
    const std::string err = error_of([&] { loader.next(); });
    EXPECT_TRUE(contains(err, "self.png") && contains(err, "symbolic links")) << err;
  }
  lo.on_bad_image = io::OnBadImage::Skip;
  io::DataLoader loader(f.samples, io::eval_resize_transform(16), lo);
  loader.start_epoch(0);
  ASSERT_NE(loader.next(), nullptr);
  EXPECT_EQ(loader.skipped().size(), 1u);
  // load_splits reports the links it left out in its description (printed by `tlengine train`).
  const io::DataSplits s = io::load_splits(d, 0.5, 0);
  EXPECT_TRUE(contains(s.description, "2 folder symlinks not followed")) << s.description;
  // A class folder that links back to the root is a loop too: an empty class, named in the error.
  fs::create_directory_symlink(".", d + "/train/c");
  const std::string err = error_of([&] { io::scan_image_folder(d + "/train"); });
  EXPECT_TRUE(contains(err, "'c'")) << err;
}

// ---- 6. Names that are not UTF-8 ---------------------------------------------------------------------------------

TEST(Faults, Utf8EscapingAndLosslessNameLists) {
  EXPECT_TRUE(io::is_valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x88"));
  for (const char* bad : {"\xff", "caf\xe9", "\xc3", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80"})
    EXPECT_FALSE(io::is_valid_utf8(bad)) << bad;
  EXPECT_EQ(io::printable("caf\xe9 \xff\xfe ok"), "caf\\xe9 \\xff\\xfe ok");
  EXPECT_EQ(io::printable("caf\xc3\xa9"), "caf\xc3\xa9");
  const std::vector<std::string> names = {"plain", "caf\xc3\xa9", "caf\xe9", "back\\slash\xff", "\\x41"};
  const std::string stored = io::encode_names(names);
  EXPECT_TRUE(io::is_valid_utf8(stored));
  EXPECT_EQ(io::decode_names(stored), names);
  EXPECT_EQ(io::encode_names({"a", "b"}), "[\"a\",\"b\"]");  // the usual case is stored as before
  EXPECT_TRUE(contains(error_of([] { io::decode_names("{", "w.bin"); }), "w.bin"));
  EXPECT_TRUE(contains(error_of([] { io::decode_names("[\"/bad\\\\q\"]", "w.bin"); }), "bad escape"));
  // The stream filter used by the CLI.
  std::ostringstream target;
  {
    io::PrintableStreambuf buf(target.rdbuf());
    std::ostream os(&buf);
    os << "file 'img\xff.png' skipped\n" << "caf\xc3\xa9" << std::flush;
  }
  EXPECT_EQ(target.str(), "file 'img\\xff.png' skipped\ncaf\xc3\xa9");
}

TEST(Faults, TrainingEvalAndPredictWorkWithNonUtf8FileAndClassNames) {
  const std::string d = fresh_dir("faults_utf8");
  const std::vector<std::string> classes = {"caf\xe9", "ok"};
  write_pngs(d + "/data", classes, {"img\xff\xfe.png", "b.png", "c.png", "d.png"});
  std::ostringstream log;
  train::TrainOptions o = tiny(d + "/data", d + "/run");
  o.stop_after_steps = 1;
  EXPECT_TRUE(train::run_training(o, log).interrupted);
  o.stop_after_steps = 0;
  o.resume = true;  // the checkpoint's class names must compare equal to the folder's
  o.epochs = 2;
  train::TrainResult r = train::run_training(o, log);
  EXPECT_EQ(r.epochs_done, 2);
  for (std::ifstream f(d + "/run/metrics.jsonl"); f;) {
    std::string line;
    if (std::getline(f, line)) {
      EXPECT_NO_THROW(nlohmann::json::parse(line));
    }
  }
  // The weights keep the exact class names.
  const io::TensorFile best = io::read_safetensors(d + "/run/best.bin");
  EXPECT_EQ(io::decode_names(best.metadata.at("classes")), classes);
  EXPECT_EQ(train::load_model(d + "/run/best.bin").classes, classes);
  // eval (with --json) and predict (JSON and CSV) do not throw; names come out escaped.
  train::EvalOptions eo;
  eo.weights = d + "/run/best.bin";
  eo.data = d + "/data";
  eo.device = "cpu";
  eo.image_size = 16;
  eo.val_transform = "resize";
  eo.json = d + "/eval.json";
  train::run_eval(eo, log);
  EXPECT_NO_THROW(nlohmann::json::parse(slurp(eo.json)));
  train::PredictOptions po;
  po.weights = eo.weights;
  po.inputs = {d + "/data/val"};
  po.device = "cpu";
  po.image_size = 16;
  po.topk = 2;
  std::ostringstream json_out, csv_out;
  train::run_predict(po, json_out, log);
  const nlohmann::json j = nlohmann::json::parse(json_out.str());
  ASSERT_EQ(j.size(), 8u);
  EXPECT_EQ(j[0]["file"], d + "/data/val/caf\\xe9/b.png");
  EXPECT_TRUE(contains(json_out.str(), "img\\\\xff\\\\xfe.png")) << json_out.str();
  EXPECT_TRUE(contains(json_out.str(), "\"caf\\\\xe9\"")) << json_out.str();
  po.format = "csv";
  train::run_predict(po, csv_out, log);
  EXPECT_TRUE(contains(csv_out.str(), "img\\xff\\xfe.png\",1,\"")) << csv_out.str();
  EXPECT_TRUE(io::is_valid_utf8(csv_out.str()));
  // The CLI's messages show the names escaped.
  std::string out;
  ASSERT_EQ(run_command(cli() + " eval --weights " + eo.weights + " --data '" + d + "/data' --device cpu "
                                "--image-size 16 --val-transform resize",
                        &out),
            0)
      << out;
  EXPECT_TRUE(contains(out, "caf\\xe9")) << out;
  EXPECT_TRUE(io::is_valid_utf8(out)) << out;
}

// ---- 7. Weights with NaN or Inf ----------------------------------------------------------------------------------

TEST(Faults, WeightsWithNanOrInfAreRefusedUnlessAllowed) {
  const std::string d = fresh_dir("faults_nonfinite");
  auto model = models::create_model("resnet18", 3, 1);
  std::vector<std::pair<std::string, Tensor>> sd = models::state_dict(*model);
  for (auto& [name, t] : sd) {
    if (name == "layer2.0.conv1.weight") t.data_as<float>()[5] = std::numeric_limits<float>::quiet_NaN();
    if (name == "bn1.running_var") t.data_as<float>()[0] = std::numeric_limits<float>::infinity();
  }
  const std::string path = d + "/bad.bin";
  io::write_safetensors(path, sd, {{"arch", "resnet18"}, {"classes", io::encode_names({"a", "b", "c"})}});
  auto m = models::create_model("resnet18", 3, 2);
  const std::string err = error_of([&] { models::load_weights(*m, path); });
  EXPECT_TRUE(contains(err, path)) << err;
  EXPECT_TRUE(contains(err, "layer2.0.conv1.weight [128, 64, 3, 3]: 1 NaN and 0 infinite")) << err;
  EXPECT_TRUE(contains(err, "bn1.running_var [64]: 0 NaN and 1 infinite")) << err;
  EXPECT_TRUE(contains(err, "--allow-nonfinite-weights")) << err;
  models::LoadOptions allow;
  allow.allow_nonfinite = true;
  EXPECT_EQ(models::load_weights(*m, path, allow).loaded.size(), m->state().size());
  // A half-precision file is checked too.
  io::write_safetensors(d + "/half.bin", {{"fc.bias", Tensor::full({3}, INFINITY).to(DType::BF16)}});
  EXPECT_TRUE(contains(error_of([&] { models::check_finite_weights(io::read_safetensors(d + "/half.bin")); }),
                       "fc.bias"));
  // The CLI: refused by predict, eval and train, accepted with --allow-nonfinite-weights.
  write_pngs(d + "/data", {"a", "b", "c"}, {"0.png"});
  io::write_npy(d + "/x.npy", Tensor::randn({1, 3, 16, 16}, 1));
  std::string out;
  EXPECT_EQ(run_command(cli() + " predict --weights " + path + " --npy " + d + "/x.npy --device cpu", &out), 1);
  EXPECT_TRUE(contains(out, "layer2.0.conv1.weight")) << out;
  EXPECT_EQ(run_command(cli() + " predict --allow-nonfinite-weights --weights " + path + " --npy " + d +
                            "/x.npy --device cpu",
                        &out),
            0)
      << out;
  const std::string eval = cli() + " eval --weights " + path + " --data " + d + "/data --device cpu --image-size 16";
  EXPECT_EQ(run_command(eval, &out), 1);
  EXPECT_TRUE(contains(out, "bn1.running_var")) << out;
  EXPECT_EQ(run_command(eval + " --allow-nonfinite-weights", &out), 0) << out;
  const std::string train = cli() + " train --data " + d + "/data --out " + d + "/run --weights " + path +
                            " --device cpu --image-size 16 --epochs 1 --batch-size 3";
  EXPECT_EQ(run_command(train, &out), 1);
  EXPECT_TRUE(contains(out, "NaN or infinite")) << out;
}
