// The native .pth reader (io/pth.h, io/pickle.h) and models::read_weights_file: every layout, dtype and view
// compared value by value with what PyTorch saved (tests/torch_ref/fx_pth.py), content sniffing, and hostile
// files (pickled code, foreign globals, out-of-range offsets and strides, a zip bomb, truncation at every byte,
// deep nesting, huge memo indices and lengths) refused with a clear message without running anything.
// End to end: `tlengine train --weights init.pth` and the same logits from the .pth and the converted .bin.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/npy.h"
#include "io/pickle.h"
#include "io/pth.h"
#include "io/synthetic.h"
#include "models/convert.h"
#include "models/model.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;
namespace fs = std::filesystem;
using namespace std::string_literals;

namespace {
const std::string& pth_dir() {
  static const std::string d = [] {
    fixture("pth");  // fx_pth.py writes the .pth files beside its fixture
    return std::string(TL_FIXTURE_DIR) + "/pth/";
  }();
  return d;
}
std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
// Every tensor of `file` equals the fixture's "<prefix><name>" (values and shape), in the fixture's order.
void expect_saved_values(const io::TensorFile& file, const std::string& prefix, const std::string& what) {
  const io::TensorFile& ref = fixture("pth");
  std::vector<std::string> expected_names;
  for (const std::string& n : ref.names)
    if (n.rfind(prefix, 0) == 0) expected_names.push_back(n.substr(prefix.size()));
  ASSERT_FALSE(expected_names.empty()) << prefix;
  EXPECT_EQ(file.names, expected_names) << what;
  for (const std::string& n : expected_names) {
    if (!file.has(n)) continue;
    const Tensor& want = ref.at(prefix + n);
    EXPECT_EQ(file.at(n).shape(), want.shape()) << what << " " << n;
    EXPECT_EQ(file.at(n).to_doubles(), want.to_doubles()) << what << " " << n;
  }
}
std::string read_error(const std::string& file) {
  return error_of([&] { io::read_pth(pth_dir() + file); });
}
std::string unpickle_error(const std::string& bytes) {
  return error_of([&] { io::pickle::unpickle(bytes.data(), bytes.size()); });
}
}  // namespace

TEST(Pth, ResNet18BothLayoutsMatchPyTorch) {
  if (!io::pth_zip_supported()) {
    EXPECT_TRUE(contains(read_error("resnet18_zip.pth"), "no libzip")) << read_error("resnet18_zip.pth");
  } else {
    io::TensorFile z = io::read_pth(pth_dir() + "resnet18_zip.pth");
    expect_saved_values(z, "r18.", "zip");
    EXPECT_EQ(z.at("conv1.weight").dtype(), DType::F32);
    EXPECT_EQ(z.at("bn1.num_batches_tracked").dtype(), DType::I64);
  }
  expect_saved_values(io::read_pth(pth_dir() + "resnet18_legacy.pth"), "r18.", "legacy");
}

TEST(Pth, DtypesViewsAndSharedStorages) {
  for (const std::string layout : {"zip", "legacy", "p4_zip", "p4_legacy"}) {
    if (contains(layout, "zip") && !io::pth_zip_supported()) continue;
    io::TensorFile f = io::read_pth(pth_dir() + "misc_" + layout + ".pth");
    expect_saved_values(f, "misc.", layout);
    const std::map<std::string, DType> dtypes = {
        {"f32", DType::F32}, {"f16", DType::F16}, {"bf16", DType::BF16}, {"f64", DType::F64}, {"i64", DType::I64},
        {"i32", DType::I32}, {"i16", DType::I32}, {"i8", DType::I32},    {"u8", DType::I32},  {"bool", DType::I32},
        {"transposed", DType::F32}, {"param", DType::F32}};
    for (const auto& [name, dt] : dtypes) EXPECT_EQ(f.at(name).dtype(), dt) << layout << " " << name;
    // Exact int64 beyond float32 and int32 (the fixture holds them as float64).
    EXPECT_EQ(f.at("i64").to_doubles()[3], 1125899906842625.0) << layout;
    EXPECT_EQ(f.at("transposed").shape(), (Shape{7, 5}));
    EXPECT_EQ(f.at("scalar").shape(), Shape{});
    EXPECT_EQ(f.at("empty").shape(), (Shape{0, 3}));
    // The shared storage became two independent contiguous tensors.
    EXPECT_NE(f.at("shared_a").data(), f.at("shared_b").data());
    EXPECT_EQ(f.at("shared_a").to_doubles()[4], f.at("shared_b").to_doubles()[0]);
  }
  if (io::pth_zip_supported()) {  // re-zipped with deflate (torch stores): still read, within the budget
    io::TensorFile a = io::read_pth(pth_dir() + "deflated_ok.pth"), b = io::read_pth(pth_dir() + "small_zip.pth");
    EXPECT_EQ(a.names, b.names);
    for (const auto& n : b.names) EXPECT_EQ(a.at(n).to_doubles(), b.at(n).to_doubles()) << n;
  }
}

