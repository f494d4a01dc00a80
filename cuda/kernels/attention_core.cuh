// The online-softmax step shared by the decode and prefill attention kernels: a warp folds one
// tile of keys (staged in shared memory) into up to kRowsPerWarp query rows held in registers.
#pragma once

#include <cmath>

#include "kernels/common.cuh"

namespace ember::cuda::attn {

constexpr int kRowsPerWarp = 4;
constexpr int kMaxDimChunks = 8;  // head_dim <= 256: lane owns dims lane + 32*i
constexpr int kMaxHeadDim = 32 * kMaxDimChunks;

// Row stride (elements) of the K tile in shared memory: one 4-byte word of padding so that lanes
// reading different keys at the same dim hit different banks.
template <typename T>
__host__ __device__ constexpr int k_stride(int D) { return D + static_cast<int>(4 / sizeof(T)); }

struct WarpRows {
  float m[kRowsPerWarp];  // running max (log2 domain)
  float l[kRowsPerWarp];  // running sum of exp2
  float acc[kRowsPerWarp][kMaxDimChunks];

  __device__ void init() {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxDimChunks; ++i) acc[r][i] = 0.0f;
    }
  }
};

// Dims d and d + 1 of a K row in shared memory as floats (2-byte types: one 4-byte read; p even-aligned).
__device__ __forceinline__ float2 pair_to_f32(const float* p) { return make_float2(p[0], p[1]); }
__device__ __forceinline__ float2 pair_to_f32(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 pair_to_f32(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// Slot of context position t of a sequence whose block-table row is `table`.
__device__ __forceinline__ int64_t slot_of(const int32_t* table, int block_size, int t) {
  return static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
}

// Block-cooperative copy of keys [t0, t0 + n) of kv head `kvh` into shared tiles (n <= tile rows).
template <typename T>
__device__ void load_kv_tile(const T* __restrict__ k_cache, const T* __restrict__ v_cache, const int32_t* table,
                             int block_size, int Hk, int kvh, int D, int t0, int n, T* k_s, T* v_s,
                             int64_t* slot_s) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) slot_s[j] = slot_of(table, block_size, t0 + j);
  __syncthreads();
  const int ks = k_stride<T>(D);
  constexpr int kVec = 16 / sizeof(T);
  if (D % kVec == 0) {
    const int vecs = D / kVec, total = n * vecs;
    // kBatch K and V vectors per thread are loaded before any is stored, so that a tile costs about
    // one memory latency per batch rather than one per vector.
    constexpr int kBatch = 8;
    union Vec { uint4 u; T e[kVec]; };
    for (int first = threadIdx.x; first < total; first += kBatch * blockDim.x) {
      Vec kb[kBatch], vb[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int idx = first + b * blockDim.x;
        if (idx < total) {
          const int j = idx / vecs, c = idx % vecs;
          const int64_t base = (slot_s[j] * Hk + kvh) * D + c * kVec;
          kb[b].u = *reinterpret_cast<const uint4*>(k_cache + base);
          vb[b].u = *reinterpret_cast<const uint4*>(v_cache + base);
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int idx = first + b * blockDim.x;
        if (idx < total) {
          const int j = idx / vecs, c = idx % vecs;
          *reinterpret_cast<uint4*>(v_s + j * D + c * kVec) = vb[b].u;
#pragma unroll
          for (int e = 0; e < kVec; ++e) k_s[j * ks + c * kVec + e] = kb[b].e[e];
        }
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < n * D; idx += blockDim.x) {
      int j = idx / D, d = idx % D;
      int64_t base = (slot_s[j] * Hk + kvh) * D + d;
      k_s[j * ks + d] = k_cache[base];
      v_s[j * D + d] = v_cache[base];
    }
  }
}

// Folds keys [0, nkeys) of a 32-key sub-tile (context positions pos0 + j) into the warp's rows.
// q_s: this warp's rows [kRowsPerWarp][D], pre-scaled by scale*log2(e). row_limit[r]: last
// position row r may attend (-1 = unused row). Must be called by all 32 lanes of the warp.
template <typename T>
__device__ void fold_tile(const float* q_s, const T* k_s, const T* v_s, int D, int nkeys, int pos0,
                          const int* row_limit, WarpRows& st) {
  const int lane = threadIdx.x & 31;
  const int ks = k_stride<T>(D);
  float s[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.0f;
  if (lane < nkeys) {
    const T* krow = k_s + lane * ks;
    if (D % 2 == 0) {  // two dims per shared-memory read of K and of each q row; same FMA order
#pragma unroll 4
      for (int d = 0; d < D; d += 2) {
        const float2 kd = pair_to_f32(krow + d);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const float2 qd = *reinterpret_cast<const float2*>(q_s + r * D + d);
          s[r] = fmaf(qd.y, kd.y, fmaf(qd.x, kd.x, s[r]));
        }
      }
    } else {
      for (int d = 0; d < D; ++d) {
        float kd = to_f32(krow[d]);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) s[r] = fmaf(q_s[r * D + d], kd, s[r]);
      }
    }
  }
  float p[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    bool ok = lane < nkeys && pos0 + lane <= row_limit[r];
    float sv = ok ? s[r] : -INFINITY;
    float m_new = fmaxf(st.m[r], warp_max(sv));
    if (m_new == -INFINITY) {  // nothing visible yet for this row (uniform across the warp)
      p[r] = 0.0f;
      continue;
    }
    float alpha = exp2f(st.m[r] - m_new);
    p[r] = ok ? exp2f(sv - m_new) : 0.0f;
    st.l[r] = st.l[r] * alpha + warp_sum(p[r]);
    st.m[r] = m_new;
#pragma unroll
    for (int i = 0; i < kMaxDimChunks; ++i) st.acc[r][i] *= alpha;
  }
#pragma unroll 4
  for (int j = 0; j < nkeys; ++j) {
    float pj[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) pj[r] = __shfl_sync(0xffffffffu, p[r], j);
    const T* vrow = v_s + j * D;
#pragma unroll
    for (int i = 0; i < kMaxDimChunks; ++i) {
      int d = lane + 32 * i;
      if (d < D) {
        float vd = to_f32(vrow[d]);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) st.acc[r][i] = fmaf(pj[r], vd, st.acc[r][i]);
      }
    }
  }
}

}  // namespace ember::cuda::attn
