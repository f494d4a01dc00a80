// RMSNorm, plain and fused with the residual add: one block per row, fp32 sums, the residual is
// rounded to the activation dtype before it is normalised (what the next layer reads back).
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, bool kAdd>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(T* __restrict__ residual, const T* __restrict__ delta,
                                                            const float* __restrict__ w, T* __restrict__ out,
                                                            int64_t dim, float eps) {
  __shared__ float scratch[32];
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

}  // namespace

cudaError_t launch_rms_norm(const void* x, const float* w, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, rms_norm_kernel<scalar_t, false><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
                                  const_cast<scalar_t*>(static_cast<const scalar_t*>(x)), nullptr, w,
                                  static_cast<scalar_t*>(out), dim, eps));
  return cudaGetLastError();
}

cudaError_t launch_add_rms_norm(void* residual, const void* delta, const float* w, void* out, int64_t rows,
                                int64_t dim, float eps, DType dtype, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, rms_norm_kernel<scalar_t, true><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
                                  static_cast<scalar_t*>(residual), static_cast<const scalar_t*>(delta), w,
                                  static_cast<scalar_t*>(out), dim, eps));
  return cudaGetLastError();
}

}  // namespace ember::cuda
