// tools/convert_pth: accepted state-dict forms, the refusals (pickled code, garbage, unknown or wrong
// architecture), and the bit-exact way back to a .pth that torchvision loads strictly.
#include <filesystem>

#include "io/pth.h"
#include "models/convert.h"
#include "models/model.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

namespace {
// Each test writes its own copy (ctest runs tests in parallel processes).
std::string variants_dir() {
  // model_parity.py writes zip-format files; a build without libzip refuses them (tested in test_pth.cpp).
  if (!io::pth_zip_supported()) return "";
  std::string d = scratch_dir(std::string("convert_") + ::testing::UnitTest::GetInstance()->current_test_info()->name());
  run_torch_script("model_parity.py", "--variants " + d);
  return d;
}
int convert(const std::string& args, std::string* log) {
  return run_command(std::string(TL_CONVERT_PTH) + " " + args, log);
}
}  // namespace

TEST(ConvertKeys, PrefixesAndLegacyDenseNetNames) {
  EXPECT_EQ(models::normalize_key("module.layer1.0.conv1.weight"), "layer1.0.conv1.weight");
  EXPECT_EQ(models::normalize_key("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight");
  EXPECT_EQ(models::normalize_key("features.denseblock4.denselayer16.conv.2.weight"),
            "features.denseblock4.denselayer16.conv2.weight");
  EXPECT_EQ(models::normalize_key("features.norm5.running_var"), "features.norm5.running_var");
  EXPECT_THROW(models::normalize_state({{"a.w", Tensor::zeros({1})}, {"module.a.w", Tensor::zeros({1})}}),
               ValueError);
}

TEST(ConvertKeys, DetectsEveryArchitecture) {
  for (const std::string& arch : models::model_names()) {
    // Slow to initialise (VGG's 100M-parameter classifier): two VGG configurations, with and without batch norm.
    if ((arch.rfind("vgg", 0) == 0 && arch != "vgg11" && arch != "vgg19_bn") || arch == "resnet152" ||
        arch == "densenet201")
      continue;
    auto m = models::create_model(arch, 17, 0);
    std::map<std::string, Shape> shapes;
    for (nn::StateEntry& e : m->state()) shapes[e.name] = e.shape();
    models::DetectedArch d = models::detect_arch(shapes);
    EXPECT_EQ(d.arch, arch);
    EXPECT_EQ(d.num_classes, 17);
  }
  EXPECT_THROW(models::detect_arch({{"foo.weight", {3, 3}}}), ValueError);
}

TEST(ConvertPth, AcceptsCheckpointDdpAndLegacyForms) {
  const std::string d = variants_dir();
  if (d.empty()) GTEST_SKIP() << "built without libzip";
  std::string log;
  ASSERT_EQ(convert(d + "/resnet18_plain.pth " + d + "/r18_plain.bin", &log), 0) << log;
  EXPECT_NE(log.find("resnet18"), std::string::npos) << log;
  EXPECT_NE(log.find("layer4.1.bn2.running_var"), std::string::npos) << "the table lists what was written";
  ASSERT_EQ(convert(d + "/resnet18_ddp_checkpoint.pth " + d + "/r18_ddp.bin", &log), 0) << log;
  ASSERT_EQ(convert(d + "/densenet121_legacy.pth " + d + "/d121_legacy.bin", &log), 0) << log;
  ASSERT_EQ(convert(d + "/densenet121_plain.pth " + d + "/d121_plain.bin", &log), 0) << log;
  // The same tensors whichever form they came in.
  io::TensorFile a = io::read_safetensors(d + "/r18_plain.bin"), b = io::read_safetensors(d + "/r18_ddp.bin");
  EXPECT_EQ(a.names, b.names);
  for (const auto& n : a.names) EXPECT_EQ(a.at(n).to_doubles(), b.at(n).to_doubles()) << n;
  io::TensorFile c = io::read_safetensors(d + "/d121_legacy.bin"), e = io::read_safetensors(d + "/d121_plain.bin");
  EXPECT_EQ(c.names, e.names);
  EXPECT_EQ(c.metadata.at("arch"), "densenet121");
  for (const auto& n : c.names) {
    if (n.find("num_batches_tracked") != std::string::npos) {
      EXPECT_EQ(c.at(n).item(), 0.0) << n << ": legacy files predate the counter, which then starts at 0";
      continue;
    }
    EXPECT_EQ(c.at(n).to_doubles(), e.at(n).to_doubles()) << n;
  }
}

TEST(ConvertPth, RefusesPickledCodeGarbageAndUnknownFiles) {
  const std::string d = variants_dir();
  if (d.empty()) GTEST_SKIP() << "built without libzip";
  const std::string marker = d + "/exploit_ran";
  std::filesystem::remove(marker);
  std::string log;
  // The exploit writes its marker to TL_EXPLOIT_MARKER when unpickled unsafely.
  EXPECT_NE(run_command("TL_EXPLOIT_MARKER=" + marker + " " + TL_CONVERT_PTH + " " + d + "/exploit.pth " + d +
                            "/x.bin", &log), 0);
  EXPECT_NE(log.find("refused"), std::string::npos) << log;
  EXPECT_NE(log.find("exploit.pth"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(marker)) << "pickled code was executed";
  EXPECT_FALSE(std::filesystem::exists(d + "/x.bin"));
  EXPECT_NE(convert(d + "/garbage.pth " + d + "/x.bin", &log), 0);
  EXPECT_NE(log.find("garbage.pth"), std::string::npos) << log;
  EXPECT_NE(convert(d + "/unknown_arch.pth " + d + "/x.bin", &log), 0);
  EXPECT_NE(log.find("no supported architecture"), std::string::npos) << log;
  EXPECT_NE(convert(d + "/whole_module.pth " + d + "/x.bin", &log), 0);
  EXPECT_NE(convert(d + "/missing.pth " + d + "/x.bin", &log), 0);
  EXPECT_NE(log.find("no such file"), std::string::npos) << log;
  // Wrong architecture forced with --arch: refused with the mismatches named.
  EXPECT_NE(convert(d + "/resnet18_plain.pth " + d + "/x.bin --arch resnet34", &log), 0);
  EXPECT_NE(log.find("missing layer1.2"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(d + "/x.bin"));
}

TEST(ConvertPth, ExportRoundTripsBitExactly) {
  const std::string d = variants_dir();
  if (d.empty()) GTEST_SKIP() << "built without libzip";
  std::string log;
  ASSERT_EQ(convert(d + "/resnet18_plain.pth " + d + "/rt.bin", &log), 0) << log;
  ASSERT_EQ(convert("--export " + d + "/rt.bin " + d + "/rt.pth", &log), 0) << log;
  ASSERT_EQ(run_command(std::string(TL_PYTHON_EXE) + " " + TL_SOURCE_DIR + "/tests/torch_ref/model_parity.py --compare " +
                            d + "/resnet18_plain.pth " + d + "/rt.pth", &log), 0) << log;
}
