// Writing files without losing anything: atomic replacement (temporary file beside the target, every write /
// fsync / close / rename checked, the temporary removed on failure, the old file left as it was), the free space
// of a folder's filesystem for error messages, and an early check that an output folder can be written.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace tl::io {

struct ByteRange {
  const void* data;
  size_t size;
};

// Replaces `path` by the concatenation of `parts`: writes "<path>.tmp", fsyncs it, renames it over `path` and
// fsyncs the folder. A reader (or a later run after a crash or kill -9) sees the old file or the new one, never a
// partial one. On failure (disk full, file-size limit, I/O error, ...) throws IOError naming the file, the bytes
// it needed and the free space of its filesystem; the temporary file is removed and `path` is unchanged.
void write_file_atomic(const std::string& path, const std::vector<ByteRange>& parts);
void write_file_atomic(const std::string& path, const void* data, size_t size);

// Free bytes for unprivileged users on the filesystem holding `path` (a file or folder; a missing file is looked
// up through its folder), from statvfs. -1 when unknown.
long long free_bytes(const std::string& path);
// "1.5 GiB", "312 bytes".
std::string human_bytes(long long bytes);

// Makes sure `dir` exists (creating it and its parents) and that files can be created in it, by creating and
// removing a probe file. Throws IOError naming the folder and what to do: when a path component is a file, the
// folder cannot be created, or it is not writable (read-only filesystem, permissions). `what` names the option
// in the message, e.g. "--out".
void ensure_writable_folder(const std::string& dir, const std::string& what);

// Scratch memory backed by a file: `bytes` reserved on disk at `path` (posix_fallocate, so a full disk is an IOError
// naming the file, the bytes and the free space now, never a SIGBUS later), mapped shared read-write, and the name
// unlinked at once: the space lives as long as the object and nothing is left behind, even after kill -9.
class MappedScratch {
 public:
  MappedScratch(const std::string& path, size_t bytes);
  ~MappedScratch();
  MappedScratch(const MappedScratch&) = delete;
  MappedScratch& operator=(const MappedScratch&) = delete;
  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tl::io
