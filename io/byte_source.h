// ByteSource: random-access reads from a file or from a buffer already in memory, so that each reader (safetensors,
// .npy, ...) has one parser for both (the memory form serves tests, fuzzing and data that never touches disk).
// Reads are range-checked: a read past the end throws IOError naming the source.
#pragma once
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

namespace tl::io {

class ByteSource {
 public:
  // Opens `path`; throws IOError naming it when it cannot be opened.
  static ByteSource file(const std::string& path);
  // `size` bytes at `data`, not copied: the buffer must outlive the source. `name` stands for the file in errors.
  static ByteSource memory(const void* data, size_t size, std::string name);

  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  // Copies bytes [offset, offset + n) into dst; throws IOError when the range is not inside the source.
  void read(uint64_t offset, void* dst, uint64_t n) const;

 private:
  ByteSource() = default;
  std::string name_;
  uint64_t size_ = 0;
  const unsigned char* data_ = nullptr;   // memory source
  std::shared_ptr<std::ifstream> file_;  // file source
};

}  // namespace tl::io
