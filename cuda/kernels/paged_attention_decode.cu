// Decode attention (one query per sequence) over the paged KV cache. It is a pure read of K and V,
// so the fast path (F16/BF16, head_dim 64/80/96/128/256) is built to stream them at memory speed:
// one block per (sequence, kv head, up to 8 of its query heads, split of the context), every warp
// running its own cp.async pipeline of 16-key tiles and doing q.k and p.v on the tensor cores, so
// that each K/V byte is read once for all the group's query heads and the math hides under the
// loads. F32 and other head sizes take the older CUDA-core kernel. With several splits each block
// leaves a partial softmax state, and the last split block of a (sequence, head group) to finish,
// found with an arrival counter, merges them: no second kernel, so no second launch and drain on the
// decode critical path.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_core.cuh"
#include "kernels/launchers.h"
#include "kernels/mma_primitives.cuh"

namespace ember::cuda {
namespace {

// ---- split merge, by the last split block to finish ----

constexpr int kMergeThreads = 128;  // both kernels run 128-thread blocks
constexpr int kMergeBatch = 16;     // splits whose partials a thread loads before it uses any

// Called by every thread of a split block once its partials are stored: counts the block in on its
// (sequence, head group) counter and returns true, in all its threads, for the block that arrived
// last. Ordering: each thread's fence puts its partial stores before the barrier and so before
// thread 0's atomic (release); thread 0 of the last block fences after its atomic has read the full
// count (acquire) and the barrier hands that on to the block's other threads, which then read the
// partials through L2 (__ldcg). Every other split has counted itself in by then, so the last block
// puts the counter back to zero: the next launch, or the next replay of a graph, starts from zero
// (it touches the counter only after its pdl_wait, i.e. after this grid has ended).
__device__ __forceinline__ bool arrive_last(uint32_t* counter, int splits) {
  __threadfence();
  __syncthreads();
  bool last = false;
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == static_cast<uint32_t>(splits - 1);
    if (last) {
      __threadfence();
      *counter = 0u;
    }
  }
  return __syncthreads_or(last) != 0;
}

// Dim d of query head h's state in this block: the output itself when the context is not split,
// else this split's partial (acc, and with d == 0 the max and the sum) for the last block to merge.
template <typename T>
__device__ __forceinline__ void store_state(T* out, float* part_acc, float* part_ml, int s, int tok, int Hq, int h,
                                            int D, int d, int splits, int split, float o, float lsum, float M) {
  if (splits == 1) {
    out[(static_cast<int64_t>(tok) * Hq + h) * D + d] = from_f32<T>(lsum > 0.0f ? o / lsum : 0.0f);
    return;
  }
  const int64_t p = (static_cast<int64_t>(s) * Hq + h) * splits + split;
  part_acc[p * D + d] = o;
  if (d == 0) {
    part_ml[p * 2] = M;
    part_ml[p * 2 + 1] = lsum;
  }
}

template <int kVec>
__device__ __forceinline__ void load_cg(const float* p, float (&v)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 x = __ldcg(reinterpret_cast<const float4*>(p));
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
  } else {
    static_assert(kVec == 1, "kVec is 1 or 4");
    v[0] = __ldcg(p);
  }
}

