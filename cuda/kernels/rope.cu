// Rotary position embedding in place on q and k, neox (rotate-half) or gpt-j (interleaved)
// layout; angles in fp32 with precise sincos, since positions reach tens of thousands of radians.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void rope_kernel(T* __restrict__ q, T* __restrict__ k, const int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, int Hq, int Hk, int D, bool neox) {
  const int64_t t = blockIdx.x;
  const int half = D / 2;
  const float pos = static_cast<float>(positions[t]);
  const int pairs = (Hq + Hk) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    int h = idx / half, i = idx % half;
    T* base = h < Hq ? q + (t * Hq + h) * D : k + (t * Hk + (h - Hq)) * D;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    int a = neox ? i : 2 * i;
    int b = neox ? i + half : 2 * i + 1;
    float x0 = to_f32(base[a]), x1 = to_f32(base[b]);
    base[a] = from_f32<T>(x0 * c - x1 * s);
    base[b] = from_f32<T>(x1 * c + x0 * s);
  }
}

}  // namespace

cudaError_t launch_rope(void* q, void* k, const int32_t* positions, const float* inv_freq, int64_t T, int64_t Hq,
                        int64_t Hk, int64_t D, bool neox, DType dtype, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D % 2 != 0) return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, rope_kernel<scalar_t><<<static_cast<unsigned>(T), 256, 0, stream>>>(
                                  static_cast<scalar_t*>(q), static_cast<scalar_t*>(k), positions, inv_freq,
                                  static_cast<int>(Hq), static_cast<int>(Hk), static_cast<int>(D), neox));
  return cudaGetLastError();
}

}  // namespace ember::cuda
