// Causal prefill attention on the tensor cores (mma.sync m16n8k16, F16/BF16, head_dim 64/128): the
// CUDA-core kernel in prefill_attention.cu runs at a few percent of the chip, which made long
// prompts attention-bound. One block = kPrefillMmaRows (query, head-in-group) rows of one kv head.
// Its warps form one or two groups; each group covers all the rows, 16 or 32 per warp, and takes
// every other K/V tile, gathered page by page from the paged cache with cp.async into its own
// stages and folded in with an fp32 online softmax; two groups' partial results are merged at the end.
// Several block shapes are compiled; the launcher picks one by the number of blocks. A short chunk
// over a long past gives few blocks that each walk many keys: the keys are then split over several
// blocks, which leave unnormalised partial states for a small merge kernel.
#include "kernels/common.cuh"
#include "kernels/launchers.h"
#include "kernels/mma_primitives.cuh"

#include <algorithm>

namespace ember::cuda {
namespace {

constexpr int kRows = kPrefillMmaRows;
// Slack of the running max, in log2 units: probabilities reach 2^8 at most, which F16 holds.
constexpr float kLazyMax = 8.0f;

// One kernel shape. kMT: 16-row mma blocks per warp. One keeps Q in registers; two halve the
// shared-memory reads of K and V per flop (each fragment feeds two mmas) but need Q re-read from
// shared memory. kGroups: warp groups splitting the keys of a block, so that few blocks (a short
// chunk over a long past) still give each SM eight warps. kKeys: keys per K/V tile. kStages: tiles
// in flight per group.
template <int kMT_, int kGroups_, int kKeys_, int kStages_>
struct MmaShape {
  static constexpr int kMT = kMT_, kGroups = kGroups_, kKeys = kKeys_, kStages = kStages_;
  static constexpr int kWarpRows = 16 * kMT;
  static constexpr int kGroupWarps = kRows / kWarpRows;
  static constexpr int kGroupThreads = 32 * kGroupWarps;
  static constexpr int kThreads = kGroupThreads * kGroups;
  static constexpr bool kQInRegs = kMT == 1;
  // Blocks per SM the registers must allow: 255 per thread caps at 256 threads per SM.
  template <int D>
  static constexpr int min_blocks() {
    return kThreads <= 128 || (kThreads == 256 && kMT == 1 && kKeys <= 64 && D <= 64) ? 2 : 1;
  }
  static_assert(kRows % kWarpRows == 0 && kKeys % 16 == 0, "whole 16-row mma blocks per warp; 16-key mma steps");
  static_assert(kGroups == 1 || kGroups == 2, "the merge handles two groups");
  static_assert(kStages >= 2, "at least one tile loads while another is used");
  static_assert(kMT == 1 || kMT == 2, "fragments of at most two 16-row blocks fit the registers");
  static_assert(kThreads <= 256, "more threads leave too few registers for o, the scores and Q");
  template <int D>
  static constexpr size_t smem_bytes(size_t elem) {
    const size_t q = elem * kRows * D;
    const size_t kv = elem * kGroups * kStages * 2 * kKeys * D;
    // Group 1's o and (m, l) for the merge, in the K/V stages.
    const size_t merge = kGroups > 1 ? sizeof(float) * (kRows * D + 4 * kMT * kGroupThreads) : 0;
    return q + (kv > merge ? kv : merge);
  }
};


// Barrier over one warp group (named barrier 1 + group); the whole block when there is one group.
template <int kGroups, int kGroupThreads>
__device__ __forceinline__ void group_sync(int group) {
  if constexpr (kGroups == 1) {
    __syncthreads();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(group + 1), "n"(kGroupThreads) : "memory");
  }
}

__device__ __forceinline__ float fast_exp2(float x) {  // MUFU.EX2; exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}



// Max / sum of this lane's part of row half h (0: c0 c1, 1: c2 c3) of an accumulator row of N
// 16x8 blocks, as a tree: a chain of dependent adds would sit on the softmax's critical path.
template <int N>
__device__ __forceinline__ float row_max(const float (&x)[N][4], int h) {
  float v[N];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = fmaxf(x[i][2 * h], x[i][2 * h + 1]);
#pragma unroll
  for (int w = 1; w < N; w *= 2)
#pragma unroll
    for (int i = 0; i + w < N; i += 2 * w) v[i] = fmaxf(v[i], v[i + w]);
  return v[0];
}
template <int N>
__device__ __forceinline__ float row_sum(const float (&x)[N][4], int h) {
  float v[N];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = x[i][2 * h] + x[i][2 * h + 1];
#pragma unroll
  for (int w = 1; w < N; w *= 2)
#pragma unroll
    for (int i = 0; i + w < N; i += 2 * w) v[i] += v[i + w];
  return v[0];
}

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows][D] shared tile. The chunk index
// is XORed with the row so that the 8 rows one ldmatrix reads fall in different banks.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Warp 0 maps tile number `tile` to (sequence, first row): sequence s owns ceil(qlen_s * G / kRows)
// consecutive tile numbers. Scans 32 sequences per step.
__device__ void locate_tile(const int32_t* __restrict__ query_start, int num_seqs, int G, int tile, int* seq,
                            int* row0) {
  const int lane = threadIdx.x & 31;
  int base = 0;
  for (int s0 = 0; s0 < num_seqs; s0 += 32) {
    const int s = s0 + lane;
    int n = 0;
    if (s < num_seqs) n = ((query_start[s + 1] - query_start[s]) * G + kRows - 1) / kRows;
    int inc = n;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int v = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += v;
    }
    const int total = __shfl_sync(0xffffffffu, inc, 31);
    if (tile < base + total) {
      const unsigned hit = __ballot_sync(0xffffffffu, base + inc > tile);
      const int src = __ffs(hit) - 1;
      const int before = __shfl_sync(0xffffffffu, inc - n, src);
      if (lane == 0) {
        *seq = s0 + src;
        *row0 = (tile - base - before) * kRows;
      }
      return;
    }
    base += total;
  }
}

