// libFuzzer target: io::read_safetensors_memory must return tensors that fit their declared shapes or throw
// tl::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tl::io::TensorFile f = tl::io::read_safetensors_memory(data, size, "fuzz-input");
    if (f.names.size() != f.tensors.size()) std::abort();
    for (const auto& [name, t] : f.tensors) {
      if (t.nbytes() > size) std::abort();  // every byte of every tensor came from the input
      if (t.numel() > 0) (void)t.to_doubles();  // reads every element
    }
  } catch (const tl::Error&) {
  }
  return 0;
}
