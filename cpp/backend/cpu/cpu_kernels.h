// Raw-pointer kernels behind the CPU backend, one op family per .cc file. Every kernel computes
// each output element with a fixed operation sequence, so results never depend on batching or threads.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/dtype.h"

namespace ember::cpu {

// Which instruction set the kernels use; kPortable computes bitwise the same results as kAvx2
// (both use 8 fused-multiply-add lanes over K and the same horizontal sum), only slower on x86.
enum class Isa { kPortable, kAvx2 };

// The best ISA this CPU supports (AVX2 + FMA + F16C), fixed for the life of the process.
Isa detect_isa();

// Dot product of x[0..k) (F32) with w[0..k) (of dtype wt) in the canonical order: lane i of 8
// fma-accumulates elements i, i+8, ..., the lanes are summed pairwise ((0+4)+(2+6))+((1+5)+(3+7)),
// then the k % 8 tail elements are fma-ed in order.
float dot(Isa isa, const float* x, const void* w, DType wt, int64_t k);

// out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]) for t < rows, n < cols (all rows contiguous).
void matmul(Isa isa, const float* x, int64_t rows, int64_t k, const void* w, DType wt,
            int64_t cols, const float* bias, float* out, int num_threads);

// One 32-element block of an activation row quantized for the block-format matmuls: x ~ d * qs,
// d = max|x| / 32767, qs rounded to nearest even (15 bits: the activations add no error worth
// speaking of next to 4-bit weights); s = d * sum(qs) (for the Q4 formats' offsets).
struct Q16Block {
  float d;
  float s;
  int16_t qs[32];
};

// Quantizes rows x [rows, k] (k a multiple of 32) into rows * k / 32 blocks. A block holding a
// non-finite value gets d = s = NaN, so the outputs of its row are NaN.
void quantize_rows_q16(const float* x, int64_t rows, int64_t k, Q16Block* out, int num_threads);

// out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]) for w of block dtype wt (Q4_0, Q4_1, Q8_0) with
// x quantized by quantize_rows_q16 into *scratch. Each output is, over blocks b in order,
// acc[l] = fma(dw_b * dx_b, float(P_bl), acc[l]) in 8 lanes, where P_bl is the exact integer sum
// of q_w * q_x over elements {2l, 2l+1, 16+2l, 17+2l} of block b; then lane_sum(acc), plus the
// fma-accumulated offset terms m_b * s_b (Q4_0: m = -8 dw; Q4_1: m = the block minimum), plus
// the bias. kPortable and kAvx2 agree bitwise.
void matmul_quantized(Isa isa, const float* x, int64_t rows, int64_t k, const void* w, DType wt,
                      int64_t cols, const float* bias, float* out, std::vector<Q16Block>* scratch,
                      int num_threads);

// Converts n elements of dtype src (element or block dtype) to F32.
void to_f32(const void* src, DType src_type, float* dst, int64_t n);
// Converts n F32 values to dtype dst (round to nearest even).
void from_f32(const float* src, void* dst, DType dst_type, int64_t n);

// Row-wise RMSNorm: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of length d.
void rms_norm(Isa isa, const float* x, const float* w, float eps, int64_t rows, int64_t d,
              float* out, int num_threads);

// Paged causal attention, see Backend::attention for the layout.
struct AttentionArgs {
  const float* q;           // [T, hq, d]
  const void* k_cache;      // [num_slots, hk, d]
  const void* v_cache;
  DType cache_type;
  int64_t num_slots;
  int64_t hq, hk, d;
  const int32_t* query_start;   // [num_seqs + 1]
  const int32_t* seq_lens;      // [num_seqs]
  const int32_t* block_tables;  // [num_seqs * max_blocks_per_seq]
  int32_t num_seqs, max_blocks_per_seq, block_size;
  float scale;
  float* out;               // [T, hq, d]
};
void attention(Isa isa, const AttentionArgs& a, int num_threads);

// In-place rotary embedding of q [t, hq, d] and k [t, hk, d]; angle = float(pos) * inv_freq[i]
// with cos/sin taken in double and rounded once, pairs (i, i + d/2) if neox else (2i, 2i + 1).
void rope(float* q, int64_t hq, float* k, int64_t hk, int64_t rows, int64_t d,
          const int32_t* positions, const float* inv_freq, bool neox, int num_threads);

// out[t, i] = silu(x[t, i]) * x[t, f + i] for x [rows, 2f].
void silu_mul(const float* x, int64_t rows, int64_t f, float* out, int num_threads);

// a[i] += b[i].
void add(float* a, const float* b, int64_t n, int num_threads);

}  // namespace ember::cpu
