// RMSNorm on the CPU: the sum of squares uses the canonical dot order, so a row's result is the same
// whatever rows it is batched with and whichever thread computes it.
#include <cmath>

#include "backend/cpu/cpu_kernels.h"

namespace ember::cpu {

void rms_norm(Isa isa, const float* x, const float* w, float eps, int64_t rows, int64_t d,
              float* out, int num_threads) {
  const bool parallel = num_threads > 1 && rows * d >= (int64_t{1} << 16);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (parallel)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = x + t * d;
    float* orow = out + t * d;
    const float ss = dot(isa, xr, xr, DType::F32, d);
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) orow[i] = (xr[i] * inv) * w[i];
  }
}

}  // namespace ember::cpu
