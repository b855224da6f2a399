// Tensor construction, views, copies and conversions on the host and (through kernels/) on the GPU.
#include "core/tensor.h"

#include <cstring>
#include <random>
#include <sstream>

#include "core/device.h"
#if TL_WITH_CUDA
#include "kernels/tensor_kernels.h"
#endif

namespace tl {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
double host_read(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
  }
  return 0;
}
void host_write(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
  }
}
// Offset in memory of logical element (n, c, h, w) for a given layout.
inline int64_t phys_index(Layout l, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W) {
  return l == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}
bool is_4d_channels_last(const Tensor& t) { return t.ndim() == 4 && t.layout() == Layout::NHWC; }
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, Layout layout) {
  for (int64_t d : shape) TL_CHECK(d >= 0, ShapeError, "negative dimension in shape ", shape_str(shape));
  TL_CHECK(layout == Layout::NCHW || shape.size() == 4, ShapeError, "layout NHWC needs a 4-D shape, got ",
           shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.layout_ = layout;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device, Layout layout) {
  Tensor t = empty(shape, dtype, device, layout);
  t.fill_(0.0);
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device, Layout layout) {
  Tensor t = empty(shape, dtype, device, layout);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_values(const std::vector<double>& values, const Shape& shape, DType dtype, Device device,
                           Layout layout) {
  TL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_values: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor host = empty(shape, dtype, Device::CPU, Layout::NCHW);
  for (size_t i = 0; i < values.size(); ++i) host_write(host.data(), dtype, static_cast<int64_t>(i), values[i]);
  return host.to(device, dtype, layout);
}

Tensor Tensor::from_floats(const std::vector<float>& values, const Shape& shape) {
  TL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_floats: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32, Device::CPU);
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, DType dtype, Device device, Layout layout) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = dist(rng);
  return from_values(v, shape, dtype, device, layout);
}

Tensor Tensor::uniform(const Shape& shape, double lo, double hi, uint64_t seed, DType dtype, Device device,
                       Layout layout) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = dist(rng);
  return from_values(v, shape, dtype, device, layout);
}

int64_t Tensor::size(int dim) const {
  int d = dim < 0 ? dim + ndim() : dim;
  TL_CHECK(d >= 0 && d < ndim(), ShapeError, "dimension ", dim, " out of range for shape ", shape_str(shape_));
  return shape_[static_cast<size_t>(d)];
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_str(shape_) << " " << device_name(device_);
  if (ndim() == 4) os << " " << layout_name(layout_);
  return os.str();
}

