// Decode attention (one query per sequence) over the paged KV cache: a block serves one sequence,
// one kv head and up to four of its query heads (GQA), and long contexts are split over blocks
// (split-K) whose partial softmax states a second kernel merges.
#include "kernels/attention_core.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

using attn::kRowsPerWarp;
constexpr int kWarps = 4;

template <typename T>
size_t decode_smem_bytes(int D, int tile_keys) {
  return sizeof(float) * kRowsPerWarp * D + sizeof(int64_t) * tile_keys +
         sizeof(T) * static_cast<size_t>(tile_keys) * (attn::k_stride<T>(D) + D);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    decode_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                  T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                  const int32_t* __restrict__ query_start, const int32_t* __restrict__ seq_lens,
                  const int32_t* __restrict__ block_tables, int Hq, int Hk, int D, int max_blocks_per_seq,
                  int block_size, float scale_log2, int splits, int tile_keys) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int s = blockIdx.x;
  const int G = Hq / Hk;
  const int ngroups = (G + kRowsPerWarp - 1) / kRowsPerWarp;
  const int kvh = blockIdx.y / ngroups, grp = blockIdx.y % ngroups;
  const int split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int tok = query_start[s];
  if (query_start[s + 1] - tok != 1) return;  // this kernel serves one-query (decode) sequences only
  const int L = seq_lens[s];
  const int32_t* table = block_tables + static_cast<int64_t>(s) * max_blocks_per_seq;

  float* q_s = reinterpret_cast<float*>(smem);
  int64_t* slot_s = reinterpret_cast<int64_t*>(q_s + kRowsPerWarp * D);
  T* k_s = reinterpret_cast<T*>(slot_s + tile_keys);
  T* v_s = k_s + tile_keys * attn::k_stride<T>(D);

  int row_limit[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) row_limit[r] = grp * kRowsPerWarp + r < G ? L - 1 : -1;
  for (int idx = threadIdx.x; idx < kRowsPerWarp * D; idx += blockDim.x) {
    int r = idx / D, d = idx % D, g = grp * kRowsPerWarp + r;
    q_s[idx] = g < G ? to_f32(q[(static_cast<int64_t>(tok) * Hq + kvh * G + g) * D + d]) * scale_log2 : 0.0f;
  }

  // This split's share of the context, whole tiles so that splits never share a tile.
  int per = (L + splits - 1) / splits;
  per = (per + tile_keys - 1) / tile_keys * tile_keys;
  const int k_begin = split * per;
  const int k_end = min(L, k_begin + per);
  const int sub = tile_keys / kWarps;

  attn::WarpRows st;
  st.init();
  for (int t0 = k_begin; t0 < k_end; t0 += tile_keys) {
    const int n = min(tile_keys, k_end - t0);
    __syncthreads();
    attn::load_kv_tile(k_cache, v_cache, table, block_size, Hk, kvh, D, t0, n, k_s, v_s, slot_s);
    __syncthreads();
    const int wn = min(sub, n - warp * sub);
    if (wn > 0)
      attn::fold_tile(q_s, k_s + warp * sub * attn::k_stride<T>(D), v_s + warp * sub * D, D, wn, t0 + warp * sub,
                      row_limit, st);
  }

  // Merge the warps' states (the tile area is free now).
  __syncthreads();
  float* m_s = reinterpret_cast<float*>(k_s);
  float* l_s = m_s + kWarps * kRowsPerWarp;
  float* a_s = l_s + kWarps * kRowsPerWarp;
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      m_s[warp * kRowsPerWarp + r] = st.m[r];
      l_s[warp * kRowsPerWarp + r] = st.l[r];
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int i = 0; i < attn::kMaxDimChunks; ++i) {
      int d = lane + 32 * i;
      if (d < D) a_s[(warp * kRowsPerWarp + r) * D + d] = st.acc[r][i];
    }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRowsPerWarp * D; idx += blockDim.x) {
    int r = idx / D, d = idx % D, g = grp * kRowsPerWarp + r;
    if (g >= G) continue;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, m_s[w * kRowsPerWarp + r]);
    float lsum = 0.0f, acc = 0.0f;
    if (M != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        float mw = m_s[w * kRowsPerWarp + r];
        if (mw == -INFINITY) continue;
        float f = exp2f(mw - M);
        lsum += l_s[w * kRowsPerWarp + r] * f;
        acc += a_s[(w * kRowsPerWarp + r) * D + d] * f;
      }
    }
    const int h = kvh * G + g;
    if (splits == 1) {
      out[(static_cast<int64_t>(tok) * Hq + h) * D + d] = from_f32<T>(lsum > 0.0f ? acc / lsum : 0.0f);
    } else {
      int64_t p = (static_cast<int64_t>(s) * Hq + h) * splits + split;
      part_acc[p * D + d] = acc;
      if (d == 0) {
        part_ml[p * 2] = M;
        part_ml[p * 2 + 1] = lsum;
      }
    }
  }
}

