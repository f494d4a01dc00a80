// Small elementwise ops: residual add, row gather (hidden rows that get logits), bias add after a
// GEMM. Arithmetic in fp32, one rounding to the activation dtype.
#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + 255) / 256, 65536)); }

template <typename T>
__global__ void add_kernel(T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    a[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ idx, int64_t row_elems,
                                   T* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const T* src = x + static_cast<int64_t>(idx[r]) * row_elems;
  for (int64_t i = threadIdx.x; i < row_elems; i += blockDim.x) out[r * row_elems + i] = src[i];
}

template <typename T>
__global__ void add_bias_kernel(T* __restrict__ out, const float* __restrict__ bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(to_f32(out[i]) + bias[i % cols]);
}

}  // namespace

cudaError_t launch_add(void* a, const void* b, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, add_kernel<scalar_t><<<grid_for(n), 256, 0, stream>>>(
                                  static_cast<scalar_t*>(a), static_cast<const scalar_t*>(b), n));
  return cudaGetLastError();
}

cudaError_t launch_gather_rows(const void* x, const int32_t* idx, int64_t n, int64_t row_elems, void* out,
                               DType dtype, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, gather_rows_kernel<scalar_t><<<static_cast<unsigned>(n), 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(x), idx, row_elems, static_cast<scalar_t*>(out)));
  return cudaGetLastError();
}

cudaError_t launch_add_bias(void* out, const float* bias, int64_t rows, int64_t cols, DType dtype,
                            cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, add_bias_kernel<scalar_t><<<grid_for(rows * cols), 256, 0, stream>>>(
                                  static_cast<scalar_t*>(out), bias, rows, cols));
  return cudaGetLastError();
}

}  // namespace ember::cuda
