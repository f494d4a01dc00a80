// Shared device helpers for the kernels: fp32 <-> activation dtype conversion, warp/block
// reductions, and the one dtype switch that turns an ember::DType into a template argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "ember/dtype.h"

namespace ember::cuda {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call ends with the scratch free for reuse.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : 0.0f;
  r = warp_sum(r);
  return r;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -FLT_MAX;
  r = warp_max(r);
  return r;
}

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace ember::cuda

// Runs `body` with `scalar_t` bound to the CUDA type of `dt` (F32, F16, BF16); other dtypes make
// the launcher return cudaErrorInvalidValue.
#define EMBER_DISPATCH_FLOAT(dt, ...)                               \
  switch (dt) {                                                     \
    case ::ember::DType::F32: {                                     \
      using scalar_t = float;                                       \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    case ::ember::DType::F16: {                                     \
      using scalar_t = __half;                                      \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    case ::ember::DType::BF16: {                                    \
      using scalar_t = __nv_bfloat16;                               \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    default:                                                        \
      return cudaErrorInvalidValue;                                 \
  }