template <typename T, int D, class S>
__global__ void __launch_bounds__(S::kThreads, S::template min_blocks<D>())
    prefill_mma_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                       T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
                       const int32_t* __restrict__ query_start, const int32_t* __restrict__ seq_lens,
                       const int32_t* __restrict__ block_tables, int num_seqs, int num_tiles, int num_splits, int Hq,
                       int Hk, int max_blocks_per_seq, int block_size, float scale_log2) {
  constexpr int kMT = S::kMT, kKeys = S::kKeys, kStages = S::kStages, kGroups = S::kGroups;
  constexpr int kGroupThreads = S::kGroupThreads;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kStageElems = 2 * kKeys * D;  // K then V
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);  // [kRows][D]
  T* kv_s = q_s + kRows * D;            // per group: [kStages][K, V][kKeys][D]
  __shared__ int tile_seq, tile_row0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = warp / S::kGroupWarps, gwarp = warp % S::kGroupWarps, gtid = tid % kGroupThreads;
  const int G = Hq / Hk;
  // The merge kernel may be scheduled once every block has started: it waits for the partials.
  if (num_splits > 1) pdl_release();
  const int kvh = blockIdx.x % Hk;
  const int split = static_cast<int>(blockIdx.x / Hk) % num_splits;
  // Later tiles of a sequence see more keys: hand them out first so the short ones fill the tail.
  const int tile = num_tiles - 1 - static_cast<int>(blockIdx.x / Hk / num_splits);
  if (warp == 0) locate_tile(query_start, num_seqs, G, tile, &tile_seq, &tile_row0);
  __syncthreads();
  const int s = tile_seq, row0 = tile_row0;
  const int q0 = query_start[s];
  const int qlen = query_start[s + 1] - q0;
  const int past = seq_lens[s] - qlen;
  const int nrows = qlen * G;
  const int last_flat = min(nrows, row0 + kRows) - 1;
  const int k_end = past + last_flat / G + 1;  // keys [0, k_end) are visible to some row of the tile
  const int n_tiles = (k_end + kKeys - 1) / kKeys;
  // This split's key tiles [t_begin, t_end): a near-equal share, possibly none. Rows that see none
  // of its keys keep m = -inf, l = 0, o = 0, which the merge weighs by zero.
  const int t_begin = static_cast<int>(static_cast<int64_t>(split) * n_tiles / num_splits);
  const int t_end = static_cast<int>(static_cast<int64_t>(split + 1) * n_tiles / num_splits);
  // This group's: t_begin + group, t_begin + group + kGroups, ...
  const int my_tiles = (t_end - t_begin - group + kGroups - 1) / kGroups;
  const int32_t* table = block_tables + static_cast<int64_t>(s) * max_blocks_per_seq;
  T* my_kv = kv_s + group * kStages * kStageElems;

  // Row r of the tile is flat row row0 + r = query i * G + head g: query head kvh * G + g of token q0 + i.
  for (int idx = tid; idx < kRows * kChunks; idx += S::kThreads) {
    const int r = idx / kChunks, c = idx % kChunks, flat = row0 + r;
    const bool ok = flat < nrows;
    const T* src = ok ? q + ((static_cast<int64_t>(q0 + flat / G) * Hq + kvh * G + flat % G) * D + c * 8) : q;
    cp_async16(smem_addr(q_s + swz<D>(r, c)), src, ok);
  }
  cp_async_commit();
  // The group's j-th tile into stage j % kStages. kRowThreads threads share each key row, so one
  // page-table lookup per thread and tile; chunk i * kRowThreads + part of the row is this thread's
  // i-th copy, the threads of a row covering whole 32-byte sectors together.
  constexpr int kRowThreads = kGroupThreads / kKeys;
  constexpr int kRowCopies = kChunks / kRowThreads;
  static_assert(kGroupThreads % kKeys == 0 && kChunks % kRowThreads == 0 && kRowCopies >= 1, "whole rows per thread");
  const int jr = gtid / kRowThreads, part = gtid % kRowThreads;
  const T* k_src = k_cache + kvh * D + part * 8;
  const T* v_src = v_cache + kvh * D + part * 8;
  const int64_t slot_stride = static_cast<int64_t>(Hk) * D;
  auto load_kv = [&](int j) {
    const int t = (t_begin + j * kGroups + group) * kKeys + jr;
    T* ks = my_kv + (j % kStages) * kStageElems + jr * D;
    T* vs = ks + kKeys * D;
    const bool ok = t < k_end;  // keys past the end are zero-filled (and masked)
    int64_t off = 0;
    if (ok) {
      const int page = t / block_size;
      off = (static_cast<int64_t>(table[page]) * block_size + (t - page * block_size)) * slot_stride;
    }
#pragma unroll
    for (int i = 0; i < kRowCopies; ++i) {
      const int sw = ((i * kRowThreads + part) ^ (jr & 7)) << 3;  // swz<D>(jr, chunk) less the row
      cp_async16(smem_addr(ks + sw), k_src + off + i * kRowThreads * 8, ok);
      cp_async16(smem_addr(vs + sw), v_src + off + i * kRowThreads * 8, ok);
    }
  };
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < my_tiles) load_kv(j);
    cp_async_commit();  // possibly empty: keeps the group count uniform for the waits
  }

  // In mma block mt this lane holds rows ra + 16 mt and ra + 16 mt + 8 of the tile; lim = last key
  // position the row sees (-1: a padding row past the chunk).
  const int ra = gwarp * S::kWarpRows + (lane >> 2);
  int lim[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int flat = row0 + ra + 16 * mt + 8 * h;
      lim[mt][h] = flat < nrows ? past + flat / G : -1;
    }
  const int wfirst = row0 + gwarp * S::kWarpRows;
  const int wlast = min(wfirst + S::kWarpRows - 1, nrows - 1);
  const int warp_max_lim = wlast >= wfirst ? past + wlast / G : -1;
  const int warp_min_lim = wfirst + S::kWarpRows - 1 < nrows ? past + wfirst / G : -1;

  uint32_t qf[S::kQInRegs ? D / 16 : 1][4];
  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];  // m: running row max of score * scale_log2
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  // A fragment of Q for mma block mt, k-step kk (ldmatrix x4: rows 0-7 / 8-15, k 0-7 / 8-15).
  auto load_q = [&](uint32_t (&a)[4], int mt, int kk) {
    const int row = gwarp * S::kWarpRows + mt * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
    ldmatrix_x4(a, smem_addr(q_s + swz<D>(row, 2 * kk + (lane >> 4))));
  };

  cp_async_wait<kStages - 2>();
  __syncthreads();  // Q (copied by every thread) and each group's first tile have landed
  if constexpr (S::kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_q(qf[kk], 0, kk);
  }

  for (int j = 0; j < my_tiles; ++j) {
    if (j > 0) {
      cp_async_wait<kStages - 2>();
      // Tile j has landed for the whole group, which is also done with tile j - 1's stage.
      group_sync<kGroups, kGroupThreads>(group);
    }
    if (j + kStages - 1 < my_tiles) load_kv(j + kStages - 1);
    cp_async_commit();
    const int t0 = (t_begin + j * kGroups + group) * kKeys;
    if (t0 > warp_max_lim) continue;  // the whole tile is above this warp's diagonal
    const T* ks = my_kv + (j % kStages) * kStageElems;
    const T* vs = ks + kKeys * D;
    float sc[kMT][kKeys / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nb = 0; nb < kKeys / 8; ++nb) sc[mt][nb][0] = sc[mt][nb][1] = sc[mt][nb][2] = sc[mt][nb][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (S::kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) qa[mt][i] = qf[kk][i];
        } else {
          load_q(qa[mt], mt, kk);
        }
      }
