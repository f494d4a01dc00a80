// Decode-time matmul for a handful of tokens, out[T, N] = x[T, K] w[N, K]^T: the weights are read
// once at memory bandwidth with 16-byte streaming loads and the tiny product runs on the tensor cores.
// Decode also folds its neighbours in (RMSNorm before, residual add or SwiGLU after): one kernel fewer each.
#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

// Layout: one mma.m16n8k16 per 16 k takes A = x (16 tokens x 16 k) and B = w^T (16 k x 8 weight
// rows). A dot product does not care in which order it visits k, so each lane feeds both operands
// from one 16-byte load of 8 consecutive k: lane (g = lane/4, q = lane%4) loads weight row g and
// token g at k0 + 8q, and the two mmas of that 32-k chunk see the same k permutation in A and B.
constexpr int kChunk = 32;  // k per warp step (4 lanes x 8 elements)
// Warps per block: up to 16 with one row group (small N needs them to keep enough loads in flight),
// up to 8 with two, whose register budget then stays at 255 a thread.
template <int RG>
constexpr int kMaxWarps = RG == 1 ? 16 : 8;

__device__ __forceinline__ uint4 load_streamed(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

template <typename S>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The weight operands of U chunks for one lane (RG vectors per chunk). Only the weights ride the
// software pipeline: x is re-read from L1/L2 when a group is multiplied, which keeps the registers
// for more weight bytes in flight (U = 8 with one row group).
template <int RG, int U>
struct Fragments {
  uint4 w[U][RG];
};

// x scaled by the norm weight on its way into the mma (8 elements of one lane), with the sum of
// squares of the unscaled x accumulated for the block's own RMS.
template <typename S>
__device__ __forceinline__ uint4 norm_scaled(uint4 v, const float* nw, float& ss) {
  union Vec {
    uint4 u;
    S e[8];
  } in, out;
  in.u = v;
  const float4 a = __ldg(reinterpret_cast<const float4*>(nw)), b = __ldg(reinterpret_cast<const float4*>(nw) + 1);
  const float w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float f = to_f32(in.e[i]);
    ss += f * f;
    out.e[i] = from_f32<S>(f * w[i]);
  }
  return out.u;
}

// A block owns 8*RG weight rows (kNormSwiGLU: 8 gate rows and the 8 matching up rows F further
// on); its warps split K in groups of U chunks and meet in shared memory at the end. HI: tokens
// 8..15 exist (T > 8; plain mode only). Rows past N and tokens past T read a clamped (valid) row
// instead: they only feed D entries that are never stored.
template <typename S, int RG, int U, bool HI, GemvMode M>
__global__ void __launch_bounds__(kMaxWarps<RG> * 32) gemv_kernel(const S* __restrict__ x, const S* __restrict__ w,
                                                              const float* __restrict__ bias, S* out, int T, int N,
                                                              int K, const float* __restrict__ norm_w, float eps) {
  constexpr bool kNorm = M == GemvMode::kNorm || M == GemvMode::kNormSwiGLU;
  constexpr bool kSwiGLU = M == GemvMode::kNormSwiGLU;
  static_assert(!kSwiGLU || RG == 2, "SwiGLU pairs one gate and one up row group");
  static_assert(M == GemvMode::kPlain || !HI, "the fused modes serve up to 8 tokens");
  __shared__ float partial[kMaxWarps<RG>][RG][16][8];  // [warp][row group][token][row]
  __shared__ float sumsq[kMaxWarps<RG>][8];            // [warp][token] (norm modes)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int row0 = blockIdx.x * (kSwiGLU ? 8 : 8 * RG);

  const S* wrow[RG];
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    const int64_t row = kSwiGLU ? static_cast<int64_t>(r) * N + min(row0 + g, N - 1) : min(row0 + r * 8 + g, N - 1);
    wrow[r] = w + row * K + q * 8;
  }
  const S* xlo = x + static_cast<int64_t>(min(g, T - 1)) * K + q * 8;
  const S* xhi = x + static_cast<int64_t>(min(g + 8, T - 1)) * K + q * 8;
  const float* nwq = norm_w + q * 8;
  float ss = 0.0f;

  float acc[RG][4];
