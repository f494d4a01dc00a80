// Shared building blocks of the CPU kernels: the canonical 8-lane dot product in an AVX2 and a
// portable form that round identically, so one output never depends on the path or the batch.
#pragma once

#include <cmath>
#include <cstdint>

#include "ember/dtype.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EMBER_X86 1
#define EMBER_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define EMBER_X86 0
#define EMBER_AVX2
#endif

namespace ember::cpu {

// How many weight rows one register tile of a matmul covers for R activation rows (keeps R*C
// accumulators plus operands within 16 vector registers).
template <int R>
constexpr int tile_cols() { return R <= 2 ? 4 : 2; }

// Scalar load of weight element i as F32.
template <DType WT>
inline float load_scalar(const void* w, int64_t i) {
  if constexpr (WT == DType::F32) {
    return static_cast<const float*>(w)[i];
  } else if constexpr (WT == DType::BF16) {
    return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  } else {
    return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
  }
}

// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): the order _mm256 -> _mm -> movehl -> add reduces in.
inline float lane_sum(const float* l) {
  float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
  return (s0 + s2) + (s1 + s3);
}

// Portable canonical dot (fma per lane; on AArch64 this vectorises to fmla).
template <DType WT>
inline float dot_portable(const float* x, const void* w, int64_t k) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t i = 0; i < k8; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] = std::fma(x[i + l], load_scalar<WT>(w, i + l), acc[l]);
  }
  float s = lane_sum(acc);
  for (int64_t i = k8; i < k; ++i) s = std::fma(x[i], load_scalar<WT>(w, i), s);
  return s;
}

#if EMBER_X86
template <DType WT>
EMBER_AVX2 inline __m256 load8(const void* w, int64_t i) {
  if constexpr (WT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else if constexpr (WT == DType::BF16) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_cvtph_ps(h);
  }
}

EMBER_AVX2 inline float hsum8(__m256 v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

template <DType WT>
EMBER_AVX2 inline float dot_avx2(const float* x, const void* w, int64_t k) {
  __m256 acc = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t i = 0; i < k8; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8<WT>(w, i), acc);
  float s = hsum8(acc);
  for (int64_t i = k8; i < k; ++i) s = std::fma(x[i], load_scalar<WT>(w, i), s);
  return s;
}
#endif

}  // namespace ember::cpu