#pragma unroll
      for (int nb = 0; nb < kKeys / 8; nb += 2) {
        const int key = nb * 8 + ((lane >> 4) << 3) + (lane & 7);
        uint32_t b[4];
        ldmatrix_x4(b, smem_addr(ks + swz<D>(key, 2 * kk + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(sc[mt][nb], qa[mt], b[0], b[1]);
          mma16816<T>(sc[mt][nb + 1], qa[mt], b[2], b[3]);
        }
      }
    }
    if (t0 + kKeys - 1 > warp_min_lim) {  // the diagonal (or the end of a short tile) crosses this tile
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (t0 + nb * 8 + (lane & 3) * 2 + (e & 1) > lim[mt][e >> 1]) sc[mt][nb][e] = -INFINITY;
    }
    uint32_t pf[kMT][kKeys / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      // The scale is positive, so the max of the raw scores gives the max of the scaled ones.
      float mx[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) mx[h] = row_max<kKeys / 8>(sc[mt], h);
      float base[2], alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        // The max moves only when it grows by more than kLazyMax: p = exp2(s - m) then stays
        // below 2^kLazyMax, and most tiles skip rescaling o.
        const float mnew = mx[h] * scale_log2 > m[mt][h] + kLazyMax ? mx[h] * scale_log2 : m[mt][h];
        base[h] = mnew == -INFINITY ? 0.0f : mnew;  // a row that has seen nothing stays at zero
        alpha[h] = fast_exp2(m[mt][h] - base[h]);
        m[mt][h] = mnew;
      }
#pragma unroll
      for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[mt][nb][e] = fast_exp2(fmaf(sc[mt][nb][e], scale_log2, -base[e >> 1]));
      const float rs[2] = {row_sum<kKeys / 8>(sc[mt], 0), row_sum<kKeys / 8>(sc[mt], 1)};
#pragma unroll
      for (int nb = 0; nb < kKeys / 8; ++nb) {
        // The accumulator layout of two adjacent 16x8 blocks is the A-operand layout of one 16x16 block.
        pf[mt][nb >> 1][(nb & 1) * 2 + 0] = pack2<T>(sc[mt][nb][0], sc[mt][nb][1]);
        pf[mt][nb >> 1][(nb & 1) * 2 + 1] = pack2<T>(sc[mt][nb][2], sc[mt][nb][3]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) l[mt][h] = l[mt][h] * alpha[h] + rs[h];
      if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          o[mt][nd][0] *= alpha[0];
          o[mt][nd][1] *= alpha[0];
          o[mt][nd][2] *= alpha[1];
          o[mt][nd][3] *= alpha[1];
        }
      }
    }