// A safetensors file whose header length has 0x80 as its first byte (1 file in 256: here with non-UTF-8 class
// names, found by the fault tests) is safetensors, not a pickle.
TEST(Pth, SafetensorsWhoseHeaderLengthStartsWith0x80IsNotTakenForAPickle) {
  const std::string path = test_dir("pth_sniff_0x80") + ".bin";
  int tried = 0;
  for (std::string pad;; pad += "x") {
    ASSERT_LT(++tried, 600) << "no padding gave a header length with low byte 0x80";
    io::write_safetensors(path, {{"fc.weight", Tensor::full({2, 3}, 1.5)}}, {{"pad", pad}});
    std::ifstream f(path, std::ios::binary);
    const int first = f.get();
    if (first != 0x80) continue;
    const io::TensorFile t = models::read_weights_file(path);
    ASSERT_TRUE(t.has("fc.weight"));
    EXPECT_EQ(t.at("fc.weight").to_doubles(), std::vector<double>(6, 1.5));
    break;
  }
  std::filesystem::remove(path);
}

TEST(Pth, ReadWeightsFileNormalisesAndDetects) {
  // torchvision's legacy DenseNet download: legacy layout, "norm.1" names, no num_batches_tracked.
  io::TensorFile d = models::read_weights_file(pth_dir() + "densenet121_legacy.pth");
  EXPECT_EQ(d.metadata.at("arch"), "densenet121");
  EXPECT_EQ(d.metadata.at("num_classes"), "1000");
  ASSERT_TRUE(d.has("features.denseblock1.denselayer1.norm1.weight"));
  EXPECT_FALSE(d.has("features.denseblock1.denselayer1.norm.1.weight"));
  expect_saved_values(d, "d121.", "densenet121 legacy");
  auto model = models::create_model("densenet121", 1000, 0);
  models::LoadReport rep = models::load_weights(*model, d);
  EXPECT_TRUE(rep.unexpected.empty() && rep.skipped.empty());

  if (!io::pth_zip_supported()) return;
  // A DataParallel checkpoint dict {"epoch", "best_acc", "arch", "state_dict": {"module.…"}}.
  io::TensorFile c = models::read_weights_file(pth_dir() + "resnet18_ddp_checkpoint.pth");
  EXPECT_EQ(c.metadata.at("arch"), "resnet18");
  EXPECT_EQ(c.metadata.at("num_classes"), "10");
  expect_saved_values(c, "r18.", "checkpoint");
  // By content, not by extension: a .pth named .bin, a plain safetensors file (timm style), a tlengine .bin.
  const std::string dir = test_dir("pth_sniff");
  fs::copy_file(pth_dir() + "resnet18_zip.pth", dir + "/looks_like.bin", fs::copy_options::overwrite_existing);
  EXPECT_EQ(models::read_weights_file(dir + "/looks_like.bin").metadata.at("arch"), "resnet18");
  std::vector<std::pair<std::string, Tensor>> plain;
  for (const auto& n : c.names) plain.emplace_back("module." + n, c.at(n));
  io::write_safetensors(dir + "/plain.safetensors", plain);
  io::TensorFile p = models::read_weights_file(dir + "/plain.safetensors");
  EXPECT_EQ(p.metadata.at("arch"), "resnet18");
  expect_saved_values(p, "r18.", "plain safetensors");
  model = models::create_model("resnet18", 10, 0);
  models::load_weights(*model, c);
  models::save_weights(*model, dir + "/tl.bin", {}, {{"arch", "resnet18"}});
  EXPECT_EQ(models::read_weights_file(dir + "/tl.bin").metadata.at("format"), "tlengine");
  // Neither: says what it looks like and what to do.
  const std::string e = error_of([&] { models::read_weights_file(pth_dir() + "not_weights.txt.pth"); });
  EXPECT_TRUE(contains(e, "not_weights.txt.pth") && contains(e, "HTML page") && contains(e, "torch.save")) << e;
  std::ofstream(dir + "/empty.bin").close();
  EXPECT_TRUE(contains(error_of([&] { models::read_weights_file(dir + "/empty.bin"); }), "empty file"));
}

