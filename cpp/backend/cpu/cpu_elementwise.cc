// Element-wise CPU ops (rotary embedding, SiLU gate, residual add): each output element depends
// only on its own inputs, so they parallelise freely without touching determinism.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_kernels.h"

namespace ember::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelElems = 1 << 16;

inline void rotate(float* x, int64_t d, const float* cs, const float* sn, bool neox) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = neox ? i : 2 * i;
    const int64_t b = neox ? i + half : 2 * i + 1;
    const float x1 = x[a], x2 = x[b];
    x[a] = x1 * cs[i] - x2 * sn[i];
    x[b] = x2 * cs[i] + x1 * sn[i];
  }
}

}  // namespace

void rope(float* q, int64_t hq, float* k, int64_t hk, int64_t rows, int64_t d,
          const int32_t* positions, const float* inv_freq, bool neox, int num_threads) {
  const int64_t half = d / 2;
  const bool parallel = num_threads > 1 && rows * (hq + hk) * d >= kParallelElems;
#pragma omp parallel num_threads(num_threads) if (parallel)
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
        sn[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
      }
      for (int64_t h = 0; h < hq; ++h) rotate(q + (t * hq + h) * d, d, cs.data(), sn.data(), neox);
      for (int64_t h = 0; h < hk; ++h) rotate(k + (t * hk + h) * d, d, cs.data(), sn.data(), neox);
    }
  }
}

void silu_mul(const float* x, int64_t rows, int64_t f, float* out, int num_threads) {
  const bool parallel = num_threads > 1 && rows * f >= kParallelElems;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (parallel)
  for (int64_t t = 0; t < rows; ++t) {
    const float* g = x + t * 2 * f;
    const float* u = g + f;
    float* o = out + t * f;
    for (int64_t i = 0; i < f; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void add(float* a, const float* b, int64_t n, int num_threads) {
  const bool parallel = num_threads > 1 && n >= 4 * kParallelElems;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (parallel)
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

}  // namespace ember::cpu
