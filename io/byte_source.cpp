// ByteSource over a file or a memory buffer (see byte_source.h).
#include "io/byte_source.h"

#include <cstring>

#include "core/error.h"

namespace tl::io {

ByteSource ByteSource::file(const std::string& path) {
  ByteSource s;
  s.name_ = path;
  s.file_ = std::make_shared<std::ifstream>(path, std::ios::binary | std::ios::ate);
  TL_CHECK(s.file_->good(), IOError, path, ": cannot open file");
  const std::streamoff end = s.file_->tellg();
  TL_CHECK(end >= 0, IOError, path, ": cannot determine the file size (not a regular file?)");
  s.size_ = static_cast<uint64_t>(end);
  return s;
}

ByteSource ByteSource::memory(const void* data, size_t size, std::string name) {
  ByteSource s;
  s.name_ = std::move(name);
  s.size_ = size;
  s.data_ = static_cast<const unsigned char*>(data);
  return s;
}

void ByteSource::read(uint64_t offset, void* dst, uint64_t n) const {
  TL_CHECK(offset <= size_ && n <= size_ - offset, IOError, name_, ": read of ", n, " bytes at offset ", offset,
           " runs past the end of the ", size_, "-byte file (truncated?)");
  if (n == 0) return;
  if (!file_) {
    std::memcpy(dst, data_ + offset, n);
    return;
  }
  file_->seekg(static_cast<std::streamoff>(offset));
  file_->read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
  TL_CHECK(file_->good(), IOError, name_, ": read of ", n, " bytes at offset ", offset, " failed");
}

}  // namespace tl::io
