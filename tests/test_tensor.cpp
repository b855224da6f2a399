// Tensor core: construction, views, dtype/layout/device conversion, errors.
#include "core/tensor.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

TEST(Tensor, FromValuesAndReshapeShareStorage) {
  Tensor t = Tensor::from_values({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.numel(), 6);
  Tensor r = t.reshape({3, 2});
  r.fill_(7);
  EXPECT_EQ(t.to_doubles()[4], 7.0);
  EXPECT_THROW(t.reshape({4, 2}), ShapeError);
}

TEST(Tensor, LayoutConversionKeepsLogicalOrder) {
  Tensor x = Tensor::randn({2, 3, 4, 5}, 1);
  Tensor nhwc = x.to_layout(Layout::NHWC);
  EXPECT_EQ(nhwc.layout(), Layout::NHWC);
  EXPECT_EQ(nhwc.to_doubles(), x.to_doubles());
  // Physical order differs: element (0, 1, 0, 0) sits at offset 1 in NHWC.
  EXPECT_EQ(static_cast<const float*>(nhwc.data())[1], x.data_as<float>()[20]);
  EXPECT_EQ(nhwc.to_layout(Layout::NCHW).to_doubles(), x.to_doubles());
}

TEST(Tensor, DtypeConversionRoundsToNearestEven) {
  Tensor x = Tensor::from_values({1.0, 1.00390625, -2.5, 65504.0, 1e-8}, {5});
  std::vector<double> bf = x.to(DType::BF16).to_doubles();
  EXPECT_EQ(bf[0], 1.0);
  EXPECT_EQ(bf[1], 1.0);  // halfway between 1 and 1.0078125 rounds to even
  EXPECT_EQ(bf[2], -2.5);
  std::vector<double> h = x.to(DType::F16).to_doubles();
  EXPECT_EQ(h[3], 65504.0);
  EXPECT_NEAR(h[4], 1e-8, 1e-8);  // subnormal in half
  EXPECT_EQ(x.to(DType::F64).to_doubles()[1], 1.00390625);
}

TEST(Tensor, AddInPlaceAndClone) {
  Tensor a = Tensor::from_values({1, 2}, {2}), b = Tensor::from_values({10, 20}, {2});
  Tensor c = a.clone();
  c.add_(b, 0.5);
  EXPECT_EQ(c.to_doubles(), (std::vector<double>{6, 12}));
  EXPECT_EQ(a.to_doubles(), (std::vector<double>{1, 2}));
}

TEST(Tensor, ErrorsNameShapes) {
  EXPECT_THROW(Tensor::empty({2, -1}), ShapeError);
  EXPECT_THROW(Tensor::empty({2, 3}, DType::F32, Device::CPU, Layout::NHWC), ShapeError);
  EXPECT_THROW(Tensor::zeros({2}).item(), ShapeError);
  EXPECT_THROW(Tensor::zeros({2}).data_as<double>(), DTypeError);
}

TEST(Tensor, CpuMemoryIsCounted) {
  size_t before = memory_stats(Device::CPU).current_bytes;
  {
    Tensor t = Tensor::empty({1024});
    EXPECT_EQ(memory_stats(Device::CPU).current_bytes, before + 4096);
  }
  EXPECT_EQ(memory_stats(Device::CPU).current_bytes, before);
}

// available() and unavailable_reason() agree with the build: a CPU-only build (TL_WITH_CUDA == 0) says so and
// refuses CUDA tensors with that reason; a CUDA build without a device says that no device is visible.
TEST(Device, UnavailableReasonMatchesTheBuild) {
  const std::string reason = cuda::unavailable_reason();
  if (cuda::available()) {
    EXPECT_TRUE(TL_WITH_CUDA);
    EXPECT_EQ(reason, "");
    return;
  }
  EXPECT_TRUE(contains(reason, TL_WITH_CUDA ? "no CUDA device is visible" : "TL_CUDA=OFF")) << reason;
  const std::string err = error_of([] { Tensor::empty({2}, DType::F32, Device::CUDA); });
  EXPECT_TRUE(contains(err, reason)) << err;
  EXPECT_THROW(Tensor::zeros({2}).to(Device::CUDA), Error);
}

TEST(TensorCuda, RoundTripAllDtypesAndLayouts) {
  TL_REQUIRE_CUDA();
  Tensor x = Tensor::randn({2, 3, 4, 5}, 3);
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (Layout l : {Layout::NCHW, Layout::NHWC}) {
      Tensor g = x.to(Device::CUDA, dt, l);
      Tensor back = g.to(Device::CPU, DType::F32, Layout::NCHW);
      expect_close(back, x, dt == DType::F32 || dt == DType::F64 ? 0.0 : kBf16Tol, "round trip");
      Tensor sum = g.clone();
      sum.add_(g, 1.0);
      Tensor twice = x.clone();
      twice.add_(x);
      expect_close(sum, twice, dt == DType::F32 || dt == DType::F64 ? 0.0 : kBf16Tol, "cuda add_");
    }
  }
  Tensor z = Tensor::zeros({3, 3}, DType::F32, Device::CUDA).fill_(2.5);
  EXPECT_EQ(z.to_doubles()[8], 2.5);
}