#pragma unroll
    for (int jk = 0; jk < kKeys / 16; ++jk) {
      const int key = jk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_addr(vs + swz<D>(key, nd + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(o[mt][nd], pf[mt][jk], b[0], b[1]);
          mma16816<T>(o[mt][nd + 1], pf[mt][jk], b[2], b[3]);
        }
      }
    }
  }

  if constexpr (kGroups > 1) {
    // Group 1 hands its (m, l, o) to the thread of group 0 that holds the same rows and columns,
    // through the K/V stages, which nobody reads any more.
    cp_async_wait<0>();
    __syncthreads();
    float4* xo = reinterpret_cast<float4*>(kv_s);  // [kMT][D / 8][kGroupThreads]
    float2* xml = reinterpret_cast<float2*>(xo + kMT * (D / 8) * kGroupThreads);  // [kMT][2][kGroupThreads]
    if (group == 1) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd)
          xo[(mt * (D / 8) + nd) * kGroupThreads + gtid] = make_float4(o[mt][nd][0], o[mt][nd][1], o[mt][nd][2], o[mt][nd][3]);
#pragma unroll
        for (int h = 0; h < 2; ++h) xml[(mt * 2 + h) * kGroupThreads + gtid] = make_float2(m[mt][h], l[mt][h]);
      }
    }
    __syncthreads();
    if (group == 1) return;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      float a0[2], a1[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 ml = xml[(mt * 2 + h) * kGroupThreads + gtid];
        const float mnew = fmaxf(m[mt][h], ml.x);
        const float base = mnew == -INFINITY ? 0.0f : mnew;
        a0[h] = fast_exp2(m[mt][h] - base);
        a1[h] = fast_exp2(ml.x - base);
        l[mt][h] = l[mt][h] * a0[h] + ml.y * a1[h];
        m[mt][h] = mnew;  // o and l are now relative to it (a split's partial state)
      }
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        const float4 x = xo[(mt * (D / 8) + nd) * kGroupThreads + gtid];
        o[mt][nd][0] = o[mt][nd][0] * a0[0] + x.x * a1[0];
        o[mt][nd][1] = o[mt][nd][1] * a0[0] + x.y * a1[0];
        o[mt][nd][2] = o[mt][nd][2] * a0[1] + x.z * a1[1];
        o[mt][nd][3] = o[mt][nd][3] * a0[1] + x.w * a1[1];
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int flat = row0 + ra + 16 * mt + 8 * h;
      if (flat >= nrows) continue;
      const int64_t row = static_cast<int64_t>(q0 + flat / G) * Hq + kvh * G + flat % G;
      if (num_splits > 1) {  // the unnormalised state; m is the same in the four lanes of the row
        const int64_t p = row * num_splits + split;
        float* prow = part_acc + p * D + (lane & 3) * 2;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd)
          *reinterpret_cast<float2*>(prow + nd * 8) = make_float2(o[mt][nd][2 * h], o[mt][nd][2 * h + 1]);
        if ((lane & 3) == 0) *reinterpret_cast<float2*>(part_ml + p * 2) = make_float2(m[mt][h], sum);
        continue;
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      T* orow = out + row * D + (lane & 3) * 2;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        *reinterpret_cast<uint32_t*>(orow + nd * 8) =
            pack2<T>(o[mt][nd][2 * h] * inv, o[mt][nd][2 * h + 1] * inv);
    }
}

