// libFuzzer target: io::read_npy_memory must return a float32 tensor holding the file's elements or throw
// tl::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tl::Tensor t = tl::io::read_npy_memory(data, size, "fuzz-input");
    if (t.dtype() != tl::DType::F32 || static_cast<uint64_t>(t.numel()) * 4 > size) std::abort();
    if (t.numel() > 0) (void)t.to_doubles();
  } catch (const tl::Error&) {
  }
  return 0;
}
