// ShuffleNet V2's ops: channel_shuffle (layers/shuffle.h) and channel splitting (narrow / split_channels,
// layers/concat.h): float64 gradient checks, gradient contract, PyTorch parity (tests/torch_ref/fx_shuffle.py),
// NHWC, frozen inputs, bad arguments, CUDA vs CPU.
#include "layers/activation.h"
#include "layers/concat.h"
#include "layers/shuffle.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

// ---------------------------------------------------------------- channel_shuffle

TEST(ChannelShuffle, PermutationIsTorchvisions) {
  // 6 channels, 2 groups: (0 1 2 | 3 4 5) -> 0 3 1 4 2 5; backward is the inverse.
  std::vector<double> v;
  for (int c = 0; c < 6; ++c) v.insert(v.end(), {double(c), double(c) + 0.5});
  const Tensor x = Tensor::from_values(v, {1, 6, 1, 2}, DType::F64);
  const std::vector<double> expect = {0, 0.5, 3, 3.5, 1, 1.5, 4, 4.5, 2, 2.5, 5, 5.5};
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    const Tensor y = channel_shuffle_forward(x.to_layout(layout), 2);
    EXPECT_EQ(y.layout(), layout);
    EXPECT_EQ(y.to_doubles(), expect) << layout_name(layout);
    Tensor dx;
    channel_shuffle_backward(y, 2, dx, false);
    EXPECT_EQ(dx.layout(), layout);
    EXPECT_EQ(dx.to_doubles(), v) << layout_name(layout);
  }
  // groups 1 and C are the identity
  EXPECT_EQ(channel_shuffle_forward(x, 1).to_doubles(), v);
  EXPECT_EQ(channel_shuffle_forward(x, 6).to_doubles(), v);
}

TEST(ChannelShuffle, GradcheckFloat64) {
  for (Layout layout : {Layout::NCHW, Layout::NHWC})
    for (int64_t g : {2, 3})
      expect_gradcheck([g](const std::vector<Variable>& v) { return channel_shuffle(v[0], g); },
                       {Tensor::randn({2, 6, 3, 2}, 1, DType::F64, Device::CPU, layout)}, {true});
}

TEST(ChannelShuffle, GradContract) {
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::F64}) {
      const Tensor dy = Tensor::randn({2, 12, 3, 4}, 2, dt, Device::CPU, layout);
      expect_grad_contract([&](Tensor& dx, bool acc) { channel_shuffle_backward(dy, 3, dx, acc); }, dy,
                           std::string("shuffle dx ") + layout_name(layout) + " " + dtype_name(dt));
    }
  }
  // accumulating into a dx of the other layout
  const Tensor dy = Tensor::randn({2, 4, 3, 3}, 3, DType::F64);
  Tensor ref;
  channel_shuffle_backward(dy, 2, ref, false);
  Tensor dx = Tensor::zeros(dy.shape(), DType::F64, Device::CPU, Layout::NHWC);
  channel_shuffle_backward(dy, 2, dx, true);
  EXPECT_EQ(dx.layout(), Layout::NHWC);
  EXPECT_EQ(dx.to_doubles(), ref.to_doubles());
}

TEST(ChannelShuffle, MatchesPyTorch) {
  const auto& f = fixture("shuffle");
  for (auto [name, g] : {std::pair{"shuffle_g2", 2}, std::pair{"shuffle_g3", 3}, std::pair{"shuffle_g4", 4}}) {
    for (DType dt : {DType::F32, DType::F64}) {
      for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
        const std::string p = std::string(name) + ".";
        SCOPED_TRACE(p + dtype_name(dt) + " " + layout_name(layout));
        Variable x(f.at(p + "x").to(Device::CPU, dt, layout), true);
        Tape tape;
        TapeScope scope(tape);
        Variable y = channel_shuffle(x, g);
        EXPECT_EQ(tape.saved_bytes(), 0u);
        expect_close(y.value(), f.at(p + "y"), 0, "y");  // a permutation: exact
        tape.backward(y, f.at(p + "gy").to(Device::CPU, dt, layout));
        expect_close(x.grad(), f.at(p + "gx"), 0, "dx");
      }
    }
  }
}

TEST(ChannelShuffle, BadArgumentsThrow) {
  EXPECT_THROW(channel_shuffle_forward(Tensor::zeros({2, 6, 3, 3}), 4), ShapeError);
  EXPECT_THROW(channel_shuffle_forward(Tensor::zeros({2, 6, 3, 3}), 0), ShapeError);
  EXPECT_THROW(channel_shuffle_forward(Tensor::zeros({2, 6}), 2), ShapeError);
  Tensor dx = Tensor::zeros({2, 6, 3, 2});
  EXPECT_THROW(channel_shuffle_backward(Tensor::zeros({2, 6, 3, 3}), 2, dx, true), ShapeError);
  // nothing needs a gradient: nothing is recorded
  Tape tape;
  TapeScope scope(tape);
  channel_shuffle(Variable(Tensor::zeros({1, 4, 2, 2})), 2);
  EXPECT_EQ(tape.size(), 0u);
}

