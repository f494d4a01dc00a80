// RMSNorm, plain and fused with the residual add: one block per row, fp32 sums, the residual is
// rounded to the activation dtype before it is normalised (what the next layer reads back).
// Rows that fit are held in registers and moved 16 bytes at a time: a decode step's single-row
// norms are latency-bound, so one load round per thread matters more than anything else.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxVecs = 4;  // 16-byte vectors per thread in the register path

template <typename T, bool kAdd>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(T* __restrict__ residual, const T* __restrict__ delta,
                                                            const float* __restrict__ w, T* __restrict__ out,
                                                            int64_t dim, float eps) {
  __shared__ float scratch[32];
  pdl_wait();
  pdl_release();
  const int64_t row = blockIdx.x;
  T* x = residual + row * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v;
    if constexpr (kAdd) {
      T sum = from_f32<T>(to_f32(x[i]) + to_f32(delta[row * dim + i]));
      x[i] = sum;
      v = to_f32(sum);
    } else {
      v = to_f32(x[i]);
    }
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  T* o = out + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f32<T>(to_f32(x[i]) * inv * w[i]);
}

// Same arithmetic as rms_norm_kernel, for dim a multiple of the vector width and at most
// kThreads * kVecs vectors: each thread keeps its kVecs vectors of the (summed) row in registers.
template <typename T, bool kAdd, int kVecs>
__global__ void __launch_bounds__(kThreads) rms_norm_vec_kernel(T* __restrict__ residual, const T* __restrict__ delta,
                                                                const float* __restrict__ w, T* __restrict__ out,
                                                                int dim, float eps) {
  constexpr int E = 16 / sizeof(T);
  union Vec {
    uint4 u;
    T e[E];
  };
  __shared__ float scratch[32];
  pdl_wait();
  pdl_release();
  const int64_t row = blockIdx.x;
  const int nv = dim / E;
  uint4* xv = reinterpret_cast<uint4*>(residual + row * dim);
  Vec v[kVecs];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int idx = threadIdx.x + j * kThreads;
    if (idx < nv) {
      v[j].u = xv[idx];
      if constexpr (kAdd) {
        Vec d;
        d.u = reinterpret_cast<const uint4*>(delta + row * dim)[idx];
#pragma unroll
        for (int e = 0; e < E; ++e) v[j].e[e] = from_f32<T>(to_f32(v[j].e[e]) + to_f32(d.e[e]));
        xv[idx] = v[j].u;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float f = to_f32(v[j].e[e]);
        ss += f * f;
      }
    }
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  uint4* ov = reinterpret_cast<uint4*>(out + row * dim);
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int idx = threadIdx.x + j * kThreads;
    if (idx < nv) {
      const float4* wv = reinterpret_cast<const float4*>(w) + idx * (E / 4);
      Vec o;
#pragma unroll
      for (int q = 0; q < E / 4; ++q) {
        const float4 ww = wv[q];
        o.e[4 * q + 0] = from_f32<T>(to_f32(v[j].e[4 * q + 0]) * inv * ww.x);
        o.e[4 * q + 1] = from_f32<T>(to_f32(v[j].e[4 * q + 1]) * inv * ww.y);
        o.e[4 * q + 2] = from_f32<T>(to_f32(v[j].e[4 * q + 2]) * inv * ww.z);
        o.e[4 * q + 3] = from_f32<T>(to_f32(v[j].e[4 * q + 3]) * inv * ww.w);
      }
      ov[idx] = o.u;
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, bool kAdd>
cudaError_t launch_norm(T* residual, const T* delta, const float* w, T* out, int64_t rows, int64_t dim, float eps,
                        cudaStream_t stream) {
  constexpr int E = 16 / sizeof(T);
  const int64_t nv = dim / E;
  const bool vec = dim % E == 0 && nv <= int64_t{kThreads} * kMaxVecs && aligned16(residual) && aligned16(w) &&
                   aligned16(out) && (!kAdd || aligned16(delta));
  const dim3 grid(static_cast<unsigned>(rows));
  const int d = static_cast<int>(dim);
  if (!vec) return launch_chained<rms_norm_kernel<T, kAdd>>(grid, kThreads, 0, stream, residual, delta, w, out, dim, eps);
  if (nv <= kThreads)
    return launch_chained<rms_norm_vec_kernel<T, kAdd, 1>>(grid, kThreads, 0, stream, residual, delta, w, out, d, eps);
  if (nv <= 2 * kThreads)
    return launch_chained<rms_norm_vec_kernel<T, kAdd, 2>>(grid, kThreads, 0, stream, residual, delta, w, out, d, eps);
  return launch_chained<rms_norm_vec_kernel<T, kAdd, kMaxVecs>>(grid, kThreads, 0, stream, residual, delta, w, out, d,
                                                                eps);
}

}  // namespace

cudaError_t launch_rms_norm(const void* x, const float* w, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, return launch_norm<scalar_t, false>(
                                  const_cast<scalar_t*>(static_cast<const scalar_t*>(x)), nullptr, w,
                                  static_cast<scalar_t*>(out), rows, dim, eps, stream));
  return cudaSuccess;
}

cudaError_t launch_add_rms_norm(void* residual, const void* delta, const float* w, void* out, int64_t rows,
                                int64_t dim, float eps, DType dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, return launch_norm<scalar_t, true>(static_cast<scalar_t*>(residual),
                                                                 static_cast<const scalar_t*>(delta), w,
                                                                 static_cast<scalar_t*>(out), rows, dim, eps, stream));
  return cudaSuccess;
}

}  // namespace ember::cuda
