// TEMPORARY baseline for the variant benchmark: the kernel as it was on main.
// Causal prefill attention on the tensor cores (mma.sync m16n8k16, F16/BF16, head_dim 64/128): the
// CUDA-core kernel in prefill_attention.cu runs at a few percent of the chip, which made long
// prompts attention-bound. One block = 128 (query, head-in-group) rows of one kv head, 8 warps of
// 16 rows; 64-key K/V tiles are gathered page by page from the paged cache with cp.async, two
// stages deep, and folded in with an fp32 online softmax. Tiles wholly above the diagonal are skipped.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kRows = kPrefillMmaRows;
// 16-row mma blocks per warp. Two halve the shared-memory reads of K and V per flop (each fragment
// feeds two mmas) but leave no registers for Q, which is then re-read from shared memory, and make
// 4-warp blocks. Measured on an H100 (Llama-3-8B heads, bf16): two won on one-chunk prompts (182 vs
// 163 TFLOP/s at 2048 tokens) but lost on 512-token chunks (92 vs 119), too few blocks to fill the chip.
constexpr int kMT = 1;
constexpr bool kQInRegs = kMT == 1;
constexpr int kWarpRows = 16 * kMT;
constexpr int kWarps = kRows / kWarpRows;
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 64;  // keys per K/V tile
static_assert(kRows % kWarpRows == 0 && kKeys % 16 == 0, "whole 16-row mma blocks per warp; 16-key mma steps");

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; a false `valid` fills the destination with zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b for one 16x8x16 block, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one register of two 16-bit values, `lo` in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
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

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kMT == 1 ? (D <= 64 ? 2 : 1) * (128 / kRows) : 2)
    prefill_mma_old_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                       T* __restrict__ out, const int32_t* __restrict__ query_start,
                       const int32_t* __restrict__ seq_lens, const int32_t* __restrict__ block_tables, int num_seqs,
                       int num_tiles, int Hq, int Hk, int max_blocks_per_seq, int block_size, float scale_log2) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);  // [kRows][D]
  T* k_s = q_s + kRows * D;             // [2][kKeys][D]
  T* v_s = k_s + 2 * kKeys * D;         // [2][kKeys][D]
  __shared__ int tile_seq, tile_row0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int G = Hq / Hk;
  const int kvh = blockIdx.x % Hk;
  // Later tiles of a sequence see more keys: hand them out first so the short ones fill the tail.
  const int tile = num_tiles - 1 - static_cast<int>(blockIdx.x / Hk);
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
  const int32_t* table = block_tables + static_cast<int64_t>(s) * max_blocks_per_seq;

  // Row r of the tile is flat row row0 + r = query i * G + head g: query head kvh * G + g of token q0 + i.
  for (int idx = tid; idx < kRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks, flat = row0 + r;
    const bool ok = flat < nrows;
    const T* src = ok ? q + ((static_cast<int64_t>(q0 + flat / G) * Hq + kvh * G + flat % G) * D + c * 8) : q;
    cp_async16(smem_addr(q_s + swz<D>(r, c)), src, ok);
  }
  auto load_kv = [&](int it) {
    const int t0 = it * kKeys;
    T* ks = k_s + (it & 1) * kKeys * D;
    T* vs = v_s + (it & 1) * kKeys * D;
    for (int idx = tid; idx < kKeys * kChunks; idx += kThreads) {
      const int j = idx / kChunks, c = idx % kChunks, t = t0 + j;
      const bool ok = t < k_end;  // keys past the end are zero-filled (and masked)
      int64_t off = 0;
      if (ok) {
        const int64_t slot = static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
        off = (slot * Hk + kvh) * D + c * 8;
      }
      cp_async16(smem_addr(ks + swz<D>(j, c)), k_cache + off, ok);
      cp_async16(smem_addr(vs + swz<D>(j, c)), v_cache + off, ok);
    }
  };
  load_kv(0);
  cp_async_commit();

  // In mma block mt this lane holds rows ra + 16 mt and ra + 16 mt + 8 of the warp's; lim = last key
  // position the row sees (-1: a padding row past the chunk).
  const int ra = warp * kWarpRows + (lane >> 2);
  int lim[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int flat = row0 + ra + 16 * mt + 8 * h;
      lim[mt][h] = flat < nrows ? past + flat / G : -1;
    }
  const int wfirst = row0 + warp * kWarpRows;
  const int wlast = min(wfirst + kWarpRows - 1, nrows - 1);
  const int warp_max_lim = wlast >= wfirst ? past + wlast / G : -1;
  const int warp_min_lim = wfirst + kWarpRows - 1 < nrows ? past + wfirst / G : -1;

  uint32_t qf[kQInRegs ? D / 16 : 1][4];
  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  // A fragment of Q for mma block mt, k-step kk (ldmatrix x4: rows 0-7 / 8-15, k 0-7 / 8-15).
  auto load_q = [&](uint32_t (&a)[4], int mt, int kk) {
    const int row = warp * kWarpRows + mt * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
    ldmatrix_x4(a, smem_addr(q_s + swz<D>(row, 2 * kk + (lane >> 4))));
  };

  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) load_kv(it + 1);
    cp_async_commit();  // possibly empty: keeps the group count uniform for the wait below
    cp_async_wait<1>();
    __syncthreads();
    if (kQInRegs && it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_q(qf[kQInRegs ? kk : 0], 0, kk);
    }
    const int t0 = it * kKeys;
    if (t0 <= warp_max_lim) {
      const T* ks = k_s + (it & 1) * kKeys * D;
      const T* vs = v_s + (it & 1) * kKeys * D;
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
          if constexpr (kQInRegs) {
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
        float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], sc[mt][nb][e] * scale_log2);
        float base[2], alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          base[h] = mx[h] == -INFINITY ? 0.0f : mx[h];  // a row that has seen nothing stays at zero
          alpha[h] = exp2f(m[mt][h] - base[h]);
          m[mt][h] = mx[h];
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
          const float p0 = exp2f(fmaf(sc[mt][nb][0], scale_log2, -base[0]));
          const float p1 = exp2f(fmaf(sc[mt][nb][1], scale_log2, -base[0]));
          const float p2 = exp2f(fmaf(sc[mt][nb][2], scale_log2, -base[1]));
          const float p3 = exp2f(fmaf(sc[mt][nb][3], scale_log2, -base[1]));
          rs[0] += p0 + p1;
          rs[1] += p2 + p3;
          // The accumulator layout of two adjacent 16x8 blocks is the A-operand layout of one 16x16 block.
          pf[mt][nb >> 1][(nb & 1) * 2 + 0] = pack2<T>(p0, p1);
          pf[mt][nb >> 1][(nb & 1) * 2 + 1] = pack2<T>(p2, p3);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[mt][h] = l[mt][h] * alpha[h] + rs[h];
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          o[mt][nd][0] *= alpha[0];
          o[mt][nd][1] *= alpha[0];
          o[mt][nd][2] *= alpha[1];
          o[mt][nd][3] *= alpha[1];
        }
      }
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        const int key = j * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, smem_addr(vs + swz<D>(key, nd + (lane >> 4))));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma16816<T>(o[mt][nd], pf[mt][j], b[0], b[1]);
            mma16816<T>(o[mt][nd + 1], pf[mt][j], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int flat = row0 + ra + 16 * mt + 8 * h;
      if (flat >= nrows) continue;
      T* orow = out + (static_cast<int64_t>(q0 + flat / G) * Hq + kvh * G + flat % G) * D + (lane & 3) * 2;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        *reinterpret_cast<uint32_t*>(orow + nd * 8) =
            pack2<T>(o[mt][nd][2 * h] * inv, o[mt][nd][2 * h + 1] * inv);
    }
}