TEST(Pth, RefusesCodeAndForeignGlobalsWithoutRunningThem) {
  const std::string marker = pth_dir() + "exploit_ran";
  fs::remove(marker);
  for (const std::string layout : {"zip", "legacy"}) {
    if (layout == "zip" && !io::pth_zip_supported()) continue;
    std::string e = read_error("exploit_system_" + layout + ".pth");
    EXPECT_TRUE(contains(e, "refused: the file calls posix.system") && contains(e, "never runs code") &&
                contains(e, "exploit_system_" + layout + ".pth")) << e;
    e = read_error("exploit_eval_" + layout + ".pth");
    // Protocol 2 pickles name the module __builtin__ (Python 2 compatible), protocol 3+ builtins.
    EXPECT_TRUE(contains(e, "calls __builtin__.eval, which a state dict never needs") ||
                contains(e, "calls builtins.eval, which a state dict never needs")) << e;
  }
  EXPECT_FALSE(fs::exists(marker)) << "pickled code was executed";
  if (!io::pth_zip_supported()) return;
  const std::string c = read_error("global_counter.pth");
  EXPECT_TRUE(contains(c, "calls collections.Counter")) << c;
  const std::string m = read_error("whole_module.pth");
  EXPECT_TRUE(contains(m, "torch.nn.modules.linear.Linear") && contains(m, "model.state_dict()")) << m;
}

TEST(Pth, RefusesOutOfRangeViewsBombsAndShortEntries) {
  for (const std::string layout : {"zip", "legacy"}) {
    if (layout == "zip" && !io::pth_zip_supported()) continue;
    std::string e = read_error("offset_past_end_" + layout + ".pth");
    EXPECT_TRUE(contains(e, "reaches element 103 of its storage") && contains(e, "4 elements")) << e;
    e = read_error("stride_outside_" + layout + ".pth");
    EXPECT_TRUE(contains(e, "'w' (shape [2, 2], offset 0) reaches element 5")) << e;
    e = read_error("expand_bomb_" + layout + ".pth");
    EXPECT_TRUE(contains(e, "tensor 'w' (shape [1099511627776]) takes the tensors past")) << e;
  }
  if (!io::pth_zip_supported()) return;
  std::string e = read_error("zip_bomb.pth");
  EXPECT_TRUE(contains(e, "expands to 268435456 bytes") && contains(e, "zip bomb")) << e;
  e = read_error("short_entry.pth");
  EXPECT_TRUE(contains(e, "holds 20 bytes but its tensors expect 24")) << e;
}

TEST(Pth, TruncatedAtEveryByteIsRefused) {
  for (const std::string file : {"small_zip.pth", "small_legacy.pth", "misc_legacy.pth"}) {
    if (file == "small_zip.pth" && !io::pth_zip_supported()) continue;
    const std::string bytes = bytes_of(pth_dir() + file);
    ASSERT_GT(bytes.size(), 300u);
    EXPECT_NO_THROW(io::read_pth_memory(bytes.data(), bytes.size(), file));
    int refused = 0;
    for (size_t cut = 0; cut < bytes.size(); ++cut) {
      std::string copy = bytes.substr(0, cut);  // exactly `cut` bytes owned, so reads past them are caught by ASan
      try {
        io::read_pth_memory(copy.data(), copy.size(), file);
        ADD_FAILURE() << file << " cut at " << cut << " was accepted";
      } catch (const IOError& err) {
        refused += contains(err.what(), file);
      }
    }
    EXPECT_EQ(refused, static_cast<int>(bytes.size())) << file << ": every message names the file";
  }
}

