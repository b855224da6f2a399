// Atomic file replacement, free-space queries and output-folder checks (see files.h).
#include "io/files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace fs = std::filesystem;

namespace tl::io {
namespace {

std::string parent_folder(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

// write(2) until everything is written; false with errno set on failure (EINTR is retried).
bool write_all(int fd, const void* data, size_t size, size_t* written) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
    *written += static_cast<size_t>(n);
  }
  return true;
}

[[noreturn]] void fail_write(const std::string& path, const std::string& tmp, const char* step, int error,
                             size_t written, size_t total) {
  ::unlink(tmp.c_str());  // the temporary file never replaces anything
  const long long free_b = free_bytes(path);
  std::string msg = detail::concat("cannot write '", path, "': ", step, " failed: ", std::strerror(error),
                                   " (the file needs ", total, " bytes = ", human_bytes(static_cast<long long>(total)),
                                   ", ", written, " were written; ");
  msg += free_b >= 0 ? detail::concat(human_bytes(free_b), " free on the filesystem of '", parent_folder(path), "'")
                     : std::string("free space unknown");
  msg += detail::concat("). The temporary file '", tmp, "' was removed and the previous '", path,
                        "' (if any) is unchanged; ",
                        error == EFBIG ? "raise the file-size limit (ulimit -f) or write elsewhere"
                                       : "free some space or write elsewhere");
  throw IOError(msg);
}

}  // namespace

MappedScratch::MappedScratch(const std::string& path, size_t bytes) : size_(bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    throw IOError(detail::concat(path, ": cannot create the scratch file (", std::strerror(errno), ")"));
  const int err = bytes ? ::posix_fallocate(fd, 0, static_cast<off_t>(bytes)) : 0;
  if (err != 0) {
    ::close(fd);
    ::unlink(path.c_str());
    throw IOError(detail::concat(path, ": cannot reserve ", human_bytes(static_cast<long long>(bytes)),
                                 " for the scratch file (", std::strerror(err), "; ",
                                 human_bytes(free_bytes(path)), " free there)"));
  }
  void* p = bytes ? ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : nullptr;
  const int map_errno = errno;
  ::close(fd);
  ::unlink(path.c_str());  // the mapping keeps the space; no name is left behind
  if (p == MAP_FAILED)
    throw IOError(detail::concat(path, ": cannot map the scratch file (", std::strerror(map_errno), ")"));
  data_ = p;
}

MappedScratch::~MappedScratch() {
  if (data_) ::munmap(data_, size_);
}

long long free_bytes(const std::string& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0 && ::statvfs(parent_folder(path).c_str(), &st) != 0) return -1;
  return static_cast<long long>(st.f_bavail) * static_cast<long long>(st.f_frsize);
}

std::string human_bytes(long long bytes) {
  if (bytes < 0) return "unknown";
  if (bytes < 1024) return std::to_string(bytes) + " bytes";
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = -1;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

void write_file_atomic(const std::string& path, const std::vector<ByteRange>& parts) {
  TL_CHECK(!path.empty(), IOError, "write_file_atomic: empty file name");
  const std::string tmp = path + ".tmp";
  size_t total = 0, written = 0;
  for (const ByteRange& r : parts) total += r.size;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TL_CHECK(fd >= 0, IOError, "cannot write '", path, "': cannot create '", tmp, "': ", std::strerror(errno),
           " (does the folder exist and is it writable?)");
  for (const ByteRange& r : parts) {
    if (r.size > 0 && !write_all(fd, r.data, r.size, &written)) {
      const int e = errno;
      ::close(fd);
      fail_write(path, tmp, "write", e, written, total);
    }
  }
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    fail_write(path, tmp, "fsync", e, written, total);
  }
  if (::close(fd) != 0) fail_write(path, tmp, "close", errno, written, total);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_write(path, tmp, "rename", errno, written, total);
  // Make the rename itself durable. Best effort: the new file is already in place, and some filesystems do not
  // support fsync on folders.
  const int dir = ::open(parent_folder(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  write_file_atomic(path, std::vector<ByteRange>{{data, size}});
}

void ensure_writable_folder(const std::string& dir, const std::string& what) {
  TL_CHECK(!dir.empty(), IOError, what, ": empty folder name");
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw IOError(detail::concat(what, " '", dir, "' is a file, not a folder: choose another ", what));
  if (!fs::is_directory(dir, ec)) {
    // Name the part of the path that is in the way (a file where a folder should be), if any.
    for (fs::path p = fs::path(dir).parent_path(); !p.empty(); p = p.parent_path()) {
      if (fs::exists(p, ec)) {
        if (!fs::is_directory(p, ec))
          throw IOError(detail::concat(what, " '", dir, "': cannot create the folder because '", p.string(),
                                       "' is a file, not a folder; choose another ", what));
        break;
      }
      if (p == p.parent_path()) break;
    }
    fs::create_directories(dir, ec);
    if (ec)
      throw IOError(detail::concat(what, " '", dir, "': cannot create the folder: ", ec.message(),
                                   "; choose another ", what));
  }
  const std::string probe = (fs::path(dir) / (".tlengine-write-test-" + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw IOError(detail::concat(what, " '", dir, "': the folder is not writable (", std::strerror(errno),
                                 "); choose another ", what, " or fix its permissions"));
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace tl::io
