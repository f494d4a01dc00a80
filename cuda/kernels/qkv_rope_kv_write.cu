// One kernel for a decoder layer's q|k|v split, rotary embedding and paged-cache write (models
// without q/k norm): saves four tiny launches per layer at decode, with rope.cu's exact arithmetic.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

// One block per token: rotates the Hq + Hk heads of q and k as rope_kernel does (fp32 precise
// sincos, one rounding to T), q into `q`, k into its cache slot; then copies v into its slot.
template <typename T>
__global__ void qkv_rope_kv_write_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ positions,
                                         const float* __restrict__ inv_freq, const int32_t* __restrict__ slots,
                                         T* __restrict__ q, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                         int Hq, int Hk, int D, bool neox) {
  const int64_t t = blockIdx.x;
  const int half = D / 2;
  const int64_t kv_row = static_cast<int64_t>(Hk) * D;
  const int64_t cols = static_cast<int64_t>(Hq) * D + 2 * kv_row;
  const T* row = qkv + t * cols;
  const int64_t slot = slots[t];
  const float pos = static_cast<float>(positions[t]);
  const int pairs = (slot < 0 ? Hq : Hq + Hk) * half;  // a padding token's k goes nowhere
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    int h = idx / half, i = idx % half;
    const T* src = row + static_cast<int64_t>(h) * D;  // q heads then k heads, contiguous in qkv
    T* dst = h < Hq ? q + (t * Hq + h) * D : k_cache + slot * kv_row + static_cast<int64_t>(h - Hq) * D;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    int a = neox ? i : 2 * i;
    int b = neox ? i + half : 2 * i + 1;
    float x0 = to_f32(src[a]), x1 = to_f32(src[b]);
    dst[a] = from_f32<T>(x0 * c - x1 * s);
    dst[b] = from_f32<T>(x1 * c + x0 * s);
  }
  if (slot < 0) return;
  const T* v = row + static_cast<int64_t>(Hq) * D + kv_row;
  for (int64_t i = threadIdx.x; i < kv_row; i += blockDim.x) v_cache[slot * kv_row + i] = v[i];
}

}  // namespace

cudaError_t launch_qkv_rope_kv_write(const void* qkv, const int32_t* positions, const float* inv_freq,
                                     const int32_t* slot_mapping, void* q, void* k_cache, void* v_cache, int64_t T,
                                     int64_t Hq, int64_t Hk, int64_t D, bool neox, DType dtype, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D % 2 != 0) return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, qkv_rope_kv_write_kernel<scalar_t><<<static_cast<unsigned>(T), 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(qkv), positions, inv_freq, slot_mapping,
                                  static_cast<scalar_t*>(q), static_cast<scalar_t*>(k_cache),
                                  static_cast<scalar_t*>(v_cache), static_cast<int>(Hq), static_cast<int>(Hk),
                                  static_cast<int>(D), neox));
  return cudaGetLastError();
}

}  // namespace ember::cuda
