// The SwiGLU gate: out = silu(gate) * up, where x holds [gate | up] per row. Rows whose width is
// a multiple of the 16-byte vector move 16 bytes per load (prefill streams ~0.7 GB through here).
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t T_, int64_t F) {
  pdl_wait();
  pdl_release();
  const int64_t total = T_ * F;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx / F, f = idx % F;
    out[idx] = from_f32<T>(silu_times(to_f32(x[t * 2 * F + f]), to_f32(x[t * 2 * F + F + f])));
  }
}

template <typename T>
__global__ void silu_mul_vec_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t T_, int64_t F) {
  constexpr int E = 16 / sizeof(T);
  union Vec {
    uint4 u;
    T e[E];
  };
  pdl_wait();
  pdl_release();
  const int64_t fv = F / E, total = T_ * fv;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  uint4* ov = reinterpret_cast<uint4*>(out);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / fv, f = idx % fv;
    Vec g, u, o;
    g.u = xv[t * 2 * fv + f];
    u.u = xv[t * 2 * fv + fv + f];
#pragma unroll
    for (int e = 0; e < E; ++e) o.e[e] = from_f32<T>(silu_times(to_f32(g.e[e]), to_f32(u.e[e])));
    ov[idx] = o.u;
  }
}

template <typename T>
cudaError_t launch_typed(const void* x, void* out, int64_t T_, int64_t F, cudaStream_t stream) {
  constexpr int E = 16 / sizeof(T);
  const bool vec = F % E == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(out) & 15u) == 0;
  const int64_t items = vec ? T_ * F / E : T_ * F;
  // Small blocks: at decode (a few rows) the work is a few thousand vectors, which should still
  // spread over most SMs.
  const int threads = items < 64 * 1024 ? 64 : 256;
  const int blocks = static_cast<int>(std::min<int64_t>((items + threads - 1) / threads, 65536));
  if (vec)
    return launch_chained<silu_mul_vec_kernel<T>>(blocks, threads, 0, stream, static_cast<const T*>(x),
                                                  static_cast<T*>(out), T_, F);
  return launch_chained<silu_mul_kernel<T>>(blocks, threads, 0, stream, static_cast<const T*>(x), static_cast<T*>(out), T_,
                                            F);
}

}  // namespace

cudaError_t launch_silu_mul(const void* x, void* out, int64_t T, int64_t F, DType dtype, cudaStream_t stream) {
  if (T * F == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, return launch_typed<scalar_t>(x, out, T, F, stream));
  return cudaSuccess;
}

}  // namespace ember::cuda