void* Tensor::data() const {
  TL_CHECK(defined(), ValueError, "data() of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

void Tensor::check_element_type(size_t bytes) const {
  TL_CHECK(defined(), ValueError, "data_as() of an undefined tensor");
  TL_CHECK(bytes == dtype_size(dtype_), DTypeError, "data_as(): element of ", bytes, " bytes for a ", str());
}

Tensor Tensor::reshape(const Shape& shape) const {
  check_defined(*this, "reshape");
  TL_CHECK(shape_numel(shape) == numel(), ShapeError, "reshape: cannot view ", shape_str(shape_), " as ",
           shape_str(shape));
  TL_CHECK(!is_4d_channels_last(*this) || shape == shape_, ShapeError, "reshape of an NHWC tensor ", str(),
           ": convert to NCHW first");
  Tensor t = *this;
  t.shape_ = shape;
  t.layout_ = Layout::NCHW;
  return t;
}

Tensor Tensor::flatten_from(int dim) const {
  Shape s(shape_.begin(), shape_.begin() + dim);
  int64_t rest = 1;
  for (int i = dim; i < ndim(); ++i) rest *= shape_[static_cast<size_t>(i)];
  s.push_back(rest);
  return reshape(s);
}

Tensor Tensor::clone() const { return empty(shape_, dtype_, device_, layout_).copy_(*this); }

Tensor Tensor::to(Device device) const { return to(device, dtype_, layout_); }
Tensor Tensor::to(DType dtype) const { return to(device_, dtype, layout_); }
Tensor Tensor::to_layout(Layout layout) const { return to(device_, dtype_, layout); }
Tensor Tensor::to(Device device, DType dtype, Layout layout) const {
  check_defined(*this, "to");
  if (ndim() != 4) layout = Layout::NCHW;
  if (device == device_ && dtype == dtype_ && layout == layout_) return *this;
  return empty(shape_, dtype, device, layout).copy_(*this);
}

Tensor& Tensor::fill_(double value) {
  check_defined(*this, "fill_");
  if (device_ == Device::CPU) {
    for (int64_t i = 0; i < numel(); ++i) host_write(data(), dtype_, i, value);
  } else {
#if TL_WITH_CUDA
    kernels::fill(data(), dtype_, numel(), value, cuda::stream());
#endif
  }
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_defined(*this, "copy_ destination");
  check_defined(src, "copy_ source");
  check_same_shape(*this, src, "copy_");
  if (src.storage_ == storage_ && src.offset_ == offset_ && src.dtype_ == dtype_ && src.layout_ == layout_) return *this;
  // 1. Move src to this device, keeping its dtype and layout.
  Tensor s = src;
  if (src.device_ != device_) {
    s = empty(src.shape_, src.dtype_, device_, src.layout_);
#if TL_WITH_CUDA
    cudaMemcpyKind kind = device_ == Device::CUDA ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    CUDA_CHECK(cudaMemcpyAsync(s.data(), src.data(), src.nbytes(), kind, cuda::stream()));
    if (kind == cudaMemcpyDeviceToHost) cuda::synchronize();  // host reads it next
#endif
  }
  // 2. Convert dtype (same order), then layout.
  const bool relayout = ndim() == 4 && s.layout_ != layout_;
  if (device_ == Device::CPU) {
    if (!relayout) {
      if (s.dtype_ == dtype_) {
        std::memcpy(data(), s.data(), nbytes());
      } else {
        for (int64_t i = 0; i < numel(); ++i) host_write(data(), dtype_, i, host_read(s.data(), s.dtype_, i));
      }
    } else {
      const int64_t N = shape_[0], C = shape_[1], H = shape_[2], W = shape_[3];
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w)
              host_write(data(), dtype_, phys_index(layout_, n, c, h, w, C, H, W),
                         host_read(s.data(), s.dtype_, phys_index(s.layout_, n, c, h, w, C, H, W)));
    }
  } else {
#if TL_WITH_CUDA
    Tensor typed = s;
    if (s.dtype_ != dtype_) {
      typed = relayout ? empty(shape_, dtype_, device_, s.layout_) : *this;
      kernels::cast(s.data(), s.dtype_, typed.data(), dtype_, numel(), cuda::stream());
    }
    if (relayout) {
      kernels::convert_layout(typed.data(), data(), dtype_, shape_[0], shape_[1], shape_[2], shape_[3],
                              layout_ == Layout::NHWC, cuda::stream());
    } else if (typed.storage_ != storage_) {
      CUDA_CHECK(cudaMemcpyAsync(data(), typed.data(), nbytes(), cudaMemcpyDeviceToDevice, cuda::stream()));
    }
#endif
  }
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_same_shape(*this, other, "add_");
  check_same_dtype_device(*this, other, "add_");
  TL_CHECK(ndim() != 4 || layout_ == other.layout_, ShapeError, "add_: layouts differ: ", str(), " and ", other.str());
  if (device_ == Device::CPU) {
    if (dtype_ == DType::F32) {
      float* y = data_as<float>();
      const float* x = other.data_as<float>();
      const float a = static_cast<float>(alpha);
      for (int64_t i = 0; i < numel(); ++i) y[i] += a * x[i];
    } else {
      for (int64_t i = 0; i < numel(); ++i)
        host_write(data(), dtype_, i, host_read(data(), dtype_, i) + alpha * host_read(other.data(), dtype_, i));
    }
  } else {
#if TL_WITH_CUDA
    kernels::axpy(data(), other.data(), dtype_, numel(), alpha, cuda::stream());
#endif
  }
  return *this;
}

std::vector<double> Tensor::to_doubles() const {
  check_defined(*this, "to_doubles");
  Tensor host = to(Device::CPU, dtype_, Layout::NCHW);
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = host_read(host.data(), dtype_, i);
  return out;
}

double Tensor::item() const {
  TL_CHECK(numel() == 1, ShapeError, "item() of a tensor with ", numel(), " elements: ", str());
  return to_doubles()[0];
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* what) {
  TL_CHECK(a.shape() == b.shape(), ShapeError, what, ": shapes differ: ", shape_str(a.shape()), " vs ",
           shape_str(b.shape()));
}
void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* what) {
  TL_CHECK(a.dtype() == b.dtype(), DTypeError, what, ": dtypes differ: ", a.str(), " vs ", b.str());
  TL_CHECK(a.device() == b.device(), ValueError, what, ": devices differ: ", a.str(), " vs ", b.str());
}
void check_defined(const Tensor& t, const char* what) {
  TL_CHECK(t.defined(), ValueError, what, ": tensor is undefined");
}

}  // namespace tl
