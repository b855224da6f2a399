// Tensor core: construction, views, dtype/layout/device conversion, errors.
#include "core/tensor.h"
#include "kernels/index_math.h"
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

// The index type of the element-wise CUDA kernels (kernels/index_math.h): 32-bit only when every bound fits.
TEST(Device, KernelIndexTypeChoice) {
  using kernels::fits_int32;
  using kernels::with_index_type;
  EXPECT_TRUE(fits_int32({0, 1, INT32_MAX}));
  EXPECT_FALSE(fits_int32({int64_t(INT32_MAX) + 1}));
  EXPECT_FALSE(fits_int32({10, int64_t(1) << 40}));  // any bound beyond 2^31 - 1 forces 64 bits
  EXPECT_FALSE(fits_int32({-1}));
  auto bits = [](std::initializer_list<int64_t> b) {
    return with_index_type(b, [](auto index) { return int(sizeof(index) * 8); });
  };
  EXPECT_EQ(bits({256 * 64 * 56 * 56}), 32);             // a ResNet activation
  EXPECT_EQ(bits({int64_t(512) * 256 * 128 * 128}), 64);  // 2^32 elements
}

TEST(TensorCuda, IntegerFillAndCast) {
  TL_REQUIRE_CUDA();
  for (DType it : {DType::I32, DType::I64}) {
    SCOPED_TRACE(dtype_name(it));
    Tensor z = Tensor::zeros({5, 7}, it, Device::CUDA).fill_(-3.0);
    for (double v : z.to_doubles()) EXPECT_EQ(v, -3.0);
    Tensor big = Tensor::full({3}, 2147483647.0, it, Device::CUDA);  // exact through double
    EXPECT_EQ(big.to_doubles()[2], 2147483647.0);
    // Integers to every float type and back, and float values truncated toward zero as on the host.
    const Tensor labels = Tensor::from_values({0, 5, -7, 1000}, {4}, it);
    for (DType ft : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
      const Tensor g = labels.to(Device::CUDA).to(ft);
      EXPECT_EQ(g.to_doubles(), labels.to(ft).to_doubles()) << dtype_name(ft);
      EXPECT_EQ(g.to(it).to_doubles(), labels.to_doubles()) << dtype_name(ft);
    }
    const Tensor f = Tensor::from_values({2.75, -2.75, 0.5, 1e3}, {4}, DType::F32);
    EXPECT_EQ(f.to(Device::CUDA).to(it).to_doubles(), f.to(it).to_doubles());
    // int32 <-> int64, and a 4-D integer tensor through a layout change.
    const DType other = it == DType::I32 ? DType::I64 : DType::I32;
    EXPECT_EQ(labels.to(Device::CUDA).to(other).to_doubles(), labels.to_doubles());
    const Tensor t4 = Tensor::from_values({1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 2, 2}, it);
    const Tensor nhwc = t4.to(Device::CUDA, it, Layout::NHWC);
    EXPECT_EQ(nhwc.to(Device::CPU, it, Layout::NCHW).to_doubles(), t4.to_doubles());
  }
}
