// Fills a tensor with the stateless hash values of ember/random_fill.h, so that benchmark models
// of real shapes are built directly on the GPU with no file and no host round trip.
#include "ember/random_fill.h"
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void fill_random_kernel(T* __restrict__ x, int64_t n, uint64_t seed, float scale, float offset) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = from_f32<T>(random_fill_value(seed, static_cast<uint64_t>(i), scale, offset));
  }
}

}  // namespace

cudaError_t launch_fill_random(void* x, int64_t n, uint64_t seed, float scale, float offset, DType dtype,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 65536));
  EMBER_DISPATCH_FLOAT(dtype, fill_random_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
                                  static_cast<scalar_t*>(x), n, seed, scale, offset));
  return cudaGetLastError();
}

}  // namespace ember::cuda
