// x @ W^T for weights kept in ggml's block formats: decode reads 4.5-8.5 bits per weight instead of
// 32, and the activations are quantized to 16-bit blocks so each block is one integer dot product.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_matmul_tiles.h"
#include "backend/cpu/cpu_simd.h"
#include "ember/error.h"

namespace ember::cpu {
namespace {

constexpr int64_t kBlock = 32;

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Byte offset of the quants in a block, and the scale-times-offset of the Q4 formats.
template <DType WT>
constexpr int quants_at() { return WT == DType::Q4_1 ? 4 : 2; }

// Same ops whatever the ISA: nothing here may depend on the path taken.
void quantize_row(const float* x, int64_t k, Q16Block* out) {
  for (int64_t b = 0; b < k / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    Q16Block& q = out[b];
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < kBlock; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::max(amax, std::fabs(xb[i]));
    }
    if (!finite) {
      q.d = NAN;
      q.s = NAN;
      std::memset(q.qs, 0, sizeof(q.qs));
      continue;
    }
    const float d = amax / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      // Ties to even; |x * id| <= 32767 * (1 + 2^-22), which rounds to at most 32767.
      const int v = static_cast<int>(std::nearbyint(xb[i] * id));
      q.qs[i] = static_cast<int16_t>(v);
      sum += v;
    }
    q.d = d;
    q.s = d * static_cast<float>(sum);
  }
}

// ---- portable: the integer lane sums and float steps of the AVX2 path, written out ----

template <DType WT>
inline void unpack_portable(const uint8_t* blk, int* q) {
  const uint8_t* qs = blk + quants_at<WT>();
  if constexpr (WT == DType::Q8_0) {
    for (int j = 0; j < 32; ++j) q[j] = static_cast<int8_t>(qs[j]);
  } else {
    for (int j = 0; j < 16; ++j) {
      q[j] = qs[j] & 0x0F;
      q[j + 16] = qs[j] >> 4;
    }
  }
}

template <DType WT>
inline float offset_of(const uint8_t* blk, float dw) {
  if constexpr (WT == DType::Q4_0) return dw * -8.0f;
  else if constexpr (WT == DType::Q4_1) return half_at(blk + 2);
  else return 0.0f;
}

template <int R, int C, DType WT>
void tile_portable(const Q16Block* x, int64_t nb, const uint8_t* w, size_t row_bytes,
                   const float* bias, float* out, int64_t ldo) {
  constexpr size_t bb = dtype_block_bytes(WT);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float accm = 0.0f;
      const uint8_t* wr = w + c * row_bytes;
      const Q16Block* xr = x + r * nb;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wr + b * bb;
        const float dw = half_at(blk);
        int q[32];
        unpack_portable<WT>(blk, q);
        const float d = dw * xr[b].d;
        const int16_t* xq = xr[b].qs;
        for (int l = 0; l < 8; ++l) {
          const int e = 2 * l;
          const int p = (q[e] * xq[e] + q[e + 1] * xq[e + 1]) + (q[e + 16] * xq[e + 16] + q[e + 17] * xq[e + 17]);
          acc[l] = std::fma(d, static_cast<float>(p), acc[l]);
        }
        if constexpr (WT != DType::Q8_0) accm = std::fma(offset_of<WT>(blk, dw), xr[b].s, accm);
      }
      float s = lane_sum(acc);
      if constexpr (WT != DType::Q8_0) s += accm;
      if (bias) s += bias[c];
      out[r * ldo + c] = s;
    }
  }
}

#if EMBER_X86
EMBER_AVX2 inline float half_at_f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);  // exact, as f16_to_f32
}

// Register tile of R activation rows x C weight rows; per block the weights are unpacked once and
// reused by every row.
template <int R, int C, DType WT>
EMBER_AVX2 void tile_avx2(const Q16Block* x, int64_t nb, const uint8_t* w, size_t row_bytes,
                          const float* bias, float* out, int64_t ldo) {
  constexpr size_t bb = dtype_block_bytes(WT);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256 acc[R][C];
  float accm[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      acc[r][c] = _mm256_setzero_ps();
      accm[r][c] = 0.0f;
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wlo[C], whi[C];  // elements 0..15 and 16..31 as int16
    __m256 dw[C];
    float mw[C];
    for (int c = 0; c < C; ++c) {
      const uint8_t* blk = w + c * row_bytes + b * bb;
      const float d = half_at_f16c(blk);
      dw[c] = _mm256_set1_ps(d);
      if constexpr (WT == DType::Q8_0) {
        wlo[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
        whi[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18)));
      } else {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + quants_at<WT>()));
        wlo[c] = _mm256_cvtepu8_epi16(_mm_and_si128(raw, low4));
        whi[c] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low4));
        mw[c] = WT == DType::Q4_0 ? d * -8.0f : half_at_f16c(blk + 2);
      }
    }
    for (int r = 0; r < R; ++r) {
      const Q16Block& xb = x[r * nb + b];
      const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs));
      const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs + 16));
      const __m256 dx = _mm256_set1_ps(xb.d);
      for (int c = 0; c < C; ++c) {
        const __m256i p32 = _mm256_add_epi32(_mm256_madd_epi16(wlo[c], xlo), _mm256_madd_epi16(whi[c], xhi));
        acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dw[c], dx), _mm256_cvtepi32_ps(p32), acc[r][c]);
        if constexpr (WT != DType::Q8_0) accm[r][c] = std::fma(mw[c], xb.s, accm[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = hsum8(acc[r][c]);
      if constexpr (WT != DType::Q8_0) s += accm[r][c];
      if (bias) s += bias[c];
      out[r * ldo + c] = s;
    }
  }
}
#endif


