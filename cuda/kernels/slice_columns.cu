// Splits the fused q|k|v projection output into contiguous q, k and v, so that one GEMM reads the
// three weight matrices in a single pass.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void slice_columns_kernel(const T* __restrict__ x, int64_t rows, int64_t C, int64_t begin, int64_t W,
                                     T* __restrict__ out) {
  const int64_t total = rows * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / W, c = i % W;
    out[i] = x[t * C + begin + c];
  }
}

}  // namespace

cudaError_t launch_slice_columns(const void* x, int64_t T, int64_t C, int64_t begin, int64_t W, void* out,
                                 DType dtype, cudaStream_t stream) {
  const int64_t total = T * W;
  if (total == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65536));
  EMBER_DISPATCH_FLOAT(dtype, slice_columns_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(x), T, C, begin, W, static_cast<scalar_t*>(out)));
  return cudaGetLastError();
}

}  // namespace ember::cuda