// Merges the splits' partial states of query heads h0 .. h0 + nh - 1 of one sequence into their
// output rows (out_rows = out + (tok * Hq + h0) * D); split k of head h0 + g is partial
// p0 + g * splits + k. The math of the single-block merge: weights exp2(m_k - M), l = sum w_k l_k,
// out = sum w_k acc_k / l. A thread owns kVec consecutive dims of one head (a column) and, where
// there are fewer columns than threads, every groups-th split; it loads kMergeBatch splits' partials
// before using any (a running max rescales between batches), and the groups' states meet in
// shared memory (kMergeThreads * (kVec + 2) floats of smem). Needs all kMergeThreads threads.
template <typename T, int kVec>
__device__ void merge_splits(const float* part_acc, const float* part_ml, T* out_rows, int64_t p0, int nh, int D,
                             int splits, float* smem) {
  const int per_head = D / kVec;
  const int cols = nh * per_head;
  const int tid = threadIdx.x;
  const int groups = cols >= kMergeThreads ? 1 : min(kMergeThreads / cols, splits);
  const int grp = groups == 1 ? 0 : tid / cols;
  const int stride = groups == 1 ? kMergeThreads : cols;  // with groups > 1 each thread has one column
  float* m_s = smem;
  float* l_s = m_s + kMergeThreads;
  float* o_s = l_s + kMergeThreads;
  for (int col = groups == 1 ? tid : tid % cols; col < cols && grp < groups; col += stride) {
    const int g = col / per_head, d0 = (col % per_head) * kVec;
    const int64_t p = p0 + static_cast<int64_t>(g) * splits;
    const float* ml = part_ml + 2 * p;
    const float* acc = part_acc + p * D + d0;
    float m = -INFINITY, l = 0.0f, o[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) o[v] = 0.0f;
    for (int k0 = grp; k0 < splits; k0 += kMergeBatch * groups) {
      float mk[kMergeBatch], lk[kMergeBatch], ak[kMergeBatch][kVec];
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) {
        const int k = k0 + j * groups;
        if (k < splits) {
          mk[j] = __ldcg(ml + 2 * k);
          lk[j] = __ldcg(ml + 2 * k + 1);
          load_cg<kVec>(acc + static_cast<int64_t>(k) * D, ak[j]);
        } else {
          mk[j] = -INFINITY;
          lk[j] = 0.0f;
#pragma unroll
          for (int v = 0; v < kVec; ++v) ak[j][v] = 0.0f;
        }
      }
      float mb = m;
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) mb = fmaxf(mb, mk[j]);
      if (mb == -INFINITY) continue;  // only empty splits so far
      const float f = exp2f(m - mb);  // 0 while m is -inf
      l *= f;
#pragma unroll
      for (int v = 0; v < kVec; ++v) o[v] *= f;
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) {
        const float w = exp2f(mk[j] - mb);  // 0 for an empty split
        l = fmaf(w, lk[j], l);
#pragma unroll
        for (int v = 0; v < kVec; ++v) o[v] = fmaf(w, ak[j][v], o[v]);
      }
      m = mb;
    }
    if (groups == 1) {
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int v = 0; v < kVec; ++v) out_rows[g * D + d0 + v] = from_f32<T>(o[v] * inv);
    } else {
      m_s[tid] = m;
      l_s[tid] = l;
#pragma unroll
      for (int v = 0; v < kVec; ++v) o_s[tid * kVec + v] = o[v];
    }
  }
  if (groups == 1) return;  // uniform over the block
  __syncthreads();
  if (tid < cols) {
    const int col = tid, g = col / per_head, d0 = (col % per_head) * kVec;
    float M = -INFINITY;
    for (int r = 0; r < groups; ++r) M = fmaxf(M, m_s[r * cols + col]);
    float l = 0.0f, o[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) o[v] = 0.0f;
    if (M != -INFINITY) {
      for (int r = 0; r < groups; ++r) {
        const int t = r * cols + col;
        const float w = exp2f(m_s[t] - M);
        l = fmaf(w, l_s[t], l);
#pragma unroll
        for (int v = 0; v < kVec; ++v) o[v] = fmaf(w, o_s[t * kVec + v], o[v]);
      }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int v = 0; v < kVec; ++v) out_rows[g * D + d0 + v] = from_f32<T>(o[v] * inv);
  }
}

// ---- fast path: tensor cores, per-warp cp.async pipeline ----

constexpr int kWarps = 4;
constexpr int kTileKeys = 16;  // keys per warp tile: the k of the p.v mma
constexpr int kBlockHeads = 8;  // query heads per block: the n of the p.v mma
static_assert(kWarps * 32 == kMergeThreads, "merge_splits runs on the whole block");

template <int D>
struct TileShape {
  static_assert(D % 16 == 0 && D <= 256, "head_dim a multiple of 16, at most 256");
  static constexpr int kRowBytes = 2 * D + 16;  // padding: the 8 rows one ldmatrix reads hit distinct banks
  // Three stages keep two blocks (8 warps) per SM at D <= 128; a fourth helped one long sequence
  // by ~2% and cost batches of 64-256 sequences 15-20% (H200).
  static constexpr int kStages = D <= 128 ? 3 : 2;
  static constexpr int kTileBytes = 2 * kTileKeys * kRowBytes;  // K rows, then V rows
  static constexpr int kWarpBytes = kStages * kTileBytes;
  static constexpr int kMergeStride = D + 4;  // floats per head row of the merge area (bank spread)
  static constexpr int kMergeBytes = 4 * kWarps * kBlockHeads * (kMergeStride + 2);
  static constexpr int kSmemBytes = kWarps * kWarpBytes > kMergeBytes ? kWarps * kWarpBytes : kMergeBytes;
};

