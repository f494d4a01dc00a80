// Shared device helpers for the kernels: fp32 <-> activation dtype conversion, warp/block
// reductions, and the one dtype switch that turns an ember::DType into a template argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <utility>

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

// Programmatic dependent launch (Hopper and later). A kernel launched by launch_chained may start
// while the kernel before it in the stream is still finishing, so it must call pdl_wait() before
// it reads anything that kernel wrote or writes anything it reads; work before that point (loading
// weights) overlaps the other kernel's tail. pdl_release() lets the next chained kernel start.
// Both are no-ops when the kernel was launched normally or on older GPUs.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether chained launches may be used on the current device for a kernel whose code was built for
// `binary_version` (cudaFuncAttributes::binaryVersion, 90 = sm_90): both at compute capability 9 or
// later (older code has no pdl_wait in it), and not turned off by EMBER_NO_PDL=1.
bool chained_launch_enabled(int binary_version);

template <typename... Params, typename... Args>
cudaError_t launch_kernel_ex(bool chained, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  if (chained) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

// Launches `Kernel` with programmatic stream serialization where chained_launch_enabled(); the
// kernel's image version is looked up once per kernel.
template <auto Kernel, typename... Args>
cudaError_t launch_chained(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  static const int binary_version = [] {
    cudaFuncAttributes fa{};
    if (cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(Kernel)) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return fa.binaryVersion;
  }();
  return launch_kernel_ex(chained_launch_enabled(binary_version), Kernel, grid, block, smem, stream,
                          std::forward<Args>(args)...);
}

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
