// libFuzzer target: io::read_pth_memory (zip and legacy .pth, through the restricted unpickler) must return
// tensors whose bytes it checked against the file, or throw tl::Error; it never runs anything from the file.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/pth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tl::io::TensorFile f = tl::io::read_pth_memory(data, size, "fuzz-input");
    for (const auto& name : f.names) {
      const tl::Tensor& t = f.at(name);
      if (t.numel() > 0) (void)t.to_doubles();
    }
  } catch (const tl::Error&) {
  }
  return 0;
}