template <bool Avx, int R, int C, DType WT>
inline void tile(const Q16Block* x, int64_t nb, const uint8_t* w, size_t row_bytes, const float* bias,
                 float* out, int64_t ldo) {
#if EMBER_X86
  if constexpr (Avx) {
    tile_avx2<R, C, WT>(x, nb, w, row_bytes, bias, out, ldo);
    return;
  }
#endif
  tile_portable<R, C, WT>(x, nb, w, row_bytes, bias, out, ldo);
}

template <bool Avx, int R, DType WT>
void row_block(const Q16Block* x, int64_t nb, const uint8_t* w, size_t row_bytes, int64_t n0,
               int64_t n1, const float* bias, float* out, int64_t ldo) {
  constexpr int C = tile_cols<R>();
  int64_t n = n0;
  for (; n + C <= n1; n += C)
    tile<Avx, R, C, WT>(x, nb, w + n * row_bytes, row_bytes, bias ? bias + n : nullptr, out + n, ldo);
  for (; n < n1; ++n)
    tile<Avx, R, 1, WT>(x, nb, w + n * row_bytes, row_bytes, bias ? bias + n : nullptr, out + n, ldo);
}

template <bool Avx, DType WT>
void block(const Q16Block* x, int64_t t0, int64_t t1, int64_t nb, const uint8_t* w, size_t row_bytes,
           int64_t n0, int64_t n1, const float* bias, float* out, int64_t n) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) row_block<Avx, 4, WT>(x + t * nb, nb, w, row_bytes, n0, n1, bias, out + t * n, n);
  switch (t1 - t) {
    case 3: row_block<Avx, 3, WT>(x + t * nb, nb, w, row_bytes, n0, n1, bias, out + t * n, n); break;
    case 2: row_block<Avx, 2, WT>(x + t * nb, nb, w, row_bytes, n0, n1, bias, out + t * n, n); break;
    case 1: row_block<Avx, 1, WT>(x + t * nb, nb, w, row_bytes, n0, n1, bias, out + t * n, n); break;
    default: break;
  }
}

// Work split as in the float matmul: a few column blocks per thread for a handful of rows (stream
// the weights), L2-sized column blocks reused by a chunk of rows otherwise.
template <bool Avx, DType WT>
void run(const Q16Block* x, int64_t rows, int64_t k, const uint8_t* w, int64_t cols, const float* bias,
         float* out, int num_threads) {
  const int64_t nb_k = k / kBlock;
  const size_t row_bytes = dtype_nbytes(WT, k);
  for_each_matmul_tile(rows, cols, k, static_cast<int64_t>(row_bytes), num_threads,
                       [&](int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
                         block<Avx, WT>(x, t0, t1, nb_k, w, row_bytes, n0, n1, bias, out, cols);
                       });
}

template <bool Avx>
void run_dtype(const Q16Block* x, int64_t rows, int64_t k, const void* w, DType wt, int64_t cols,
               const float* bias, float* out, int num_threads) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  switch (wt) {
    case DType::Q4_0: run<Avx, DType::Q4_0>(x, rows, k, wb, cols, bias, out, num_threads); return;
    case DType::Q4_1: run<Avx, DType::Q4_1>(x, rows, k, wb, cols, bias, out, num_threads); return;
    case DType::Q8_0: run<Avx, DType::Q8_0>(x, rows, k, wb, cols, bias, out, num_threads); return;
    default: break;
  }
  throw EngineError(std::string("cpu matmul: weight dtype ") + dtype_name(wt) +
                    " is not a block format (expected Q4_0, Q4_1 or Q8_0)");
}

}  // namespace

void quantize_rows_q16(const float* x, int64_t rows, int64_t k, Q16Block* out, int num_threads) {
  const int64_t nb = k / kBlock;
  // No parallel construct at all for a few rows: a one-thread region between two-thread ones
  // makes libgomp park and re-wake its workers, which costs more than a decode matmul.
  if (rows * k < (int64_t{1} << 16) || num_threads <= 1) {
    for (int64_t t = 0; t < rows; ++t) quantize_row(x + t * k, k, out + t * nb);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < rows; ++t) quantize_row(x + t * k, k, out + t * nb);
}

void matmul_quantized(Isa isa, const float* x, int64_t rows, int64_t k, const void* w, DType wt,
                      int64_t cols, const float* bias, float* out, std::vector<Q16Block>* scratch,
                      int num_threads) {
  if (k % kBlock != 0) {
    throw EngineError("cpu matmul: " + std::string(dtype_name(wt)) + " weight rows of " + std::to_string(k) +
                      " elements are not whole 32-element blocks");
  }
  if (rows == 0 || cols == 0) return;
  const size_t need = static_cast<size_t>(rows * (k / kBlock));
  if (scratch->size() < need) scratch->resize(need);
  quantize_rows_q16(x, rows, k, scratch->data(), num_threads);
  if (isa == Isa::kAvx2 && EMBER_X86) {
    run_dtype<true>(scratch->data(), rows, k, w, wt, cols, bias, out, num_threads);
  } else {
    run_dtype<false>(scratch->data(), rows, k, w, wt, cols, bias, out, num_threads);
  }
}

}  // namespace ember::cpu