template <typename T, int D>
cudaError_t run_mma(const PrefillMmaArgs& a, cudaStream_t stream) {
  const size_t smem = sizeof(T) * static_cast<size_t>(kRows + 4 * kKeys) * D;
  cudaError_t err = cudaFuncSetAttribute(prefill_mma_old_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t blocks = static_cast<int64_t>(a.num_tiles) * a.num_kv_heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  prefill_mma_old_kernel<T, D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache), static_cast<const T*>(a.v_cache),
      static_cast<T*>(a.out), a.query_start, a.seq_lens, a.block_tables, a.num_seqs, a.num_tiles, a.num_heads,
      a.num_kv_heads, a.max_blocks_per_seq, a.block_size, a.scale * 1.4426950408889634f);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_mma_dim(const PrefillMmaArgs& a, cudaStream_t stream) {
  if (a.head_dim == 64) return run_mma<T, 64>(a, stream);
  if (a.head_dim == 128) return run_mma<T, 128>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_prefill_attention_mma_old(const PrefillMmaArgs& args, DType dtype, cudaStream_t stream) {
  if (args.num_tiles == 0) return cudaSuccess;
  if (dtype == DType::BF16) return run_mma_dim<__nv_bfloat16>(args, stream);
  return run_mma_dim<__half>(args, stream);
}

}  // namespace ember::cuda
