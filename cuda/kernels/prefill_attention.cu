// Causal attention for prefill chunks (and mixed batches): a block takes 16 (query, head) rows of
// one sequence and one kv head, and streams that sequence's keys, cached past and chunk alike,
// from the paged cache in 32-key tiles with an online softmax (flash-style, fp32 state).
#include "kernels/attention_core.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

using attn::kRowsPerWarp;
constexpr int kWarps = kPrefillRowsPerTile / kRowsPerWarp;
constexpr int kTileKeys = 32;

template <typename T>
size_t prefill_smem_bytes(int D) {
  return sizeof(float) * kPrefillRowsPerTile * D + sizeof(int64_t) * kTileKeys +
         sizeof(T) * static_cast<size_t>(kTileKeys) * (attn::k_stride<T>(D) + D);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    prefill_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                   T* __restrict__ out, const int32_t* __restrict__ query_start, const int32_t* __restrict__ seq_lens,
                   const int32_t* __restrict__ block_tables, const PrefillWorkItem* __restrict__ items, int Hq,
                   int Hk, int D, int max_blocks_per_seq, int block_size, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem[];
  const PrefillWorkItem item = items[blockIdx.x];
  const int kvh = blockIdx.y;
  const int s = item.seq;
  const int G = Hq / Hk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = query_start[s];
  const int qlen = query_start[s + 1] - q0;
  const int L = seq_lens[s];
  const int nrows = qlen * G;
  const int32_t* table = block_tables + static_cast<int64_t>(s) * max_blocks_per_seq;

  float* q_s = reinterpret_cast<float*>(smem);
  int64_t* slot_s = reinterpret_cast<int64_t*>(q_s + kPrefillRowsPerTile * D);
  T* k_s = reinterpret_cast<T*>(slot_s + kTileKeys);
  T* v_s = k_s + kTileKeys * attn::k_stride<T>(D);

  // Row r of the tile: query i = flat / G, head g = flat % G; it sees positions <= L - qlen + i.
  for (int idx = threadIdx.x; idx < kPrefillRowsPerTile * D; idx += blockDim.x) {
    int r = idx / D, d = idx % D, flat = item.row0 + r;
    float v = 0.0f;
    if (flat < nrows) {
      int i = flat / G, g = flat % G;
      v = to_f32(q[(static_cast<int64_t>(q0 + i) * Hq + kvh * G + g) * D + d]) * scale_log2;
    }
    q_s[idx] = v;
  }
  int row_limit[kRowsPerWarp];
  int warp_limit = -1;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    int flat = item.row0 + warp * kRowsPerWarp + r;
    row_limit[r] = flat < nrows ? L - qlen + flat / G : -1;
    warp_limit = max(warp_limit, row_limit[r]);
  }
  const int last_flat = min(nrows, item.row0 + kPrefillRowsPerTile) - 1;
  const int k_end = last_flat >= 0 ? L - qlen + last_flat / G + 1 : 0;

  attn::WarpRows st;
  st.init();
  float* q_warp = q_s + warp * kRowsPerWarp * D;
  for (int t0 = 0; t0 < k_end; t0 += kTileKeys) {
    const int n = min(kTileKeys, k_end - t0);
    __syncthreads();
    attn::load_kv_tile(k_cache, v_cache, table, block_size, Hk, kvh, D, t0, n, k_s, v_s, slot_s);
    __syncthreads();
    if (t0 <= warp_limit) attn::fold_tile(q_warp, k_s, v_s, D, n, t0, row_limit, st);
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    int flat = item.row0 + warp * kRowsPerWarp + r;
    if (flat >= nrows) continue;
    int i = flat / G, g = flat % G;
    T* orow = out + (static_cast<int64_t>(q0 + i) * Hq + kvh * G + g) * D;
    float inv = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
#pragma unroll
    for (int c = 0; c < attn::kMaxDimChunks; ++c) {
      int d = lane + 32 * c;
      if (d < D) orow[d] = from_f32<T>(st.acc[r][c] * inv);
    }
  }
}

template <typename T>
cudaError_t run_prefill(const PrefillAttentionArgs& a, cudaStream_t stream) {
  size_t smem = prefill_smem_bytes<T>(a.head_dim);
  cudaError_t err = cudaFuncSetAttribute(prefill_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  dim3 grid(a.num_items, a.num_kv_heads);
  prefill_kernel<T><<<grid, kWarps * 32, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache),
      static_cast<T*>(a.out), a.query_start, a.seq_lens, a.block_tables, a.items, a.num_heads, a.num_kv_heads,
      a.head_dim, a.max_blocks_per_seq, a.block_size, a.scale * 1.4426950408889634f);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_prefill_attention(const PrefillAttentionArgs& args, DType dtype, cudaStream_t stream) {
  if (args.num_items == 0) return cudaSuccess;
  if (args.head_dim > attn::kMaxHeadDim || args.num_kv_heads <= 0 || args.num_heads % args.num_kv_heads != 0)
    return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, return run_prefill<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace ember::cuda