// Fragment layouts (m16n8k16; lane = 4 * gid + tig):
//  q.k:  S[head][key] = Q[16 heads][16 dims] x K^T[16 dims][8 keys]. Only heads 0..7 are real, so
//        the A registers of rows 8..15 are zero; each lane ends with the scores of head gid for
//        keys 2 tig, 2 tig + 1 of each 8-key half of the tile.
//  p.v:  O^T[dim][head] = V^T[16 dims][16 keys] x P^T[16 keys][8 heads]. Those scores (as 16-bit)
//        are exactly the lane's B registers, so p never leaves the registers; the accumulator holds
//        dims gid, gid + 8 of each 16-dim step for heads 2 tig, 2 tig + 1.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    decode_mma_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                      T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                      uint32_t* __restrict__ arrivals, const int32_t* __restrict__ query_start,
                      const int32_t* __restrict__ seq_lens, const int32_t* __restrict__ block_tables, int Hq,
                      int Hk, int max_blocks_per_seq, int block_size, float scale_log2, int splits) {
  using Shape = TileShape<D>;
  constexpr int kSteps = D / 16;   // 16-dim mma steps
  constexpr int kChunks = D / 8;   // 16-byte chunks per K or V row
  constexpr int kStages = Shape::kStages;
  extern __shared__ __align__(16) unsigned char smem[];

  const int s = blockIdx.x, split = blockIdx.z;
  // The three loads are independent, so that their latencies overlap.
  const int tok = query_start[s], tok_end = query_start[s + 1], L = seq_lens[s];
  if (tok_end - tok != 1) return;  // decode sequences only (uniform over the block)
  // Let the next kernel's blocks (the output projection) be scheduled now; they wait for this
  // grid's end, split merges included, before reading what it writes.
  pdl_release();
  const int G = Hq / Hk;
  const int head_groups = (G + kBlockHeads - 1) / kBlockHeads;
  const int kvh = blockIdx.y / head_groups;
  const int g0 = (blockIdx.y % head_groups) * kBlockHeads;
  const int nh = min(kBlockHeads, G - g0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, tig = lane & 3;
  const int32_t* table = block_tables + static_cast<int64_t>(s) * max_blocks_per_seq;

  // This split's keys, in whole tiles; warp w takes tiles w, w + kWarps, ...
  int per = (L + splits - 1) / splits;
  per = (per + kTileKeys - 1) / kTileKeys * kTileKeys;
  const int k_begin = min(L, split * per);
  const int k_end = min(L, k_begin + per);
  const int tiles = (k_end - k_begin + kTileKeys - 1) / kTileKeys;
  const int my_tiles = tiles > warp ? (tiles - warp + kWarps - 1) / kWarps : 0;

  const uint32_t wbase = smem_addr(smem) + warp * Shape::kWarpBytes;
  // Slot of key (lane & 15) of my tile i, or -1 past the split's end.
  auto slot_of_tile = [&](int i) -> int {
    const int key = k_begin + (warp + i * kWarps) * kTileKeys + (lane & 15);
    return key < k_end ? table[key / block_size] * block_size + key % block_size : -1;
  };
  // Starts the copy of my tile i into its stage; `slot` is slot_of_tile(i) of this lane.
  auto issue = [&](int i, int slot) {
    const uint32_t kdst = wbase + (i % kStages) * Shape::kTileBytes;
    const uint32_t vdst = kdst + kTileKeys * Shape::kRowBytes;
#pragma unroll
    for (int j = 0; j < kChunks / 2; ++j) {
      const int idx = lane + 32 * j, r = idx / kChunks, c = idx % kChunks;
      const int row_slot = __shfl_sync(0xffffffffu, slot, r);
      const bool ok = row_slot >= 0;
      const int64_t src = (static_cast<int64_t>(ok ? row_slot : 0) * Hk + kvh) * D + 8 * c;
      cp_async16(kdst + r * Shape::kRowBytes + 16 * c, k_cache + src, ok);
      cp_async16(vdst + r * Shape::kRowBytes + 16 * c, v_cache + src, ok);
    }
  };

  // Prologue: the first kStages tiles' slots (loads in flight together), kStages - 1 tiles copying.
  int pre[kStages];
#pragma unroll
  for (int j = 0; j < kStages; ++j) pre[j] = j < my_tiles ? slot_of_tile(j) : -1;
  // Metadata and page tables come from the step upload; q and this step's K/V row come from the
  // kernel before this one, which may still be finishing (launch_chained).
  pdl_wait();
  uint32_t qa[kSteps][2];  // A registers of the q.k mma (rows 0..7), raw 16-bit pairs of q
  {
    const bool real = gid < nh;
    const T* qrow = q + (static_cast<int64_t>(tok) * Hq + kvh * G + g0 + (real ? gid : 0)) * D + 2 * tig;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      qa[kk][0] = real ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk) : 0u;
      qa[kk][1] = real ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk + 8) : 0u;
    }
  }