// The splits of one row weighed by exp2(m_k - max m) and summed: out = sum w_k o_k / sum w_k l_k.
// Block (tile, kv head, y) merges kMergeRows rows of the tile, D / 4 threads a row, a float4 each.
constexpr int kMergeThreads = 256;

template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads)
    prefill_merge_kernel(const float* __restrict__ part_acc, const float* __restrict__ part_ml, T* __restrict__ out,
                         const int32_t* __restrict__ query_start, int num_seqs, int num_tiles, int num_splits, int Hq,
                         int Hk) {
  constexpr int kRowThreads = D / 4;
  constexpr int kMergeRows = kMergeThreads / kRowThreads;
  static_assert(kRows % kMergeRows == 0, "whole row slices per tile");
  __shared__ int tile_seq, tile_row0;
  const int kvh = blockIdx.x % Hk;
  const int tile = blockIdx.x / Hk;
  // The metadata comes from the host, not from the attention kernel: read it before the wait.
  if (threadIdx.x < 32) locate_tile(query_start, num_seqs, Hq / Hk, tile, &tile_seq, &tile_row0);
  __syncthreads();
  const int s = tile_seq, G = Hq / Hk;
  const int q0 = query_start[s];
  const int nrows = (query_start[s + 1] - q0) * G;
  const int flat = tile_row0 + blockIdx.y * kMergeRows + threadIdx.x / kRowThreads;
  const int c = threadIdx.x % kRowThreads;
  pdl_wait();  // the partials are written by the attention kernel before this one
  if (flat >= nrows) return;
  const int64_t row = static_cast<int64_t>(q0 + flat / G) * Hq + kvh * G + flat % G;
  const float2* ml = reinterpret_cast<const float2*>(part_ml) + row * num_splits;
  const float4* acc = reinterpret_cast<const float4*>(part_acc + row * num_splits * D) + c;
  float mx = -INFINITY;
  for (int k = 0; k < num_splits; ++k) mx = fmaxf(mx, ml[k].x);
  float sum = 0.0f;
  float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int k = 0; k < num_splits; ++k) {
    const float2 v = ml[k];
    const float w = v.x == -INFINITY ? 0.0f : exp2f(v.x - mx);  // a split that saw no key of the row
    const float4 x = acc[k * kRowThreads];
    sum = fmaf(w, v.y, sum);
    o.x = fmaf(w, x.x, o.x);
    o.y = fmaf(w, x.y, o.y);
    o.z = fmaf(w, x.z, o.z);
    o.w = fmaf(w, x.w, o.w);
  }
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  *reinterpret_cast<uint2*>(out + row * D + c * 4) = make_uint2(pack2<T>(o.x * inv, o.y * inv), pack2<T>(o.z * inv, o.w * inv));
}

