// Losses: CPU reference (double accumulation), CUDA dispatch (kernels/loss.cu) and autograd (see loss.h).
#include "layers/loss.h"

#include <cmath>
#include <limits>

#include "core/device.h"
#if TL_WITH_CUDA
#include "kernels/loss.h"
#endif
#include "layers/layer_util.h"

namespace tl {
namespace {
void check_scores(const Tensor& x, const char* op) {
  check_defined(x, op);
  check_rank(x, 2, op, "the scores (N, C)");
  TL_CHECK(x.dtype() != DType::I32, DTypeError, op, ": the scores must be floating point, got ", x.str());
  if (!x.is_cuda()) check_cpu_float(x, op);
  TL_CHECK(x.size(0) <= std::numeric_limits<int32_t>::max(), ShapeError, op, ": too many rows in ", x.str());
}

void check_target(const Tensor& target, const Tensor& x, const char* op) {
  check_defined(target, op);
  TL_CHECK(target.dtype() == DType::I32, DTypeError, op, ": target must be int32 class indices, got ",
           target.str());
  TL_CHECK(target.ndim() == 1 && target.size(0) == x.size(0), ShapeError, op, ": target ",
           shape_str(target.shape()), " does not match the scores ", shape_str(x.shape()), " (expected [",
           x.size(0), "])");
  TL_CHECK(target.device() == x.device(), ValueError, op, ": target is on ", device_name(target.device()),
           " but the scores are on ", device_name(x.device()));
}

// On the CPU every target must be a class index or ignore_index (CUDA cannot check without a host sync).
void validate_targets_cpu(const Tensor& target, int64_t C, int ignore_index, const char* op) {
  if (target.is_cuda()) return;
  const int32_t* t = target.data_as<int32_t>();
  for (int64_t i = 0; i < target.numel(); ++i) {
    TL_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < C), ValueError, op, ": target[", i, "] = ", t[i],
             " is not a class index in [0, ", C, ") nor ignore_index (", ignore_index, ")");
  }
}

// The class weights (C) converted to the loss dtype on `device`, or undefined.
Tensor prepare_weights(const Tensor& w, int64_t C, DType dtype, Device device, const char* op) {
  if (!w.defined()) return Tensor();
  TL_CHECK(w.ndim() == 1 && w.size(0) == C, ShapeError, op, ": class_weights ", shape_str(w.shape()),
           " do not match the number of classes (expected [", C, "])");
  TL_CHECK(w.dtype() == DType::F32 || w.dtype() == DType::F64, DTypeError, op,
           ": class_weights must be float32 or float64, got ", w.str());
  TL_CHECK(w.device() == device, ValueError, op, ": class_weights are on ", device_name(w.device()),
           " but the scores are on ", device_name(device));
  return w.to(loss_dtype(dtype));
}
Tensor prepare_weights(const Tensor& w, const Tensor& x, const char* op) {
  return prepare_weights(w, x.size(1), x.dtype(), x.device(), op);
}

// dloss as a 1-element tensor of the loss dtype on the expected device.
Tensor prepare_dloss(const Tensor& dloss, DType dtype, Device device, const char* op) {
  check_defined(dloss, op);
  TL_CHECK(dloss.numel() == 1, ShapeError, op, ": the loss gradient must have 1 element, got ", dloss.str());
  TL_CHECK(dloss.device() == device, ValueError, op, ": the loss gradient is on ", device_name(dloss.device()),
           " but the scores are on ", device_name(device));
  return dloss.to(loss_dtype(dtype));
}

void check_stats(const Tensor& stats, DType dtype, Device device, const char* op) {
  check_defined(stats, op);
  TL_CHECK(stats.numel() == 2 && stats.dtype() == loss_dtype(dtype) && stats.device() == device, ShapeError, op,
           ": stats must be the 2-element ", dtype_name(loss_dtype(dtype)), " tensor the forward wrote, got ",
           stats.str());
}