#pragma unroll
  for (int r = 0; r < RG; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load = [&](Fragments<RG, U>& f, int chunk0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < RG; ++r) f.w[u][r] = load_streamed(wrow[r] + (chunk0 + u) * kChunk);
    }
  };
  auto load_x = [&](int k, uint4& xl, uint4& xh) {
    xl = __ldg(reinterpret_cast<const uint4*>(xlo + k));
    xh = HI ? __ldg(reinterpret_cast<const uint4*>(xhi + k)) : zero;
    if constexpr (kNorm) xl = norm_scaled<S>(xl, nwq + k, ss);
  };
  auto compute = [&](const Fragments<RG, U>& f, int chunk0) {
    uint4 xl[U], xh[U];
#pragma unroll
    for (int u = 0; u < U; ++u) load_x((chunk0 + u) * kChunk, xl[u], xh[u]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < RG; ++r) {
        mma16816<S>(acc[r], xl[u].x, xh[u].x, xl[u].y, xh[u].y, f.w[u][r].x, f.w[u][r].y);
        mma16816<S>(acc[r], xl[u].z, xh[u].z, xl[u].w, xh[u].w, f.w[u][r].z, f.w[u][r].w);
      }
    }
  };

  // Whole groups, software-pipelined: the next group's loads are issued before this group's mmas.
  // The weights do not depend on the kernel before this one, so the first group's loads go out
  // before waiting for it (launch_chained). (An L2 prefetch of the rest of the block's rows was
  // tried as well: it slowed every GEMV by ~15 % on an H200.)
  const int groups = K / (kChunk * U);
  int j = warp;
  Fragments<RG, U> cur, next;
  if (j < groups) load(cur, j * U);
  pdl_wait();
  pdl_release();
  if (j < groups) {
    for (; j + nwarps < groups; j += nwarps) {
      load(next, (j + nwarps) * U);
      compute(cur, j * U);
      cur = next;
    }
    compute(cur, j * U);
  }
  // The rest of K, one chunk at a time; K % 8 == 0, so a lane's 8 elements are all in or all out.
  const int nchunks = (K + kChunk - 1) / kChunk;
  for (int c = groups * U + warp; c < nchunks; c += nwarps) {
    const int k = c * kChunk;
    const bool in = k + q * 8 < K;
    uint4 wv[RG];
#pragma unroll
    for (int r = 0; r < RG; ++r) wv[r] = in ? load_streamed(wrow[r] + k) : zero;
    uint4 xl = zero, xh = zero;
    if (in) load_x(k, xl, xh);
#pragma unroll
    for (int r = 0; r < RG; ++r) {
      mma16816<S>(acc[r], xl.x, xh.x, xl.y, xh.y, wv[r].x, wv[r].y);
      mma16816<S>(acc[r], xl.z, xh.z, xl.w, xh.w, wv[r].z, wv[r].w);
    }
  }

  // D fragment: lane (g, q) holds tokens g (acc 0, 1) and g + 8 (acc 2, 3) of rows 2q, 2q + 1.
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    partial[warp][r][g][2 * q] = acc[r][0];
    partial[warp][r][g][2 * q + 1] = acc[r][1];
    if (HI) {
      partial[warp][r][g + 8][2 * q] = acc[r][2];
      partial[warp][r][g + 8][2 * q + 1] = acc[r][3];
    }
  }
  if constexpr (kNorm) {  // lanes q = 0..3 of a token hold disjoint quarters of each chunk
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    ss += __shfl_xor_sync(0xffffffffu, ss, 2);
    if (q == 0) sumsq[warp][g] = ss;
  }
  __syncthreads();
  constexpr int kRows = kSwiGLU ? 8 : 8 * RG;  // output columns per block
  for (int i = threadIdx.x; i < kRows * T; i += blockDim.x) {
    const int t = i / kRows, rr = i % kRows, n = row0 + rr;
    if (n >= N) continue;
    float s = 0.0f, s_up = 0.0f, rs = 1.0f;
    for (int wi = 0; wi < nwarps; ++wi) s += partial[wi][rr / 8][t][rr % 8];
    if constexpr (kNorm) {
      float total = 0.0f;
      for (int wi = 0; wi < nwarps; ++wi) total += sumsq[wi][t];
      rs = rsqrtf(total / static_cast<float>(K) + eps);
      s *= rs;
    }
    S* o = out + static_cast<int64_t>(t) * N + n;
    if constexpr (kSwiGLU) {
      for (int wi = 0; wi < nwarps; ++wi) s_up += partial[wi][1][t][rr];
      // Rounded to S first, as the unfused matmul + silu_mul would see them.
      const float gate = to_f32(from_f32<S>(s)), up = to_f32(from_f32<S>(s_up * rs));
      *o = from_f32<S>(gate / (1.0f + expf(-gate)) * up);
    } else {
      if (bias) s += bias[n];
      if constexpr (M == GemvMode::kAdd) s = to_f32(*o) + to_f32(from_f32<S>(s));
      *o = from_f32<S>(s);
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

struct GemvCall {
  const void* x;
  const void* w;
  const float* bias;
  void* out;
  int T, N, K;
  GemvFusion fusion;
  cudaStream_t stream;
};

template <typename S, int RG, int U, GemvMode M>
cudaError_t launch_typed(const GemvCall& c, int warps) {
  const dim3 grid(static_cast<unsigned>(ceil_div(c.N, M == GemvMode::kNormSwiGLU ? 8 : 8 * RG)));
  const dim3 block(static_cast<unsigned>(warps * 32));
  const S* xs = static_cast<const S*>(c.x);
  const S* ws = static_cast<const S*>(c.w);
  S* os = static_cast<S*>(c.out);
  const float* nw = c.fusion.norm_weight;
  const float eps = c.fusion.eps;
  if constexpr (M == GemvMode::kPlain) {
    if (c.T > 8)
      return launch_chained<gemv_kernel<S, RG, U, true, M>>(grid, block, 0, c.stream, xs, ws, c.bias, os, c.T, c.N,
                                                            c.K, nw, eps);
  }
  return launch_chained<gemv_kernel<S, RG, U, false, M>>(grid, block, 0, c.stream, xs, ws, c.bias, os, c.T, c.N, c.K,
                                                         nw, eps);
}

// Every shape for the plain matmul; the fused modes keep the three shapes auto_shape picks (and
// SwiGLU only pairs of row groups), which keeps the number of compiled variants down.
template <typename S, GemvMode M>
cudaError_t launch_shaped(const GemvCall& c, GemvShape sh) {
  constexpr bool kPlain = M == GemvMode::kPlain;
  if constexpr (M == GemvMode::kNormSwiGLU) {
    if (sh.row_groups != 2 || sh.unroll != 4) return cudaErrorInvalidValue;
    return launch_typed<S, 2, 4, GemvMode::kNormSwiGLU>(c, sh.warps);
  } else {
    if (sh.row_groups == 2) {
      if (sh.unroll == 4) return launch_typed<S, 2, 4, M>(c, sh.warps);
      if constexpr (kPlain) return launch_typed<S, 2, 2, M>(c, sh.warps);
      return cudaErrorInvalidValue;
    }
    if (sh.unroll == 8) return launch_typed<S, 1, 8, M>(c, sh.warps);
    if (sh.unroll == 4) return launch_typed<S, 1, 4, M>(c, sh.warps);
    if constexpr (kPlain) return launch_typed<S, 1, 2, M>(c, sh.warps);
  }
  return cudaErrorInvalidValue;
}

template <typename S>
cudaError_t launch_mode(const GemvCall& c, GemvShape sh) {
  switch (c.fusion.mode) {
    case GemvMode::kPlain: return launch_shaped<S, GemvMode::kPlain>(c, sh);
    case GemvMode::kAdd: return launch_shaped<S, GemvMode::kAdd>(c, sh);
    case GemvMode::kNorm: return launch_shaped<S, GemvMode::kNorm>(c, sh);
    case GemvMode::kNormSwiGLU: return launch_shaped<S, GemvMode::kNormSwiGLU>(c, sh);
  }
  return cudaErrorInvalidValue;
}

// Measured on an H200 (tests/cuda/test_cuda_gemv_bench.cc, Llama-3-8B shapes): below about four
// 8-row groups per SM (o, down), one row group of 8 warps x 4-chunk groups; from there up two row
// groups of 4 warps (qkv); for very large N at T = 1 (gate_up, lm_head), one row group with 8-chunk
// groups keeps the most bytes in flight. Each pick is within a few percent of the best variant.
GemvShape auto_shape(int64_t T, int64_t N) {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    sms = 132;
  }
  const int64_t row_groups = (N + 7) / 8;
  if (row_groups < 4 * static_cast<int64_t>(sms)) return {1, 8, 4};
  if (T == 1 && row_groups >= 16 * static_cast<int64_t>(sms)) return {1, 8, 8};
  return {2, 4, 4};
}

}  // namespace