// ---------------------------------------------------------------- narrow / split_channels

TEST(Narrow, GradcheckFloat64) {
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    expect_gradcheck([](const std::vector<Variable>& v) { return narrow_channels(v[0], 1, 3); },
                     {Tensor::randn({2, 5, 3, 2}, 1, DType::F64, Device::CPU, layout)}, {true});
    // both halves of a chunk(2) used, the second twice: the first backward assigns, the others add
    expect_gradcheck(
        [](const std::vector<Variable>& v) {
          std::vector<Variable> parts = split_channels(v[0], {2, 2});
          return concat({parts[1], parts[0], parts[1]}, 1);
        },
        {Tensor::randn({2, 4, 3, 3}, 2, DType::F64, Device::CPU, layout)}, {true});
  }
  expect_gradcheck([](const std::vector<Variable>& v) { return narrow(v[0], -1, 2, 3); },
                   {Tensor::randn({3, 7}, 3, DType::F64)}, {true});
}

TEST(Narrow, GradContract) {
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::F64}) {
      const Tensor dy = Tensor::randn({2, 3, 4, 5}, 4, dt, Device::CPU, layout);
      const Tensor like = Tensor::zeros({2, 7, 4, 5}, dt, Device::CPU, layout);
      expect_grad_contract([&](Tensor& dx, bool acc) { narrow_backward(dy, like.shape(), 1, 2, dx, acc); }, like,
                           std::string("narrow dx ") + layout_name(layout) + " " + dtype_name(dt));
    }
  }
  // accumulate leaves the rest of dx alone and adds into the slice
  const Tensor dy = Tensor::full({1, 2, 1, 1}, 1.0, DType::F64);
  Tensor dx = Tensor::full({1, 4, 1, 1}, 5.0, DType::F64);
  narrow_backward(dy, dx.shape(), 1, 1, dx, true);
  EXPECT_EQ(dx.to_doubles(), (std::vector<double>{5, 6, 6, 5}));
  narrow_backward(dy, dx.shape(), 1, 1, dx, false);
  EXPECT_EQ(dx.to_doubles(), (std::vector<double>{0, 1, 1, 0}));
  // accumulating an NCHW dy into an NHWC dx
  Tensor dxh = Tensor::zeros({1, 4, 2, 3}, DType::F64, Device::CPU, Layout::NHWC), ref;
  const Tensor dy2 = Tensor::randn({1, 2, 2, 3}, 5, DType::F64);
  narrow_backward(dy2, dxh.shape(), 1, 2, dxh, true);
  narrow_backward(dy2, dxh.shape(), 1, 2, ref, false);
  EXPECT_EQ(dxh.layout(), Layout::NHWC);
  EXPECT_EQ(dxh.to_doubles(), ref.to_doubles());
}

TEST(Narrow, MatchesPyTorch) {
  const auto& f = fixture("shuffle");
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::F64}) {
      SCOPED_TRACE(std::string(layout_name(layout)) + " " + dtype_name(dt));
      auto in = [&](const std::string& name) {
        const Tensor& t = f.at(name);
        return t.ndim() == 4 ? t.to(Device::CPU, dt, layout) : t.to(dt);
      };
      {  // chunk(2, dim=1)
        Variable x(in("chunk.x"), true);
        Tape tape;
        TapeScope scope(tape);
        std::vector<Variable> parts = split_channels(x, {4, 4});
        ASSERT_EQ(parts.size(), 2u);
        EXPECT_EQ(parts[0].value().layout(), layout);
        expect_close(parts[0].value(), f.at("chunk.y0"), 0, "chunk y0");
        expect_close(parts[1].value(), f.at("chunk.y1"), 0, "chunk y1");
        EXPECT_EQ(tape.saved_bytes(), 0u);
        // one backward over both parts: concat them and seed with both upstream gradients
        Variable both = concat(parts, 1);
        tape.backward(both, concat_forward({in("chunk.gy0"), in("chunk.gy1")}, 1));
        expect_close(x.grad(), f.at("chunk.gx"), 0, "chunk dx");
      }
      for (auto [name, dim, start, length] : {std::tuple{"narrow_c", 1, 2, 3}, std::tuple{"narrow_h", 2, 1, 4},
                                              std::tuple{"narrow_2d", 1, 4, 5}}) {
        const std::string p = std::string(name) + ".";
        Variable x(in(p + "x"), true);
        Tape tape;
        TapeScope scope(tape);
        Variable y = narrow(x, dim, start, length);
        expect_close(y.value(), f.at(p + "y"), 0, p + "y");
        tape.backward(y, in(p + "gy"));
        expect_close(x.grad(), f.at(p + "gx"), 0, p + "dx");
      }
      {  // ShuffleNet V2 stride-1 unit: chunk -> relu on the second half -> cat -> shuffle(2)
        Variable x(in("unit.x"), true);
        Tape tape;
        TapeScope scope(tape);
        std::vector<Variable> parts = split_channels(x, {4, 4});
        Variable y = channel_shuffle(concat({parts[0], relu(parts[1])}, 1), 2);
        expect_close(y.value(), f.at("unit.y"), kTorchTol, "unit y");
        tape.backward(y, in("unit.gy"));
        expect_close(x.grad(), f.at("unit.gx"), kTorchTol, "unit dx");
      }
    }
  }
}