template <typename T, int D, class S>
cudaError_t run_mma(const PrefillMmaArgs& a, cudaStream_t stream) {
  const size_t smem = S::template smem_bytes<D>(sizeof(T));
  cudaError_t err = cudaFuncSetAttribute(prefill_mma_kernel<T, D, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t blocks = static_cast<int64_t>(a.num_tiles) * a.num_kv_heads;
  if (blocks * a.num_splits > 0x7fffffff) return cudaErrorInvalidConfiguration;
  prefill_mma_kernel<T, D, S><<<static_cast<unsigned>(blocks * a.num_splits), S::kThreads, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache),
      static_cast<T*>(a.out), a.part_acc, a.part_ml, a.query_start, a.seq_lens, a.block_tables, a.num_seqs,
      a.num_tiles, a.num_splits, a.num_heads, a.num_kv_heads, a.max_blocks_per_seq, a.block_size,
      a.scale * 1.4426950408889634f);
  err = cudaGetLastError();
  if (err != cudaSuccess || a.num_splits == 1) return err;
  // A programmatic dependent of the attention kernel: its launch hides behind that kernel's tail.
  constexpr int kSlices = kRows / (kMergeThreads / (D / 4));
  return launch_chained<prefill_merge_kernel<T, D>>(
      dim3(static_cast<unsigned>(blocks), kSlices), dim3(kMergeThreads), 0, stream,
      static_cast<const float*>(a.part_acc), static_cast<const float*>(a.part_ml), static_cast<T*>(a.out),
      a.query_start, a.num_seqs, a.num_tiles, a.num_splits, a.num_heads, a.num_kv_heads);
}

