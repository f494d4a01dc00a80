// One kernel for a decoder layer's q|k|v split, rotary embedding and paged-cache write (models
// without q/k norm): saves four tiny launches per layer at decode, with rope.cu's exact arithmetic.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kHeadsPerBlock = 8;

// Block (t, y) rotates heads [y * kHeadsPerBlock, ...) of the Hq + Hk q and k heads of token t as
// rope_kernel does (fp32 precise sincos, one rounding to T; the angles are computed once per block
// and shared by its heads), q into `q`, k into its cache slot; the blocks of a token share the copy
// of v into its slot. Decode has one token, so the heads are what spreads the work over the chip.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    qkv_rope_kv_write_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ positions,
                             const float* __restrict__ inv_freq, const int32_t* __restrict__ slots,
                             T* __restrict__ q, T* __restrict__ k_cache, T* __restrict__ v_cache, int Hq, int Hk,
                             int D, bool neox) {
  extern __shared__ float2 sincos_s[];  // [D / 2]
  pdl_wait();
  pdl_release();
  const int64_t t = blockIdx.x;
  const int half = D / 2;
  const int64_t kv_row = static_cast<int64_t>(Hk) * D;
  const int64_t cols = static_cast<int64_t>(Hq) * D + 2 * kv_row;
  const T* row = qkv + t * cols;
  const int64_t slot = slots[t];
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float sn, cs;
    sincosf(pos * inv_freq[i], &sn, &cs);
    sincos_s[i] = make_float2(sn, cs);
  }
  __syncthreads();
  const int heads = slot < 0 ? Hq : Hq + Hk;  // a padding token's k goes nowhere
  const int h0 = blockIdx.y * kHeadsPerBlock, h1 = min(heads, h0 + kHeadsPerBlock);
  const int pairs = max(0, h1 - h0) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    const int h = h0 + idx / half, i = idx % half;
    const T* src = row + static_cast<int64_t>(h) * D;  // q heads then k heads, contiguous in qkv
    T* dst = h < Hq ? q + (t * Hq + h) * D : k_cache + slot * kv_row + static_cast<int64_t>(h - Hq) * D;
    const float2 sc = sincos_s[i];
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float x0 = to_f32(src[a]), x1 = to_f32(src[b]);
    dst[a] = from_f32<T>(x0 * sc.y - x1 * sc.x);
    dst[b] = from_f32<T>(x1 * sc.y + x0 * sc.x);
  }
  if (slot < 0) return;
  const T* v = row + static_cast<int64_t>(Hq) * D + kv_row;
  T* vd = v_cache + slot * kv_row;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < kv_row; i += stride) vd[i] = v[i];
}

}  // namespace

cudaError_t launch_qkv_rope_kv_write(const void* qkv, const int32_t* positions, const float* inv_freq,
                                     const int32_t* slot_mapping, void* q, void* k_cache, void* v_cache, int64_t T,
                                     int64_t Hq, int64_t Hk, int64_t D, bool neox, DType dtype, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (D % 2 != 0) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(ceil_div(Hq + Hk, kHeadsPerBlock)));
  const size_t smem = sizeof(float2) * static_cast<size_t>(D / 2);
  EMBER_DISPATCH_FLOAT(dtype, return launch_chained<qkv_rope_kv_write_kernel<scalar_t>>(
                                  grid, kThreads, smem, stream, static_cast<const scalar_t*>(qkv), positions, inv_freq,
                                  slot_mapping, static_cast<scalar_t*>(q), static_cast<scalar_t*>(k_cache),
                                  static_cast<scalar_t*>(v_cache), static_cast<int>(Hq), static_cast<int>(Hk),
                                  static_cast<int>(D), neox));
  return cudaSuccess;
}

}  // namespace ember::cuda