TEST(Narrow, FrozenInputAndBadArguments) {
  Tape tape;
  TapeScope scope(tape);
  Variable frozen(Tensor::randn({2, 4, 3, 3}, 1), false);
  std::vector<Variable> parts = split_channels(frozen, {1, 3});
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_FALSE(parts[1].requires_grad());
  EXPECT_EQ(parts[1].shape(), (Shape{2, 3, 3, 3}));
  EXPECT_THROW(split_channels(frozen, {2, 3}), ShapeError);   // sizes do not add up to C
  EXPECT_THROW(split_channels(frozen, {5, -1}), ValueError);  // negative size
  EXPECT_THROW(narrow_forward(frozen.value(), 1, 3, 2), ShapeError);
  EXPECT_THROW(narrow_forward(frozen.value(), 4, 0, 1), ShapeError);
  Tensor dx;
  EXPECT_THROW(narrow_backward(Tensor::zeros({2, 2, 3, 3}), {2, 4, 3, 3}, 1, 3, dx, false), ShapeError);
  EXPECT_THROW(narrow_backward(Tensor::zeros({2, 2, 3, 2}), {2, 4, 3, 3}, 1, 0, dx, false), ShapeError);
  // an empty part is allowed (torch.split with a 0 size)
  EXPECT_EQ(split_channels(frozen, {0, 4})[0].shape(), (Shape{2, 0, 3, 3}));
}

// ---------------------------------------------------------------- CUDA vs CPU

TEST(ShuffleCuda, MatchesCpu) {
  TL_REQUIRE_CUDA();
  const Tensor x = Tensor::randn({2, 12, 5, 3}, 11), gy = Tensor::randn({2, 12, 5, 3}, 12);
  for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
    for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
      const std::string what = std::string(layout_name(layout)) + " " + dtype_name(dt);
      const double tol = dt == DType::BF16 ? kBf16Tol : 0;  // a permutation is exact
      const Tensor xr = x.to(dt).to(DType::F32), gyr = gy.to(dt).to(DType::F32);
      const Tensor xg = x.to(Device::CUDA, dt, layout), gyg = gy.to(Device::CUDA, dt, layout);
      for (int64_t g : {2, 3, 4}) {
        expect_close(channel_shuffle_forward(xg, g), channel_shuffle_forward(xr, g), tol, "shuffle y " + what);
        Tensor ref, dx;
        channel_shuffle_backward(gyr, g, ref, false);
        channel_shuffle_backward(gyg, g, dx, false);
        expect_close(dx, ref, tol, "shuffle dx " + what);
        expect_grad_contract([&](Tensor& d, bool acc) { channel_shuffle_backward(gyg, g, d, acc); }, xg,
                             "shuffle cuda contract " + what);
      }
      // narrow: forward slice, backward with zeros around the slice, contract
      expect_close(narrow_forward(xg, 1, 3, 6), narrow_forward(xr, 1, 3, 6), tol, "narrow y " + what);
      const Tensor part = narrow_forward(gyg, 1, 0, 6), part_cpu = narrow_forward(gyr, 1, 0, 6);
      Tensor ref, dx;
      narrow_backward(part_cpu, x.shape(), 1, 5, ref, false);
      narrow_backward(part, x.shape(), 1, 5, dx, false);
      expect_close(dx, ref, tol, "narrow dx " + what);
      expect_grad_contract([&](Tensor& d, bool acc) { narrow_backward(part, x.shape(), 1, 5, d, acc); }, xg,
                           "narrow cuda contract " + what);
    }
  }
}
