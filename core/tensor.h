// Tensor: a shape, a dtype, a device and a layout over reference-counted Storage.
// Tensors are always dense. A 4-D tensor's shape is logical (N, C, H, W) whatever its layout;
// NHWC (channels-last) only changes the order in memory. reshape() of an NCHW tensor shares storage.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/memory.h"

namespace tl {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;  // undefined tensor
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU,
                      Layout layout = Layout::NCHW);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU,
                      Layout layout = Layout::NCHW);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::CPU,
                     Layout layout = Layout::NCHW);
  // Values given in logical (row-major NCHW) order, converted to `dtype`.
  static Tensor from_values(const std::vector<double>& values, const Shape& shape, DType dtype = DType::F32,
                            Device device = Device::CPU, Layout layout = Layout::NCHW);
  static Tensor from_floats(const std::vector<float>& values, const Shape& shape);  // CPU float32
  // Seeded random tensors (generated on the host, so CPU and CUDA draws are identical).
  static Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32, Device device = Device::CPU,
                      Layout layout = Layout::NCHW);
  static Tensor uniform(const Shape& shape, double lo, double hi, uint64_t seed, DType dtype = DType::F32,
                        Device device = Device::CPU, Layout layout = Layout::NCHW);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  Layout layout() const { return layout_; }
  bool is_cuda() const { return device_ == Device::CUDA; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  std::string str() const;  // e.g. "float32[2, 3, 8, 8] cuda NHWC"

  void* data() const;
  template <typename T>
  T* data_as() const {
    check_element_type(sizeof(T));
    return static_cast<T*>(data());
  }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  // True when no other Tensor shares this one's storage (safe to update in place).
  bool is_unique() const { return storage_ && storage_.use_count() == 1; }

  // Views and copies.
  Tensor reshape(const Shape& shape) const;  // shares storage; NCHW-ordered tensors only
  Tensor flatten_from(int dim) const;        // (d0..d_{dim-1}, prod(rest)), shares storage
  Tensor clone() const;
  Tensor to(Device device) const;  // returns *this when already there
  Tensor to(DType dtype) const;
  Tensor to_layout(Layout layout) const;
  Tensor to(Device device, DType dtype, Layout layout) const;

  // In-place.
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // same shape; converts dtype, layout and device as needed
  Tensor& add_(const Tensor& other, double alpha = 1.0);  // this += alpha * other (same dtype/device/layout)

  // Host copy of the values in logical NCHW order, as double (tests, reports).
  std::vector<double> to_doubles() const;
  double item() const;  // the single value of a 1-element tensor

 private:
  void check_element_type(size_t bytes) const;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Layout layout_ = Layout::NCHW;
};

// Argument checks with both shapes in the message.
void check_same_shape(const Tensor& a, const Tensor& b, const char* what);
void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* what);
void check_defined(const Tensor& t, const char* what);

}  // namespace tl
