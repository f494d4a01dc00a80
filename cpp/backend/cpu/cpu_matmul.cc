// x @ W^T on the CPU: register tiles of R activation rows x C weight rows so that decode streams the
// weights at memory speed and prefill reuses each weight row; every output keeps the canonical dot order.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_matmul_tiles.h"
#include "backend/cpu/cpu_simd.h"
#include "ember/error.h"

namespace ember::cpu {
namespace {

template <int R, int C, DType WT>
void tile_portable(const float* x, int64_t k, const void* w, const float* bias, float* out,
                   int64_t ldo) {
  const size_t ws = dtype_size(WT);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const void* wr = static_cast<const char*>(w) + static_cast<size_t>(c) * k * ws;
      float s = dot_portable<WT>(x + r * k, wr, k);
      if (bias) s += bias[c];
      out[r * ldo + c] = s;
    }
  }
}

#if EMBER_X86
template <int R, int C, DType WT>
EMBER_AVX2 void tile_avx2(const float* x, int64_t k, const void* w, const float* bias, float* out,
                          int64_t ldo) {
  const size_t ws = dtype_size(WT);
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load8<WT>(w, c * k + i);
    for (int r = 0; r < R; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * k + i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = hsum8(acc[r][c]);
      const void* wr = static_cast<const char*>(w) + static_cast<size_t>(c) * k * ws;
      for (int64_t i = k8; i < k; ++i) s = std::fma(x[r * k + i], load_scalar<WT>(wr, i), s);
      if (bias) s += bias[c];
      out[r * ldo + c] = s;
    }
  }
}
#endif


template <bool Avx, int R, int C, DType WT>
inline void tile(const float* x, int64_t k, const void* w, const float* bias, float* out, int64_t ldo) {
#if EMBER_X86
  if constexpr (Avx) {
    tile_avx2<R, C, WT>(x, k, w, bias, out, ldo);
    return;
  }
#endif
  tile_portable<R, C, WT>(x, k, w, bias, out, ldo);
}

// Rows [t, t+R) against weight rows [n0, n1).
template <bool Avx, int R, DType WT>
void row_block(const float* x, int64_t k, const void* w, int64_t n0, int64_t n1, const float* bias,
               float* out, int64_t ldo) {
  constexpr int C = tile_cols<R>();
  const size_t ws = dtype_size(WT);
  int64_t n = n0;
  for (; n + C <= n1; n += C) {
    tile<Avx, R, C, WT>(x, k, static_cast<const char*>(w) + n * k * ws, bias ? bias + n : nullptr,
                        out + n, ldo);
  }
  for (; n < n1; ++n) {
    tile<Avx, R, 1, WT>(x, k, static_cast<const char*>(w) + n * k * ws, bias ? bias + n : nullptr,
                        out + n, ldo);
  }
}

template <bool Avx, DType WT>
void block(const float* x, int64_t t0, int64_t t1, int64_t k, const void* w, int64_t n0, int64_t n1,
           const float* bias, float* out, int64_t n) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) row_block<Avx, 4, WT>(x + t * k, k, w, n0, n1, bias, out + t * n, n);
  switch (t1 - t) {
    case 3: row_block<Avx, 3, WT>(x + t * k, k, w, n0, n1, bias, out + t * n, n); break;
    case 2: row_block<Avx, 2, WT>(x + t * k, k, w, n0, n1, bias, out + t * n, n); break;
    case 1: row_block<Avx, 1, WT>(x + t * k, k, w, n0, n1, bias, out + t * n, n); break;
    default: break;
  }
}

template <bool Avx, DType WT>
void run(const float* x, int64_t rows, int64_t k, const void* w, int64_t cols, const float* bias,
         float* out, int num_threads) {
  for_each_matmul_tile(rows, cols, k, k * static_cast<int64_t>(dtype_size(WT)), num_threads,
                       [&](int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
                         block<Avx, WT>(x, t0, t1, k, w, n0, n1, bias, out, cols);
                       });
}

template <bool Avx>
void run_dtype(const float* x, int64_t rows, int64_t k, const void* w, DType wt, int64_t cols,
               const float* bias, float* out, int num_threads) {
  switch (wt) {
    case DType::F32: run<Avx, DType::F32>(x, rows, k, w, cols, bias, out, num_threads); return;
    case DType::BF16: run<Avx, DType::BF16>(x, rows, k, w, cols, bias, out, num_threads); return;
    case DType::F16: run<Avx, DType::F16>(x, rows, k, w, cols, bias, out, num_threads); return;
    default: break;
  }
  throw EngineError(std::string("cpu matmul: unsupported weight dtype ") + dtype_name(wt) +
                    " (expected F32, BF16 or F16)");
}

}  // namespace

Isa detect_isa() {
#if EMBER_X86
  static const Isa isa = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c"))
                             ? Isa::kAvx2
                             : Isa::kPortable;
  return isa;
#else
  return Isa::kPortable;
#endif
}

float dot(Isa isa, const float* x, const void* w, DType wt, int64_t k) {
#if EMBER_X86
  if (isa == Isa::kAvx2) {
    switch (wt) {
      case DType::F32: return dot_avx2<DType::F32>(x, w, k);
      case DType::BF16: return dot_avx2<DType::BF16>(x, w, k);
      case DType::F16: return dot_avx2<DType::F16>(x, w, k);
      default: break;
    }
  }
#endif
  switch (wt) {
    case DType::F32: return dot_portable<DType::F32>(x, w, k);
    case DType::BF16: return dot_portable<DType::BF16>(x, w, k);
    case DType::F16: return dot_portable<DType::F16>(x, w, k);
    default: break;
  }
  throw EngineError(std::string("cpu dot: unsupported dtype ") + dtype_name(wt));
}

void matmul(Isa isa, const float* x, int64_t rows, int64_t k, const void* w, DType wt, int64_t cols,
            const float* bias, float* out, int num_threads) {
  if (rows == 0 || cols == 0) return;
  if (isa == Isa::kAvx2 && EMBER_X86) {
    run_dtype<true>(x, rows, k, w, wt, cols, bias, out, num_threads);
  } else {
    run_dtype<false>(x, rows, k, w, wt, cols, bias, out, num_threads);
  }
}

}  // namespace ember::cpu
