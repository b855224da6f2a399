// The device functions shared by the CUDA and the CPU-only build: the TF32 switches, and available() /
// unavailable_reason() / memory_info() / synchronize() for a build without CUDA (core/device_cuda.cpp has the
// CUDA versions).
#include "core/device.h"

#include "core/error.h"

namespace tl::cuda {
namespace {
bool tf32_conv = true;
bool tf32_matmul = false;
}  // namespace

void set_allow_tf32(bool conv, bool matmul) {
  tf32_conv = conv;
  tf32_matmul = matmul;
}
bool allow_tf32_conv() { return tf32_conv; }
bool allow_tf32_matmul() { return tf32_matmul; }

#if !TL_WITH_CUDA
bool available() { return false; }
std::string unavailable_reason() {
  return "this build has no CUDA support (configured with TL_CUDA=OFF): rebuild with the CUDA 13 toolkit and "
         "cuDNN 9 to use --device cuda";
}
void memory_info(size_t*, size_t*) { throw CudaError(unavailable_reason()); }
void synchronize() {}
#endif

}  // namespace tl::cuda

namespace tl {

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    TL_CHECK(cuda::available(), ValueError, "--device cuda: ", cuda::unavailable_reason(), " (use --device cpu)");
    return Device::CUDA;
  }
  TL_CHECK(name == "auto", ValueError, "--device must be auto, cpu or cuda, got '", name, "'");
  return cuda::available() ? Device::CUDA : Device::CPU;
}

}  // namespace tl
