// .npy batches in and logits out, against NumPy, and clear errors for bad files.
#include <fstream>

#include "io/npy.h"
#include "tl_testing.h"

using namespace tl;
using namespace tl::testing;

TEST(Npy, RoundTripWithNumpyAndErrors) {
  const std::string d = test_dir("npy");
  Tensor t = Tensor::randn({2, 3, 4, 5}, 1);
  io::write_npy(d + "/a.npy", t);
  std::string log;
  // NumPy reads what we wrote, and writes float64 / 1-D arrays we read.
  ASSERT_EQ(run_command(std::string(TL_PYTHON_EXE) + " -c \"import numpy as np; a=np.load('" + d +
                            "/a.npy'); assert a.shape==(2,3,4,5) and a.dtype==np.float32; np.save('" + d +
                            "/b.npy', (a.astype(np.float64)*2)); np.save('" + d + "/c.npy', np.arange(3, "
                            "dtype=np.float32)); np.save('" + d + "/f.npy', np.asfortranarray(a[0,0])); np.save('" + d +
                            "/i.npy', np.arange(3))\"", &log), 0) << log;
  expect_close(io::read_npy(d + "/a.npy"), t, 0.0, "npy round trip");
  Tensor twice = t.clone();
  twice.add_(t);
  expect_close(io::read_npy(d + "/b.npy"), twice, 1e-7, "float64 npy");
  EXPECT_EQ(io::read_npy(d + "/c.npy").to_doubles(), (std::vector<double>{0, 1, 2}));
  EXPECT_THROW(io::read_npy(d + "/f.npy"), IOError);  // Fortran order
  EXPECT_THROW(io::read_npy(d + "/i.npy"), IOError);  // int64
  std::ofstream(d + "/bad.npy") << "not numpy";
  EXPECT_THROW(io::read_npy(d + "/bad.npy"), IOError);
  std::ifstream in(d + "/a.npy", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(d + "/trunc.npy", std::ios::binary) << bytes.substr(0, bytes.size() - 8);
  try {
    io::read_npy(d + "/trunc.npy");
    FAIL() << "no error";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("trunc.npy"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
}