TEST(Pth, PickleLimits) {
  const std::string proto = "\x80\x02"s;
  // Deeply nested lists: refused by depth, long before any stack limit.
  std::string nested = proto + std::string(5000, ']') + std::string(4999, 'a') + ".";
  EXPECT_TRUE(contains(unpickle_error(nested), "nests containers deeper than 200")) << unpickle_error(nested);
  std::string tuples = proto + std::string(5000, '(') + std::string(5000, 't') + ".";
  EXPECT_TRUE(contains(unpickle_error(tuples), "deeper than")) << unpickle_error(tuples);
  // A flood of stack entries.
  io::pickle::Limits small;
  small.max_stack = 1000;
  std::string flood = proto + std::string(2000, 'N') + ".";
  EXPECT_TRUE(contains(error_of([&] { io::pickle::unpickle(flood.data(), flood.size(), small); }), "stack exceeds"));
  // Huge memo indices are just keys; reading one never stored is refused.
  std::string memo = proto + "Nr\xff\xff\xff\xffj\xfe\xff\xff\xff."s;
  EXPECT_TRUE(contains(unpickle_error(memo), "memo index 4294967294")) << unpickle_error(memo);
  std::string memo_ok = proto + "Nr\xff\xff\xff\xff" "0j\xff\xff\xff\xff."s;
  EXPECT_EQ(io::pickle::unpickle(memo_ok.data(), memo_ok.size()).root_object().kind, io::pickle::Kind::None);
  // Lengths larger than the input.
  std::string str = proto + "X\xff\xff\xff\x7f" "abc"s;
  EXPECT_TRUE(contains(unpickle_error(str), "needs 2147483647 bytes but only 3 remain")) << unpickle_error(str);
  std::string str8 = proto + "\x8d" + std::string(7, '\xff') + "\x7f" + "abc";
  EXPECT_TRUE(contains(unpickle_error(str8), "needs 9223372036854775807 bytes")) << unpickle_error(str8);
  std::string frame = proto + "\x95" + std::string(8, '\xff');
  EXPECT_TRUE(contains(unpickle_error(frame), "truncated")) << unpickle_error(frame);
  // Opcodes a state dict never uses (INST, OBJ) and code-running globals.
  EXPECT_TRUE(contains(unpickle_error(proto + "ios\nsystem\n."), "opcode 0x69"));
  EXPECT_TRUE(contains(unpickle_error(proto + "cbuiltins\ngetattr\n."), "calls builtins.getattr"));
  EXPECT_TRUE(contains(unpickle_error(proto + "X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93."s), "calls os.system"));
  // Through the file reader: the name first.
  const std::string e = error_of([&] { io::read_pth_memory(nested.data(), nested.size(), "nested.pth"); });
  EXPECT_TRUE(contains(e, "nested.pth: refused")) << e;
  // Python 2.7 pickled OrderedDict as OrderedDict([[key, value], ...]) (torchvision's oldest downloads).
  std::string py2 = proto + "ccollections\nOrderedDict\n](](U\x01" "aK\x05" "e](U\x01" "bK\x06" "ee\x85R."s;
  io::pickle::Unpickled od = io::pickle::unpickle(py2.data(), py2.size());
  ASSERT_EQ(od.root_object().kind, io::pickle::Kind::Dict);
  ASSERT_NE(od.find(od.root_object(), "b"), nullptr);
  EXPECT_EQ(od.find(od.root_object(), "b")->i, 6);
  std::string od_bad = proto + "ccollections\nOrderedDict\nK\x01K\x02\x86R."s;
  EXPECT_TRUE(contains(unpickle_error(od_bad), "called with 2 arguments")) << unpickle_error(od_bad);
  // A well-formed pickle of allowed values.
  std::string ok = proto + "}q\x00(X\x01\x00\x00\x00" "aK\x05X\x01\x00\x00\x00" "b]q\x01(\x88\x89" "eu."s;
  io::pickle::Unpickled u = io::pickle::unpickle(ok.data(), ok.size());
  ASSERT_NE(u.find(u.root_object(), "a"), nullptr);
  EXPECT_EQ(u.find(u.root_object(), "a")->i, 5);
  EXPECT_EQ(u.find(u.root_object(), "b")->items.size(), 2u);
}