void check_smoothing(double e, const char* op) {
  TL_CHECK(e >= 0.0 && e <= 1.0, ValueError, op, ": label_smoothing must be in [0, 1], got ", e);
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}
// A kernel argument (only the CUDA branches pass raw pointers).
[[maybe_unused]] const void* void_or_null(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

// ---- CPU reference (double accumulation) ----
template <typename T>
double row_lse(const T* xr, int64_t C) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < C; ++c) m = std::max(m, static_cast<double>(xr[c]));
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(static_cast<double>(xr[c]) - m);
  return m + std::log(s);
}

template <typename T>
void log_softmax_cpu(const T* x, T* y, int64_t N, int64_t C) {
  for (int64_t i = 0; i < N; ++i) {
    const double lse = row_lse(x + i * C, C);
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = static_cast<T>(x[i * C + c] - lse);
  }
}

template <typename T>
void log_softmax_backward_cpu(const T* y, const T* dy, T* dx, int64_t N, int64_t C, bool accumulate) {
  for (int64_t i = 0; i < N; ++i) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += dy[i * C + c];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t k = i * C + c;
      const double g = dy[k] - std::exp(static_cast<double>(y[k])) * s;
      dx[k] = accumulate ? static_cast<T>(dx[k] + g) : static_cast<T>(g);
    }
  }
}

// T: the scores' type; W: the loss dtype (weights, loss, stats, lse).
template <typename T>
void nll_forward_cpu(const T* logp, const int32_t* t, const T* w, T* loss, T* stats, int64_t N, int64_t C,
                     int ignore_index) {
  double num = 0, den = 0, wsum = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;
    const double wt = w ? w[t[i]] : 1.0;
    num -= wt * logp[i * C + t[i]];
    den += wt;
  }
  for (int64_t c = 0; c < C; ++c) wsum += w ? w[c] : 1.0;
  loss[0] = static_cast<T>(num / den);
  stats[0] = static_cast<T>(den);
  stats[1] = static_cast<T>(wsum);
}

template <typename T>
void nll_backward_cpu(const T* dloss, const int32_t* t, const T* w, const T* stats, T* dlogp, int64_t N, int64_t C,
                      int ignore_index, bool accumulate) {
  const double scale = static_cast<double>(dloss[0]) / stats[0];
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t c = 0; c < C; ++c) {
      double g = 0;
      if (t[i] != ignore_index && c == t[i]) g = -(w ? w[c] : 1.0) * scale;
      const int64_t k = i * C + c;
      dlogp[k] = accumulate ? static_cast<T>(dlogp[k] + g) : static_cast<T>(g);
    }
  }
}

template <typename T>
void cross_entropy_cpu(const T* x, const int32_t* t, const T* w, T* lse_out, T* loss, T* stats, int64_t N, int64_t C,
                       int ignore_index, double e) {
  double num = 0, den = 0, wsum = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T* xr = x + i * C;
    const double lse = row_lse(xr, C);
    lse_out[i] = static_cast<T>(lse);
    if (t[i] == ignore_index) continue;
    double smooth = 0;
    for (int64_t c = 0; c < C; ++c) smooth += (w ? w[c] : 1.0) * (xr[c] - lse);
    const double wt = w ? w[t[i]] : 1.0;
    num += -(1.0 - e) * wt * (xr[t[i]] - lse) - e / static_cast<double>(C) * smooth;
    den += wt;
  }
  for (int64_t c = 0; c < C; ++c) wsum += w ? w[c] : 1.0;
  loss[0] = static_cast<T>(num / den);
  stats[0] = static_cast<T>(den);
  stats[1] = static_cast<T>(wsum);
}