bool gemv_supports(const void* x, const void* w, int64_t T, int64_t N, int64_t K, DType dtype) {
  return (dtype == DType::BF16 || dtype == DType::F16) && T >= 1 && T <= kGemvMaxTokens && N >= 1 && K >= 8 &&
         K % 8 == 0 && N <= (int64_t{1} << 30) && K <= (int64_t{1} << 30) && aligned16(x) && aligned16(w);
}

bool gemv_fused_supports(const void* x, const void* w, int64_t T, int64_t N, int64_t K, DType dtype,
                         const GemvFusion& fusion) {
  if (fusion.mode == GemvMode::kPlain) return gemv_supports(x, w, T, N, K, dtype);
  const bool norm = fusion.mode == GemvMode::kNorm || fusion.mode == GemvMode::kNormSwiGLU;
  if (norm && (!fusion.norm_weight || !aligned16(fusion.norm_weight))) return false;
  return T <= kGemvCutoffTokens && N <= (int64_t{1} << 29) && gemv_supports(x, w, T, N, K, dtype);
}

cudaError_t launch_gemv_fused(const void* x, const void* w, const float* bias, void* out, int64_t T, int64_t N,
                              int64_t K, DType dtype, const GemvFusion& fusion, cudaStream_t stream, GemvShape shape) {
  if (!gemv_fused_supports(x, w, T, N, K, dtype, fusion)) return cudaErrorInvalidValue;
  if (fusion.mode == GemvMode::kNormSwiGLU && bias) return cudaErrorInvalidValue;
  if (shape.row_groups == 0 || shape.warps == 0 || shape.unroll == 0)
    shape = fusion.mode == GemvMode::kNormSwiGLU ? GemvShape{2, 4, 4} : auto_shape(T, N);
  if ((shape.row_groups != 1 && shape.row_groups != 2) || shape.warps < 1 ||
      shape.warps > (shape.row_groups == 1 ? kMaxWarps<1> : kMaxWarps<2>) ||
      (shape.unroll != 2 && shape.unroll != 4 && (shape.unroll != 8 || shape.row_groups != 1)))
    return cudaErrorInvalidValue;
  const GemvCall c{x, w, bias, out, static_cast<int>(T), static_cast<int>(N), static_cast<int>(K), fusion, stream};
  return dtype == DType::BF16 ? launch_mode<__nv_bfloat16>(c, shape) : launch_mode<__half>(c, shape);
}

cudaError_t launch_gemv(const void* x, const void* w, const float* bias, void* out, int64_t T, int64_t N, int64_t K,
                        DType dtype, cudaStream_t stream, GemvShape shape) {
  return launch_gemv_fused(x, w, bias, out, T, N, K, dtype, GemvFusion{}, stream, shape);
}

}  // namespace ember::cuda
