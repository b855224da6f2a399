// Native, safe reader of PyTorch .pth files holding a state dict (or a checkpoint dict holding one under
// "state_dict", "model" or "model_state_dict"). Both layouts torch.save writes:
//   zip (PyTorch >= 1.6): <prefix>/data.pkl, <prefix>/data/<key> (one entry per storage), <prefix>/version;
//     read through libzip (an optional dependency: without it such files are refused with what to do);
//   legacy (_use_new_zipfile_serialization=False, torchvision's older downloads): pickles of the magic number,
//     protocol version, system info, the object and its storage keys, then each storage as an 8-byte
//     little-endian element count followed by its raw data.
// The pickle is interpreted by io/pickle.h, which runs nothing. Every storage size, offset, stride and zip entry
// is checked against the file before it is read; compressed zip entries (torch writes them stored) may expand
// only to their declared size and within an overall budget. Tensors come out contiguous, with the file's names
// (no renaming: models::read_weights_file normalises them); int16/int8/uint8/bool tensors become int32.
// Errors are IOError naming the file and the problem.
#pragma once
#include <cstddef>
#include <string>

#include "io/safetensors.h"

namespace tl::io {

TensorFile read_pth(const std::string& path);
// The same from memory; `name` is used in error messages (the fuzzers call this one).
TensorFile read_pth_memory(const void* data, size_t size, const std::string& name);

// Whether this build reads zip-format .pth files (it was built with libzip).
bool pth_zip_supported();
// What a file's first bytes look like ("a zip archive", "text starting with '...'", ...), for error messages.
std::string describe_content(const void* data, size_t size);

}  // namespace tl::io