template <typename T>
void cross_entropy_backward_cpu(const T* dloss, const T* x, const int32_t* t, const T* w, const T* lse,
                                const T* stats, T* dx, int64_t N, int64_t C, int ignore_index, double e,
                                bool accumulate) {
  const double scale = static_cast<double>(dloss[0]) / stats[0], wsum = stats[1], e_c = e / static_cast<double>(C);
  for (int64_t i = 0; i < N; ++i) {
    const bool ignored = t[i] == ignore_index;
    const double wt = ignored ? 0.0 : (w ? w[t[i]] : 1.0);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t k = i * C + c;
      double g = 0;
      if (!ignored) {
        const double p = std::exp(static_cast<double>(x[k]) - lse[i]);
        double q = e_c * (w ? w[c] : 1.0);
        if (c == t[i]) q += (1.0 - e) * wt;
        g = scale * (p * ((1.0 - e) * wt + e_c * wsum) - q);
      }
      dx[k] = accumulate ? static_cast<T>(dx[k] + g) : static_cast<T>(g);
    }
  }
}
}  // namespace

DType loss_dtype(DType dtype) { return dtype == DType::F64 ? DType::F64 : DType::F32; }

// ---- log_softmax ----
Tensor log_softmax_forward(const Tensor& x) {
  check_scores(x, "log_softmax");
  const int64_t N = x.size(0), C = x.size(1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.is_cuda()) {
#if TL_WITH_CUDA
    kernels::log_softmax_forward(x.data(), y.data(), x.dtype(), N, C, cuda::stream());
#endif
  } else if (x.dtype() == DType::F32) {
    log_softmax_cpu(x.data_as<float>(), y.data_as<float>(), N, C);
  } else {
    log_softmax_cpu(x.data_as<double>(), y.data_as<double>(), N, C);
  }
  return y;
}

void log_softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool accumulate) {
  check_scores(y, "log_softmax_backward");
  check_same_shape(y, dy, "log_softmax_backward");
  check_same_dtype_device(y, dy, "log_softmax_backward");
  prepare_grad(dx, GradSpec{y.shape(), y.dtype(), y.device()}, accumulate, "log_softmax_backward");
  const int64_t N = y.size(0), C = y.size(1);
  if (y.is_cuda()) {
#if TL_WITH_CUDA
    kernels::log_softmax_backward(y.data(), dy.data(), dx.data(), y.dtype(), N, C, accumulate, cuda::stream());
#endif
  } else if (y.dtype() == DType::F32) {
    log_softmax_backward_cpu(y.data_as<float>(), dy.data_as<float>(), dx.data_as<float>(), N, C, accumulate);
  } else {
    log_softmax_backward_cpu(y.data_as<double>(), dy.data_as<double>(), dx.data_as<double>(), N, C, accumulate);
  }
}

// ---- nll_loss ----
Tensor nll_loss_forward(const Tensor& logp, const Tensor& target, const Tensor& class_weights, int ignore_index,
                        Tensor* stats_out) {
  const char* op = "nll_loss";
  check_scores(logp, op);
  check_target(target, logp, op);
  const Tensor w = prepare_weights(class_weights, logp, op);
  const int64_t N = logp.size(0), C = logp.size(1);
  validate_targets_cpu(target, C, ignore_index, op);
  const DType ld = loss_dtype(logp.dtype());
  Tensor loss = Tensor::empty({1}, ld, logp.device()), stats = Tensor::empty({2}, ld, logp.device());
  if (logp.is_cuda()) {
#if TL_WITH_CUDA
    kernels::nll_forward(logp.data(), target.data_as<int32_t>(), void_or_null(w), loss.data(), stats.data(),
                         logp.dtype(), N, C, ignore_index, cuda::stream());
#endif
  } else if (ld == DType::F32) {
    nll_forward_cpu(logp.data_as<float>(), target.data_as<int32_t>(), ptr_or_null<float>(w), loss.data_as<float>(),
                    stats.data_as<float>(), N, C, ignore_index);
  } else {
    nll_forward_cpu(logp.data_as<double>(), target.data_as<int32_t>(), ptr_or_null<double>(w),
                    loss.data_as<double>(), stats.data_as<double>(), N, C, ignore_index);
  }
  if (stats_out) *stats_out = stats;
  return loss;
}