// The shapes the benchmark compares; launch_prefill_attention_mma picks one by the number of blocks.
// Measured on an H200 (Llama-3-8B heads, bf16, pages of 16; TFLOP/s of causal flops, kernel time),
// prompt/chunk 2048/2048, 2048/512, 8192/8192, 8192/512:
//   mt1 g1 k64 s2   221  162  272  229   (the previous kernel, this shape with two barriers a tile,
//   mt2 g1 k32 s2   238  123  285  168    a division per 16-byte copy and o rescaled every tile:
//                                         168 126 207 172)
//   mt1 g1 k64 s3   217  160  266  226
//   mt2 g2 k32 s3   206  149  260  215
// 4-warp blocks need two per SM to hide latency (2048/512 and 8192/512 give 128 blocks); with 64-key
// tiles they spill (mt2 g1 k64 s2: 219 110 262 149); 16-warp blocks (two groups of 16-row warps,
// 128 registers) and 128-key tiles were slower everywhere.
using Shape0 = MmaShape<1, 1, 64, 2>;
using Shape1 = MmaShape<2, 1, 32, 2>;
using Shape2 = MmaShape<1, 1, 64, 3>;
using Shape3 = MmaShape<2, 2, 32, 3>;
constexpr const char* kShapeNames[] = {"mt1 g1 k64 s2", "mt2 g1 k32 s2", "mt1 g1 k64 s3", "mt2 g2 k32 s3"};
constexpr int kNumShapes = sizeof(kShapeNames) / sizeof(kShapeNames[0]);
// At least two blocks per SM: the 4-warp blocks, two per SM. Fewer: the 8-warp blocks, one per SM.
constexpr int kShapeManyBlocks = 1, kShapeFewBlocks = 0;

template <typename T, int D>
cudaError_t run_shape(const PrefillMmaArgs& a, int shape, cudaStream_t stream) {
  switch (shape) {
    case 0: return run_mma<T, D, Shape0>(a, stream);
    case 1: return run_mma<T, D, Shape1>(a, stream);
    case 2: return run_mma<T, D, Shape2>(a, stream);
    case 3: return run_mma<T, D, Shape3>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t run_dim(const PrefillMmaArgs& a, int shape, cudaStream_t stream) {
  if (a.head_dim == 64) return run_shape<T, 64>(a, shape, stream);
  if (a.head_dim == 128) return run_shape<T, 128>(a, shape, stream);
  return cudaErrorInvalidValue;
}

cudaError_t sm_count(int* sms) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  return err;
}

// Split blocks (several per tile) of 4 warps as soon as they give more than one per SM: a split
// walks fewer keys, so two blocks per SM beat one 8-warp block per SM in two waves.
cudaError_t default_shape(const PrefillMmaArgs& a, int* shape) {
  int sms = 0;
  const cudaError_t err = sm_count(&sms);
  if (err != cudaSuccess) return err;
  const int64_t blocks = static_cast<int64_t>(a.num_tiles) * a.num_kv_heads * a.num_splits;
  *shape = blocks >= 2 * sms || (a.num_splits > 1 && blocks > sms) ? kShapeManyBlocks : kShapeFewBlocks;
  return cudaSuccess;
}

// Key splits: each split costs its share of the partials written and merged, worth about
// kMergeKeys keys of attention per row; a split must keep at least kMinSplitKeys keys.
// Measured on an H200 (Llama-3-8B heads, bf16, pages of 16; whole prompt, ms, kernels back to back),
// prompt/chunk: auto (its count) / 1 / 2 / 4 / 8 splits:
//   8192/8192   1.93 (1)  1.93  2.13  2.30  2.65
//   8192/1024   2.18 (1)  2.18  2.20  2.40  2.79
//   8192/512    2.30 (2)  2.36  2.31  2.43  2.88
//   8192/256    2.48 (4)  4.56  2.56  2.48  2.95
//   32768/512  32.26 (2) 34.96 32.31 32.78 34.56
// A 512-token chunk gives 128 blocks, 97% of the SMs, so splitting gains little there; what is left
// of its gap to one chunk is the causal imbalance of the tiles within a chunk and the merge.
constexpr int kMaxSplits = 16;
static_assert(kMaxSplits <= kPrefillMmaMaxSplits, "the automatic choice stays within what the launcher takes");
constexpr int kMinSplitKeys = 256;
constexpr double kMergeKeys = 160.0;

}  // namespace

