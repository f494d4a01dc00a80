// The SwiGLU gate: out = silu(gate) * up, where x holds [gate | up] per row.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t T_, int64_t F) {
  const int64_t total = T_ * F;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx / F, f = idx % F;
    float g = to_f32(x[t * 2 * F + f]);
    float u = to_f32(x[t * 2 * F + F + f]);
    out[idx] = from_f32<T>(g / (1.0f + expf(-g)) * u);
  }
}

}  // namespace

cudaError_t launch_silu_mul(const void* x, void* out, int64_t T, int64_t F, DType dtype, cudaStream_t stream) {
  const int64_t total = T * F;
  if (total == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65536));
  EMBER_DISPATCH_FLOAT(dtype, silu_mul_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), T, F));
  return cudaGetLastError();
}

}  // namespace ember::cuda