// `tlengine train --weights init.pth`: runs; the model loaded from the .pth and from the converted .bin give the
// same logits; a .pth with pickled code is refused before anything runs.
TEST(Pth, TrainFromPthAndSameLogitsAsConvertedBin) {
  const std::string layout = io::pth_zip_supported() ? "zip" : "legacy";  // legacy needs no libzip
  const std::string d = test_dir("pth_train");
  fs::remove_all(d + "/run");
  io::SyntheticOptions s;
  s.num_classes = 4;
  s.train_per_class = 4;
  s.val_per_class = 2;
  s.min_side = 40;
  s.max_side = 48;
  s.format = "png";
  io::write_synthetic_image_folder(d + "/data", s);
  const std::string common = std::string(TL_CLI) + " train --data " + d + "/data --arch resnet18 --epochs 1 "
                             "--batch-size 8 --image-size 32 --val-transform resize --no-augment --workers 2 "
                             "--device cpu --schedule constant --lr 0.01 ";
  std::string log;
  const std::string init = pth_dir() + "resnet18_" + layout + ".pth";
  ASSERT_EQ(run_command(common + "--weights " + init + " --out " + d + "/run", &log), 0) << log;
  EXPECT_TRUE(contains(log, "resnet18_" + layout + ".pth") && contains(log, "loaded")) << log;
  EXPECT_TRUE(fs::exists(d + "/run/best.bin"));

  const std::string marker = pth_dir() + "exploit_ran";
  fs::remove(marker);
  const std::string exploit = pth_dir() + "exploit_system_" + layout + ".pth";
  EXPECT_NE(run_command(common + "--weights " + exploit + " --out " + d + "/bad", &log), 0);
  EXPECT_TRUE(contains(log, "refused: the file calls posix.system")) << log;
  EXPECT_FALSE(fs::exists(marker)) << "pickled code was executed";
  EXPECT_NE(run_command(std::string(TL_CONVERT_PTH) + " " + pth_dir() + "exploit_system_legacy.pth " + d + "/x.bin",
                        &log), 0);
  EXPECT_TRUE(contains(log, "refused")) << log;
  EXPECT_FALSE(fs::exists(marker)) << "pickled code was executed";

  ASSERT_EQ(run_command(std::string(TL_CONVERT_PTH) + " " + pth_dir() + "resnet18_legacy.pth " + d + "/r18.bin", &log),
            0) << log;
  auto from_pth = models::create_model("resnet18", 10, 7), from_bin = models::create_model("resnet18", 10, 8);
  models::load_weights(*from_pth, init);
  models::load_weights(*from_bin, d + "/r18.bin");
  from_pth->eval();
  from_bin->eval();
  const Tensor x = Tensor::randn({2, 3, 32, 32}, 3);
  const Tensor a = from_pth->forward(Variable(x)).value(), b = from_bin->forward(Variable(x)).value();
  EXPECT_EQ(a.to_doubles(), b.to_doubles());
  double largest = 0;
  for (double v : a.to_doubles()) largest = std::max(largest, std::abs(v));
  EXPECT_GT(largest, 0.0);
  // predict and eval open the .pth too (arch detected from the keys).
  io::write_npy(d + "/x.npy", x);
  ASSERT_EQ(run_command(std::string(TL_CLI) + " predict --weights " + pth_dir() + "resnet18_legacy.pth --npy " + d +
                            "/x.npy --logits " + d + "/logits.npy --device cpu", &log), 0) << log;
  // predict runs float32 CPU models in conv2d_cpu_float32_layout() (NHWC with oneDNN), this forward in NCHW: other
  // kernels, another summation order, so the float32 bound.
  expect_close(io::read_npy(d + "/logits.npy"), a, kTorchTol, "predict logits from the .pth");
  // eval reads it; a .pth carries no class names, so a folder of other classes is refused for that reason only.
  EXPECT_NE(run_command(std::string(TL_CLI) + " eval --weights " + init + " --data " + d +
                            "/data --split val --image-size 32 --device cpu", &log), 0);
  EXPECT_TRUE(contains(log, "differ from the ones the weights were trained on (10)")) << log;
}