bool prefill_attention_mma_supported(DType dtype, int head_dim) {
  return (dtype == DType::F16 || dtype == DType::BF16) && (head_dim == 64 || head_dim == 128);
}

int prefill_attention_mma_shapes() { return kNumShapes; }
const char* prefill_attention_mma_shape_name(int shape) {
  return shape >= 0 && shape < kNumShapes ? kShapeNames[shape] : "?";
}

// Blocks run in waves of two per SM (the 4-warp shape). One block per (tile, kv head) leaves the
// chip underused when there are fewer blocks than that; splitting every tile's keys in S shrinks
// each block's walk by S at the price of ceil(blocks * S / slots) waves and S partials per row.
// The S of least estimated time, the smallest among equals; 1 when the blocks already fill the chip.
int prefill_attention_mma_splits(int num_tiles, int num_kv_heads, int max_seq_len) {
  int sms = 0;
  if (sm_count(&sms) != cudaSuccess || sms <= 0) {
    cudaGetLastError();
    return 1;
  }
  const int64_t blocks = static_cast<int64_t>(num_tiles) * num_kv_heads;
  const int64_t slots = 2 * static_cast<int64_t>(sms);
  if (blocks <= 0 || blocks >= slots || max_seq_len <= 0) return 1;
  const int most = std::min(kMaxSplits, std::max(1, max_seq_len / kMinSplitKeys));
  const double merge = kMergeKeys * static_cast<double>(blocks) / (static_cast<double>(slots) * max_seq_len);
  int best = 1;
  double best_cost = 1.0;  // one wave of blocks that walk every key
  for (int s = 2; s <= most; ++s) {
    const double cost = static_cast<double>((blocks * s + slots - 1) / slots) / s + s * merge;
    if (cost < best_cost) best = s, best_cost = cost;
  }
  return best;
}

cudaError_t launch_prefill_attention_mma_shape(const PrefillMmaArgs& args, DType dtype, int shape,
                                               cudaStream_t stream) {
  if (args.num_tiles == 0) return cudaSuccess;
  if (!prefill_attention_mma_supported(dtype, args.head_dim) || args.num_kv_heads <= 0 ||
      args.num_heads % args.num_kv_heads != 0 || args.block_size <= 0 || !(args.scale > 0.0f) ||
      args.num_splits < 1 || args.num_splits > kPrefillMmaMaxSplits ||
      (args.num_splits > 1 && (!args.part_acc || !args.part_ml)))
    return cudaErrorInvalidValue;
  if (shape < 0) {
    const cudaError_t err = default_shape(args, &shape);
    if (err != cudaSuccess) return err;
  }
  if (dtype == DType::BF16) return run_dim<__nv_bfloat16>(args, shape, stream);
  return run_dim<__half>(args, shape, stream);
}

cudaError_t launch_prefill_attention_mma(const PrefillMmaArgs& args, DType dtype, cudaStream_t stream) {
  return launch_prefill_attention_mma_shape(args, dtype, -1, stream);
}

}  // namespace ember::cuda
