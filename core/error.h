// Error handling: typed exceptions and the checking macros used everywhere in tlengine.
// Library code never exits; it throws an exception that names the failing call, file and line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace tl {

// Base of all tlengine errors.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A shape, dtype, device or argument that does not fit the operation.
class ShapeError : public Error { public: using Error::Error; };
class DTypeError : public Error { public: using Error::Error; };
class ValueError : public Error { public: using Error::Error; };
// A failed CUDA runtime, cuDNN or cuBLAS call.
class CudaError : public Error { public: using Error::Error; };
class OutOfMemoryError : public CudaError {
 public:
  OutOfMemoryError(const std::string& msg, size_t requested) : CudaError(msg), requested_bytes(requested) {}
  size_t requested_bytes;
};
class CudnnError : public Error { public: using Error::Error; };
class CublasError : public Error { public: using Error::Error; };
// Bad files: weights, images, fixtures.
class IOError : public Error { public: using Error::Error; };

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_cuda(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cudnn(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas(int code, const char* call, const char* file, int line);
}  // namespace detail

}  // namespace tl

// TL_CHECK(cond, ExceptionType, message parts...): throws ExceptionType("message (file:line)") when cond is false.
#define TL_CHECK(cond, ExcType, ...)                                                                 \
  do {                                                                                             \
    if (!(cond)) throw ExcType(::tl::detail::concat(__VA_ARGS__, " [", __FILE__, ":", __LINE__, "]")); \
  } while (0)

// Wrap every CUDA runtime / cuDNN / cuBLAS call: a failure throws, naming the call, file and line.
#define CUDA_CHECK(call)                                                          \
  do {                                                                            \
    int tl_status_ = static_cast<int>(call);                                      \
    if (tl_status_ != 0) ::tl::detail::throw_cuda(tl_status_, #call, __FILE__, __LINE__); \
  } while (0)
#define CUDNN_CHECK(call)                                                          \
  do {                                                                             \
    int tl_status_ = static_cast<int>(call);                                       \
    if (tl_status_ != 0) ::tl::detail::throw_cudnn(tl_status_, #call, __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_CHECK(call)                                                          \
  do {                                                                              \
    int tl_status_ = static_cast<int>(call);                                        \
    if (tl_status_ != 0) ::tl::detail::throw_cublas(tl_status_, #call, __FILE__, __LINE__); \
  } while (0)