template <typename T>
__global__ void combine_kernel(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                               const int32_t* __restrict__ query_start, T* __restrict__ out, int Hq, int D,
                               int splits) {
  const int s = blockIdx.x, h = blockIdx.y;
  const int tok = query_start[s];
  if (query_start[s + 1] - tok != 1) return;
  const int64_t p0 = (static_cast<int64_t>(s) * Hq + h) * splits;
  float M = -INFINITY;
  for (int k = 0; k < splits; ++k) M = fmaxf(M, part_ml[(p0 + k) * 2]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float lsum = 0.0f, acc = 0.0f;
    if (M != -INFINITY) {
      for (int k = 0; k < splits; ++k) {
        float mk = part_ml[(p0 + k) * 2];
        if (mk == -INFINITY) continue;
        float f = exp2f(mk - M);
        lsum += part_ml[(p0 + k) * 2 + 1] * f;
        acc += part_acc[(p0 + k) * D + d] * f;
      }
    }
    out[(static_cast<int64_t>(tok) * Hq + h) * D + d] = from_f32<T>(lsum > 0.0f ? acc / lsum : 0.0f);
  }
}

template <typename T>
cudaError_t run_decode(const DecodeAttentionArgs& a, cudaStream_t stream) {
  int tile_keys = 128;
  if (decode_smem_bytes<T>(a.head_dim, tile_keys) > 200 * 1024) tile_keys = 64;
  size_t smem = decode_smem_bytes<T>(a.head_dim, tile_keys) + 64;
  cudaError_t err = cudaFuncSetAttribute(decode_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int G = a.num_heads / a.num_kv_heads;
  const int ngroups = (G + kRowsPerWarp - 1) / kRowsPerWarp;
  dim3 grid(a.num_seqs, a.num_kv_heads * ngroups, a.num_splits);
  decode_kernel<T><<<grid, kWarps * 32, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache),
      static_cast<T*>(a.out), a.part_acc, a.part_ml, a.query_start, a.seq_lens, a.block_tables, a.num_heads,
      a.num_kv_heads, a.head_dim, a.max_blocks_per_seq, a.block_size, a.scale * 1.4426950408889634f, a.num_splits,
      tile_keys);
  err = cudaGetLastError();
  if (err != cudaSuccess || a.num_splits == 1) return err;
  combine_kernel<T><<<dim3(a.num_seqs, a.num_heads), 128, 0, stream>>>(a.part_acc, a.part_ml, a.query_start,
                                                                       static_cast<T*>(a.out), a.num_heads,
                                                                       a.head_dim, a.num_splits);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_paged_attention_decode(const DecodeAttentionArgs& args, DType dtype, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  if (args.head_dim > attn::kMaxHeadDim || args.num_kv_heads <= 0 || args.num_heads % args.num_kv_heads != 0 ||
      args.num_splits < 1 || (args.num_splits > 1 && (!args.part_acc || !args.part_ml)))
    return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, return run_decode<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace ember::cuda
