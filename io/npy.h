// NumPy .npy files (format versions 1-3, C order): read a float32/float64 array, write a float32 array.
// Used by `tlengine predict` for raw batches in and logits out.
#pragma once
#include <string>

#include "core/tensor.h"

namespace tl::io {
// Reads a little-endian float32 ('<f4') or float64 ('<f8') array in C order as a CPU float32 tensor.
// Throws IOError naming the file for anything else (Fortran order, other dtypes, truncated data).
Tensor read_npy(const std::string& path);
// The same reader over a file already in memory (`size` bytes at `data`); `name` stands for the file in errors.
Tensor read_npy_memory(const void* data, size_t size, const std::string& name);
// Writes `t` (any device/dtype/layout) as float32 '<f4' in logical C order, atomically.
void write_npy(const std::string& path, const Tensor& t);
}  // namespace tl::io
