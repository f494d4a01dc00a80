// The value a random-weight model puts at element i: a stateless hash of (seed, i), so that the
// CPU and CUDA backends fill tensors identically and a benchmark model needs no file at all.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EMBER_HOST_DEVICE __host__ __device__
#else
#define EMBER_HOST_DEVICE
#endif

namespace ember {

EMBER_HOST_DEVICE inline float random_fill_value(uint64_t seed, uint64_t i, float scale, float offset) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + i + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  return offset + scale * (2.0f * u - 1.0f);
}

}  // namespace ember