#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < my_tiles) issue(j, pre[j]);
    cp_async_commit();
  }
  int next_slot = pre[kStages - 1];

  float acc[kSteps][4];
#pragma unroll
  for (int mt = 0; mt < kSteps; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;  // head gid: running max (log2 domain), this lane's share of the sum
  // ldmatrix row address of this lane: matrices (keys 0-7 | 8-15) x (dims +0 | +8).
  const uint32_t lane_off = ((lane & 7) + ((lane >> 4) << 3)) * Shape::kRowBytes + ((lane >> 3) & 1) * 16;

  for (int i = 0; i < my_tiles; ++i) {
    const int ahead = i + kStages - 1;
    if (ahead < my_tiles) issue(ahead, next_slot);
    // The table read for the tile after that lands while this tile is computed.
    next_slot = ahead + 1 < my_tiles ? slot_of_tile(ahead + 1) : -1;
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();

    const uint32_t kb = wbase + (i % kStages) * Shape::kTileBytes + lane_off;
    const uint32_t vb = kb + kTileKeys * Shape::kRowBytes;
    // Even and odd dim steps accumulate apart: two mma dependency chains instead of one.
    float s0[2][4] = {}, s1[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, kb + 32 * kk);
      const uint32_t a[4] = {qa[kk][0], 0u, qa[kk][1], 0u};
      mma16816<T>(s0[kk & 1], a, b[0], b[1]);
      mma16816<T>(s1[kk & 1], a, b[2], b[3]);
    }
    const int key = k_begin + (warp + i * kWarps) * kTileKeys + 2 * tig;
    float x[4] = {s0[0][0] + s0[1][0], s0[0][1] + s0[1][1], s1[0][0] + s1[1][0], s1[0][1] + s1[1][1]};
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = key + (j & 1) + 8 * (j >> 1) < k_end ? x[j] * scale_log2 : -INFINITY;
    float mt = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float m_new = fmaxf(m_run, mt);
    const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m_run - m_ref);
    float p[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) p[j] = exp2f(x[j] - m_ref);
    l_run = l_run * alpha + ((p[0] + p[1]) + (p[2] + p[3]));
    m_run = m_new;
    // The accumulator's columns are heads 2 tig and 2 tig + 1, whose factors live in lanes 8 tig, 8 tig + 4.
    const float a_lo = __shfl_sync(0xffffffffu, alpha, 8 * tig);
    const float a_hi = __shfl_sync(0xffffffffu, alpha, 8 * tig + 4);
    const uint32_t pb0 = pack2<T>(p[0], p[1]), pb1 = pack2<T>(p[2], p[3]);
