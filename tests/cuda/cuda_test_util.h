// Helpers for the CUDA op tests: skip without a GPU, one CUDA and one CPU backend per process,
// tensors filled with dtype-exact random values on both, and a relative-error comparison.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "ember/backend.h"
#include "ember/cuda_backend.h"
#include "ember/dtype.h"
#include "ember/error.h"

namespace ember::test {

#define EMBER_REQUIRE_GPU()                                                          \
  do {                                                                               \
    if (::ember::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible"; \
  } while (0)

inline Backend& cuda_backend() {
  static std::unique_ptr<Backend> b = [] {
    CudaBackendOptions o;
    o.max_memory = size_t{4} << 30;
    return make_cuda_backend(o);
  }();
  return *b;
}
inline Backend& cpu_backend() {
  static std::unique_ptr<Backend> b = make_cpu_backend(0);
  return *b;
}

inline float round_to(DType dt, float x) {
  switch (dt) {
    case DType::F16: return f16_to_f32(f32_to_f16(x));
    case DType::BF16: return bf16_to_f32(f32_to_bf16(x));
    default: return x;
  }
}

inline std::vector<float> random_values(size_t n, DType dt, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = round_to(dt, dist(rng));
  return v;
}

// A tensor on a backend with its owning buffer.
struct Owned {
  Buffer buf;
  Tensor t;
};

inline Owned upload(Backend& be, const std::vector<float>& v, DType dt, std::vector<int64_t> shape) {
  Owned o;
  o.buf = be.allocate(v.size() * dtype_size(dt) + 16, "test tensor");
  o.t = o.buf.view(dt, std::move(shape));
  if (dt == DType::F32) {
    be.copy_to_device(o.t.data, v.data(), v.size() * 4);
  } else {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = dt == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
    be.copy_to_device(o.t.data, h.data(), h.size() * 2);
  }
  return o;
}

inline Owned empty(Backend& be, DType dt, std::vector<int64_t> shape) {
  Owned o;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  o.buf = be.allocate(static_cast<size_t>(n) * dtype_size(dt) + 16, "test tensor");
  o.t = o.buf.view(dt, std::move(shape));
  // Poison so that unwritten outputs show up as NaN.
  std::vector<uint8_t> nan(static_cast<size_t>(n) * dtype_size(dt), 0xff);
  be.copy_to_device(o.t.data, nan.data(), nan.size());
  return o;
}

inline std::vector<float> download(Backend& be, const Tensor& t) {
  be.synchronize();
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F32) {
    be.copy_to_host(v.data(), t.data, v.size() * 4);
  } else {
    std::vector<uint16_t> h(v.size());
    be.copy_to_host(h.data(), t.data, h.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) v[i] = t.dtype == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  }
  return v;
}

// ||got - want|| / ||want||; NaN anywhere fails.
inline double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline double tolerance(DType dt) {
  switch (dt) {
    case DType::F32: return 2e-5;
    case DType::F16: return 2e-3;
    default: return 1.2e-2;
  }
}

inline const char* dtype_label(DType dt) { return dtype_name(dt); }

}  // namespace ember::test
