// Decode-time matmul for a handful of tokens, out[T, N] = x[T, K] w[N, K]^T: the weights are read
// once at memory bandwidth with 16-byte streaming loads and the tiny product runs on the tensor cores.
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

// A block owns 8*RG consecutive weight rows; its warps split K in groups of U chunks and meet in
// shared memory at the end. HI: tokens 8..15 exist (T > 8). Rows past N and tokens past T read a
// clamped (valid) row instead: they only feed D entries that are never stored.
template <typename S, int RG, int U, bool HI>
__global__ void __launch_bounds__(kMaxWarps<RG> * 32) gemv_kernel(const S* __restrict__ x, const S* __restrict__ w,
                                                              const float* __restrict__ bias, S* __restrict__ out,
                                                              int T, int N, int K) {
  __shared__ float partial[kMaxWarps<RG>][RG][16][8];  // [warp][row group][token][row]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int row0 = blockIdx.x * (8 * RG);

  const S* wrow[RG];
#pragma unroll
  for (int r = 0; r < RG; ++r) wrow[r] = w + static_cast<int64_t>(min(row0 + r * 8 + g, N - 1)) * K + q * 8;
  const S* xlo = x + static_cast<int64_t>(min(g, T - 1)) * K + q * 8;
  const S* xhi = x + static_cast<int64_t>(min(g + 8, T - 1)) * K + q * 8;

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
  auto compute = [&](const Fragments<RG, U>& f, int chunk0) {
    uint4 xl[U], xh[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = (chunk0 + u) * kChunk;
      xl[u] = __ldg(reinterpret_cast<const uint4*>(xlo + k));
      xh[u] = HI ? __ldg(reinterpret_cast<const uint4*>(xhi + k)) : zero;
    }
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
    const uint4 xl = in ? __ldg(reinterpret_cast<const uint4*>(xlo + k)) : zero;
    const uint4 xh = HI && in ? __ldg(reinterpret_cast<const uint4*>(xhi + k)) : zero;
#pragma unroll
    for (int r = 0; r < RG; ++r) {
      mma16816<S>(acc[r], xl.x, xh.x, xl.y, xh.y, wv[r].x, wv[r].y);
      mma16816<S>(acc[r], xl.z, xh.z, xl.w, xh.w, wv[r].z, wv[r].w);
    }
  }

  // The next kernel may start once every block is past its loads, not as soon as this one starts:
  // tg128 +2 % on an H200 (219 -> 223 tok/s), as the next kernel's blocks no longer sit idle on SMs.
  pdl_release();

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
  __syncthreads();
  constexpr int kRows = 8 * RG;
  for (int i = threadIdx.x; i < kRows * T; i += blockDim.x) {
    const int t = i / kRows, rr = i % kRows, n = row0 + rr;
    if (n >= N) continue;
    float s = 0.0f;
    for (int wi = 0; wi < nwarps; ++wi) s += partial[wi][rr / 8][t][rr % 8];
    if (bias) s += bias[n];
    out[static_cast<int64_t>(t) * N + n] = from_f32<S>(s);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename S, int RG, int U>
cudaError_t launch_typed(const void* x, const void* w, const float* bias, void* out, int T, int N, int K, int warps,
                         cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(N, 8 * RG))), block(static_cast<unsigned>(warps * 32));
  const S* xs = static_cast<const S*>(x);
  const S* ws = static_cast<const S*>(w);
  S* os = static_cast<S*>(out);
  if (T > 8) return launch_chained<gemv_kernel<S, RG, U, true>>(grid, block, 0, stream, xs, ws, bias, os, T, N, K);
  return launch_chained<gemv_kernel<S, RG, U, false>>(grid, block, 0, stream, xs, ws, bias, os, T, N, K);
}

template <typename S>
cudaError_t launch_shaped(const void* x, const void* w, const float* bias, void* out, int T, int N, int K,
                          GemvShape sh, cudaStream_t stream) {
  if (sh.row_groups == 2)
    return sh.unroll == 2 ? launch_typed<S, 2, 2>(x, w, bias, out, T, N, K, sh.warps, stream)
                          : launch_typed<S, 2, 4>(x, w, bias, out, T, N, K, sh.warps, stream);
  if (sh.unroll == 8) return launch_typed<S, 1, 8>(x, w, bias, out, T, N, K, sh.warps, stream);
  return sh.unroll == 2 ? launch_typed<S, 1, 2>(x, w, bias, out, T, N, K, sh.warps, stream)
                        : launch_typed<S, 1, 4>(x, w, bias, out, T, N, K, sh.warps, stream);
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

cudaError_t launch_gemv(const void* x, const void* w, const float* bias, void* out, int64_t T, int64_t N, int64_t K,
                        DType dtype, cudaStream_t stream, GemvShape shape) {
  if (!gemv_supports(x, w, T, N, K, dtype)) return cudaErrorInvalidValue;
  if (shape.row_groups == 0 || shape.warps == 0 || shape.unroll == 0) shape = auto_shape(T, N);
  if ((shape.row_groups != 1 && shape.row_groups != 2) || shape.warps < 1 ||
      shape.warps > (shape.row_groups == 1 ? kMaxWarps<1> : kMaxWarps<2>) ||
      (shape.unroll != 2 && shape.unroll != 4 && (shape.unroll != 8 || shape.row_groups != 1)))
    return cudaErrorInvalidValue;
  const int t = static_cast<int>(T), n = static_cast<int>(N), k = static_cast<int>(K);
  return dtype == DType::BF16 ? launch_shaped<__nv_bfloat16>(x, w, bias, out, t, n, k, shape, stream)
                              : launch_shaped<__half>(x, w, bias, out, t, n, k, shape, stream);
}

}  // namespace ember::cuda