void nll_loss_backward(const Tensor& dloss, const Tensor& target, const Tensor& class_weights, int ignore_index,
                       const Tensor& stats, int64_t num_classes, DType dtype, Tensor& dlogp, bool accumulate) {
  const char* op = "nll_loss_backward";
  check_defined(target, op);
  TL_CHECK(target.dtype() == DType::I32 && target.ndim() == 1, DTypeError, op, ": target must be int32 (N), got ",
           target.str());
  const Device dev = target.device();
  const int64_t N = target.size(0), C = num_classes;
  TL_CHECK(dev == Device::CUDA ? dtype != DType::I32 : (dtype == DType::F32 || dtype == DType::F64), DTypeError,
           op, ": unsupported gradient dtype ", dtype_name(dtype), " on ", device_name(dev));
  const Tensor wd = prepare_weights(class_weights, C, dtype, dev, op);
  check_stats(stats, dtype, dev, op);
  const Tensor g = prepare_dloss(dloss, dtype, dev, op);
  validate_targets_cpu(target, C, ignore_index, op);
  prepare_grad(dlogp, GradSpec{{N, C}, dtype, dev}, accumulate, op);
  if (dev == Device::CUDA) {
#if TL_WITH_CUDA
    kernels::nll_backward(g.data(), target.data_as<int32_t>(), void_or_null(wd), stats.data(), dlogp.data(), dtype, N,
                          C, ignore_index, accumulate, cuda::stream());
#endif
  } else if (dtype == DType::F32) {
    nll_backward_cpu(g.data_as<float>(), target.data_as<int32_t>(), ptr_or_null<float>(wd), stats.data_as<float>(),
                     dlogp.data_as<float>(), N, C, ignore_index, accumulate);
  } else {
    nll_backward_cpu(g.data_as<double>(), target.data_as<int32_t>(), ptr_or_null<double>(wd),
                     stats.data_as<double>(), dlogp.data_as<double>(), N, C, ignore_index, accumulate);
  }
}

// ---- cross_entropy ----
Tensor cross_entropy_forward(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opt,
                             Tensor* lse_out, Tensor* stats_out) {
  const char* op = "cross_entropy";
  check_scores(logits, op);
  check_target(target, logits, op);
  check_smoothing(opt.label_smoothing, op);
  const Tensor w = prepare_weights(opt.class_weights, logits, op);
  const int64_t N = logits.size(0), C = logits.size(1);
  TL_CHECK(C > 0, ShapeError, op, ": no classes in ", logits.str());
  validate_targets_cpu(target, C, opt.ignore_index, op);
  const DType ld = loss_dtype(logits.dtype());
  const Device dev = logits.device();
  Tensor loss = Tensor::empty({1}, ld, dev), stats = Tensor::empty({2}, ld, dev), lse = Tensor::empty({N}, ld, dev);
  if (logits.is_cuda()) {
#if TL_WITH_CUDA
    Tensor scratch = Tensor::empty({2 * N + 1}, ld, dev);  // per-row numerators and denominators
    kernels::cross_entropy_forward(logits.data(), target.data_as<int32_t>(), void_or_null(w), lse.data(),
                                   scratch.data(), loss.data(), stats.data(), logits.dtype(), N, C, opt.ignore_index,
                                   opt.label_smoothing, cuda::stream());
#endif
  } else if (ld == DType::F32) {
    cross_entropy_cpu(logits.data_as<float>(), target.data_as<int32_t>(), ptr_or_null<float>(w), lse.data_as<float>(),
                      loss.data_as<float>(), stats.data_as<float>(), N, C, opt.ignore_index, opt.label_smoothing);
  } else {
    cross_entropy_cpu(logits.data_as<double>(), target.data_as<int32_t>(), ptr_or_null<double>(w),
                      lse.data_as<double>(), loss.data_as<double>(), stats.data_as<double>(), N, C, opt.ignore_index,
                      opt.label_smoothing);
  }
  if (lse_out) *lse_out = lse;
  if (stats_out) *stats_out = stats;
  return loss;
}

void cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& target, const Tensor& lse,
                            const Tensor& stats, const CrossEntropyOptions& opt, Tensor& dlogits, bool accumulate) {
  const char* op = "cross_entropy_backward";
  check_scores(logits, op);
  check_target(target, logits, op);
  check_smoothing(opt.label_smoothing, op);
  const Tensor w = prepare_weights(opt.class_weights, logits, op);
  const int64_t N = logits.size(0), C = logits.size(1);
  const DType ld = loss_dtype(logits.dtype());
  const Device dev = logits.device();
  check_defined(lse, op);
  TL_CHECK(lse.shape() == Shape({N}) && lse.dtype() == ld && lse.device() == dev, ShapeError, op,
           ": lse must be the ", dtype_name(ld), "[", N, "] tensor the forward wrote, got ", lse.str());
  check_stats(stats, logits.dtype(), dev, op);
  const Tensor g = prepare_dloss(dloss, logits.dtype(), dev, op);
  validate_targets_cpu(target, C, opt.ignore_index, op);
  prepare_grad(dlogits, GradSpec{logits.shape(), logits.dtype(), dev}, accumulate, op);
  if (logits.is_cuda()) {
#if TL_WITH_CUDA
    kernels::cross_entropy_backward(g.data(), logits.data(), target.data_as<int32_t>(), void_or_null(w), lse.data(),
                                    stats.data(), dlogits.data(), logits.dtype(), N, C, opt.ignore_index,
                                    opt.label_smoothing, accumulate, cuda::stream());
#endif
  } else if (ld == DType::F32) {
    cross_entropy_backward_cpu(g.data_as<float>(), logits.data_as<float>(), target.data_as<int32_t>(),
                               ptr_or_null<float>(w), lse.data_as<float>(), stats.data_as<float>(),
                               dlogits.data_as<float>(), N, C, opt.ignore_index, opt.label_smoothing, accumulate);
  } else {
    cross_entropy_backward_cpu(g.data_as<double>(), logits.data_as<double>(), target.data_as<int32_t>(),
                               ptr_or_null<double>(w), lse.data_as<double>(), stats.data_as<double>(),
                               dlogits.data_as<double>(), N, C, opt.ignore_index, opt.label_smoothing, accumulate);
  }
}

// ---- autograd ----
Variable log_softmax(const Variable& x) {
  Tensor y = log_softmax_forward(x.value());
  if (!should_record({&x})) return Variable(y);
  return record_op("log_softmax", y, {&x}, bytes_of({y}), [y](const Tensor& dy, std::vector<GradSlot>& s) {
    log_softmax_backward(y, dy, s[0].grad, s[0].accumulate);
  });
}

Variable nll_loss(const Variable& logp, const Tensor& target, const Tensor& class_weights, int ignore_index) {
  Tensor stats;
  Tensor loss = nll_loss_forward(logp.value(), target, class_weights, ignore_index, &stats);
  if (!should_record({&logp})) return Variable(loss);
  const Tensor w = prepare_weights(class_weights, logp.value(), "nll_loss");
  const int64_t C = logp.size(1);
  const DType dtype = logp.value().dtype();
  return record_op("nll_loss", loss, {&logp}, bytes_of({target, w, stats}),
                   [target, w, stats, C, dtype, ignore_index](const Tensor& dloss, std::vector<GradSlot>& s) {
                     nll_loss_backward(dloss, target, w, ignore_index, stats, C, dtype, s[0].grad, s[0].accumulate);
                   });
}

Variable cross_entropy(const Variable& logits, const Tensor& target, const CrossEntropyOptions& options) {
  Tensor lse, stats;
  Tensor loss = cross_entropy_forward(logits.value(), target, options, &lse, &stats);
  if (!should_record({&logits})) return Variable(loss);
  CrossEntropyOptions opt = options;
  opt.class_weights = prepare_weights(options.class_weights, logits.value(), "cross_entropy");
  const Tensor x = logits.value();
  return record_op("cross_entropy", loss, {&logits}, bytes_of({x, lse, target, opt.class_weights, stats}),
                   [x, target, lse, stats, opt](const Tensor& dloss, std::vector<GradSlot>& s) {
                     cross_entropy_backward(dloss, x, target, lse, stats, opt, s[0].grad, s[0].accumulate);
                   });
}

}  // namespace tl