#pragma unroll
    for (int mt2 = 0; mt2 < kSteps; ++mt2) {
      acc[mt2][0] *= a_lo;
      acc[mt2][1] *= a_hi;
      acc[mt2][2] *= a_lo;
      acc[mt2][3] *= a_hi;
      uint32_t a[4];
      ldmatrix_x4_trans(a, vb + 32 * mt2);
      mma16816<T>(acc[mt2], a, pb0, pb1);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);

  // Merge the warps' states in shared memory (the pipeline area is free once every warp is here).
  __syncthreads();
  constexpr int kStride = Shape::kMergeStride;
  float* m_s = reinterpret_cast<float*>(smem);
  float* l_s = m_s + kWarps * kBlockHeads;
  float* a_s = l_s + kWarps * kBlockHeads;
  if (tig == 0) {
    m_s[warp * kBlockHeads + gid] = m_run;
    l_s[warp * kBlockHeads + gid] = l_run;
  }
  {
    float* w = a_s + warp * kBlockHeads * kStride;
#pragma unroll
    for (int mt2 = 0; mt2 < kSteps; ++mt2) {
      w[(2 * tig) * kStride + 16 * mt2 + gid] = acc[mt2][0];
      w[(2 * tig + 1) * kStride + 16 * mt2 + gid] = acc[mt2][1];
      w[(2 * tig) * kStride + 16 * mt2 + gid + 8] = acc[mt2][2];
      w[(2 * tig + 1) * kStride + 16 * mt2 + gid + 8] = acc[mt2][3];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, m_s[w * kBlockHeads + g]);
    float lsum = 0.0f, o = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = m_s[w * kBlockHeads + g];
        if (mw == -INFINITY) continue;
        const float f = exp2f(mw - M);
        lsum += l_s[w * kBlockHeads + g] * f;
        o += a_s[(w * kBlockHeads + g) * kStride + d] * f;
      }
    }
    store_state(out, part_acc, part_ml, s, tok, Hq, kvh * G + g0 + g, D, d, splits, split, o, lsum, M);
  }
  if (splits == 1) return;
  // arrive_last's barrier also frees the merge area above for merge_splits.
  if (!arrive_last(arrivals + static_cast<int64_t>(s) * gridDim.y + blockIdx.y, splits)) return;
  const int h0 = kvh * G + g0;
  merge_splits<T, 4>(part_acc, part_ml, out + (static_cast<int64_t>(tok) * Hq + h0) * D,
                     (static_cast<int64_t>(s) * Hq + h0) * splits, nh, D, splits, reinterpret_cast<float*>(smem));
}

template <typename T, int D>
cudaError_t run_mma(const DecodeAttentionArgs& a, cudaStream_t stream) {
  constexpr int smem = TileShape<D>::kSmemBytes;
  cudaError_t err =
      cudaFuncSetAttribute(decode_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int G = a.num_heads / a.num_kv_heads;
  const int head_groups = (G + kBlockHeads - 1) / kBlockHeads;
  dim3 grid(a.num_seqs, a.num_kv_heads * head_groups, a.num_splits);
  return launch_chained<decode_mma_kernel<T, D>>(
      grid, dim3(kWarps * 32), smem, stream, static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache),
      static_cast<const T*>(a.v_cache), static_cast<T*>(a.out), a.part_acc, a.part_ml, a.arrivals, a.query_start,
      a.seq_lens, a.block_tables, a.num_heads, a.num_kv_heads, a.max_blocks_per_seq, a.block_size,
      a.scale * 1.4426950408889634f, a.num_splits);
}

// ---- general path: F32 and head sizes that are not a multiple of 16 (CUDA cores) ----

using attn::kRowsPerWarp;
constexpr int kGenericWarps = 4;
static_assert(kGenericWarps * 32 == kMergeThreads, "merge_splits runs on the whole block");

template <typename T>
size_t decode_smem_bytes(int D, int tile_keys) {
  return sizeof(float) * kRowsPerWarp * D + sizeof(int64_t) * tile_keys +
         sizeof(T) * static_cast<size_t>(tile_keys) * (attn::k_stride<T>(D) + D);
}

template <typename T>
__global__ void __launch_bounds__(kGenericWarps * 32)
    decode_generic_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                  T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                  uint32_t* __restrict__ arrivals, const int32_t* __restrict__ query_start,
                  const int32_t* __restrict__ seq_lens, const int32_t* __restrict__ block_tables, int Hq, int Hk,
                  int D, int max_blocks_per_seq, int block_size, float scale_log2, int splits, int tile_keys) {
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
  const int sub = tile_keys / kGenericWarps;

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
  float* l_s = m_s + kGenericWarps * kRowsPerWarp;
  float* a_s = l_s + kGenericWarps * kRowsPerWarp;
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
    for (int w = 0; w < kGenericWarps; ++w) M = fmaxf(M, m_s[w * kRowsPerWarp + r]);
    float lsum = 0.0f, acc = 0.0f;
    if (M != -INFINITY) {
      for (int w = 0; w < kGenericWarps; ++w) {
        float mw = m_s[w * kRowsPerWarp + r];
        if (mw == -INFINITY) continue;
        float f = exp2f(mw - M);
        lsum += l_s[w * kRowsPerWarp + r] * f;
        acc += a_s[(w * kRowsPerWarp + r) * D + d] * f;
      }
    }
    store_state(out, part_acc, part_ml, s, tok, Hq, kvh * G + g, D, d, splits, split, acc, lsum, M);
  }
  if (splits == 1) return;
  if (!arrive_last(arrivals + static_cast<int64_t>(s) * gridDim.y + blockIdx.y, splits)) return;
  const int h0 = kvh * G + grp * kRowsPerWarp, nh = min(kRowsPerWarp, G - grp * kRowsPerWarp);
  T* out_rows = out + (static_cast<int64_t>(tok) * Hq + h0) * D;
  const int64_t p0 = (static_cast<int64_t>(s) * Hq + h0) * splits;
  float* merge_smem = reinterpret_cast<float*>(smem);
  if (D % 4 == 0)
    merge_splits<T, 4>(part_acc, part_ml, out_rows, p0, nh, D, splits, merge_smem);
  else
    merge_splits<T, 1>(part_acc, part_ml, out_rows, p0, nh, D, splits, merge_smem);
}

template <typename T>
cudaError_t run_generic(const DecodeAttentionArgs& a, cudaStream_t stream) {
  int tile_keys = 128;
  if (decode_smem_bytes<T>(a.head_dim, tile_keys) > 200 * 1024) tile_keys = 64;
  // The split merge reuses the tile area, which tiny head sizes leave smaller than it needs.
  const size_t smem = std::max(decode_smem_bytes<T>(a.head_dim, tile_keys) + 64, sizeof(float) * kMergeThreads * 6);
  cudaError_t err = cudaFuncSetAttribute(decode_generic_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int G = a.num_heads / a.num_kv_heads;
  const int ngroups = (G + kRowsPerWarp - 1) / kRowsPerWarp;
  dim3 grid(a.num_seqs, a.num_kv_heads * ngroups, a.num_splits);
  decode_generic_kernel<T><<<grid, kGenericWarps * 32, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache),
      static_cast<T*>(a.out), a.part_acc, a.part_ml, a.arrivals, a.query_start, a.seq_lens, a.block_tables, a.num_heads,
      a.num_kv_heads, a.head_dim, a.max_blocks_per_seq, a.block_size, a.scale * 1.4426950408889634f, a.num_splits,
      tile_keys);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_decode(const DecodeAttentionArgs& a, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;
  bool done = false;
  if constexpr (!std::is_same_v<T, float>) {
    done = true;
    switch (a.head_dim) {
      case 64: err = run_mma<T, 64>(a, stream); break;
      case 80: err = run_mma<T, 80>(a, stream); break;
      case 96: err = run_mma<T, 96>(a, stream); break;
      case 128: err = run_mma<T, 128>(a, stream); break;
      case 256: err = run_mma<T, 256>(a, stream); break;
      default: done = false;
    }
  }
  if (!done) err = run_generic<T>(a, stream);
  return err;
}

}  // namespace

cudaError_t launch_paged_attention_decode(const DecodeAttentionArgs& args, DType dtype, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  if (args.head_dim <= 0 || args.head_dim > attn::kMaxHeadDim || args.num_kv_heads <= 0 ||
      args.num_heads % args.num_kv_heads != 0 || args.num_splits < 1 || args.num_splits > 4096 ||
      (args.num_splits > 1 &&
       (!args.part_acc || !args.part_ml || !args.arrivals || reinterpret_cast<uintptr_t>(args.part_acc) % 16 != 0)))
    return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, return run_decode<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace ember::cuda
