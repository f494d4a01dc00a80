// Sampling on the GPU, one block per logits row, reproducing the reference sampler
// (cpp/sample/sampler.cc): penalties, greedy argmax, temperature, top-k and top-p by radix select
// on the (value desc, id asc) order, min-p, and the inverse-CDF draw in token order with the row's
// counter_uniform(seed, step) value. Only ids and logprobs leave the device.
#include <cfloat>
#include <climits>

#include "ember/sampling.h"
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

struct Shared {
  unsigned hist_u[256];
  double hist_d[256];
  double red_d[kWarps];
  float red_f[kWarps];
  int red_i[kWarps];
  long long scan[kWarps];
  uint32_t key;
  int need;
  double above;
  int found;
};

// Ascending unsigned order of floats (finite and infinite); larger value -> larger key.
__device__ __forceinline__ uint32_t float_key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// Highest value, lowest id on ties; NaN entries are skipped. All -inf -> id 0.
__device__ void block_argmax(const float* x, int V, Shared& sh, float* out_v, int* out_i) {
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < V; i += kThreads) {
    float v = x[i];
    if (!isnan(v) && better(v, i, bv, bi)) { bv = v; bi = i; }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) { sh.red_f[warp] = bv; sh.red_i[warp] = bi; }
  __syncthreads();
  bv = sh.red_f[lane];
  bi = sh.red_i[lane];
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
  }
  *out_v = bv;
  *out_i = bi == INT_MAX ? 0 : bi;
}

__device__ double block_sum_d(double v, Shared& sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.red_d[warp] = v;
  __syncthreads();
  v = sh.red_d[lane];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Exclusive prefix over threads in thread order (each thread owns a contiguous chunk).
__device__ long long block_exclusive_scan(long long v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    long long n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  __syncthreads();
  if (lane == 31) sh.scan[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    long long w = sh.scan[lane], wi = w;
    for (int o = 1; o < 32; o <<= 1) {
      long long n = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += n;
    }
    sh.scan[lane] = wi - w;
  }
  __syncthreads();
  return sh.scan[warp] + incl - v;
}

// Radix select over the finite entries of x in descending order. By count (kMass = false): the key
// of the element of rank `target` (1-based); by mass: the key where the running sum of
// exp(x - m) first reaches `target_mass`. Leaves sh.key, sh.need (ties at the key still wanted,
// count mode) or sh.above (mass strictly above the key), and sh.found.
template <bool kMass>
__device__ void radix_select(const float* x, int V, int target, double target_mass, float m, Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  int remaining = target;
  double above = 0.0;
  bool found = true;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      sh.hist_u[b] = 0;
      sh.hist_d[b] = 0.0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += kThreads) {
      float v = x[i];
      if (!(v > -INFINITY)) continue;
      uint32_t key = float_key(v);
      if ((key & mask) != prefix) continue;
      int b = (key >> shift) & 255;
      if constexpr (kMass) atomicAdd(&sh.hist_d[b], exp(static_cast<double>(v) - m));
      else atomicAdd(&sh.hist_u[b], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int digit = -1;
      if constexpr (kMass) {
        for (int b = 255; b >= 0; --b) {
          if (above + sh.hist_d[b] >= target_mass) { digit = b; break; }
          above += sh.hist_d[b];
        }
      } else {
        int cum = 0;
        for (int b = 255; b >= 0; --b) {
          if (cum + static_cast<int>(sh.hist_u[b]) >= remaining) { digit = b; remaining -= cum; break; }
          cum += sh.hist_u[b];
        }
      }
      if (digit < 0) { found = false; digit = 0; }
      sh.key = prefix | (static_cast<uint32_t>(digit) << shift);
      sh.found = found;
      sh.need = remaining;
      sh.above = above;
    }
    __syncthreads();
    prefix = sh.key;
    found = sh.found;
    remaining = sh.need;
    above = sh.above;
    mask |= 255u << shift;
    if (!found) break;
  }
}

// Keeps entries with key > sh.key and the first `keep_ties` ties (in token order); the rest -> -inf.
__device__ void keep_top(float* x, int V, uint32_t key, long long keep_ties, Shared& sh) {
  const int chunk = (V + kThreads - 1) / kThreads;
  const int b = threadIdx.x * chunk, e = min(V, b + chunk);
  long long ties = 0;
  for (int i = b; i < e; ++i)
    if (x[i] > -INFINITY && float_key(x[i]) == key) ++ties;
  long long rank = block_exclusive_scan(ties, sh);
  for (int i = b; i < e; ++i) {
    float v = x[i];
    if (!(v > -INFINITY)) continue;
    uint32_t k = float_key(v);
    if (k > key) continue;
    if (k == key && rank++ < keep_ties) continue;
    x[i] = -INFINITY;
  }
  __syncthreads();
}

__device__ long long count_key(const float* x, int V, uint32_t key, Shared& sh) {
  long long c = 0;
  for (int i = threadIdx.x; i < V; i += kThreads)
    if (x[i] > -INFINITY && float_key(x[i]) == key) ++c;
  return static_cast<long long>(block_sum_d(static_cast<double>(c), sh) + 0.5);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sampling_kernel(const T* __restrict__ logits, int V, const SampleRowParams* __restrict__ rows,
                    const PenaltyEntry* __restrict__ penalties, const int32_t* __restrict__ bans,
                    float* __restrict__ work, SampleOutput* __restrict__ out, int32_t* __restrict__ top_ids,
                    float* __restrict__ top_lps) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const SampleRowParams p = rows[row];
  const T* raw = logits + row * V;
  float* x = work + row * V;

  for (int i = threadIdx.x; i < V; i += kThreads) x[i] = to_f32(raw[i]);
  __syncthreads();
  // Penalties (entries are unique per token): repetition, then frequency, then presence.
  for (int e = p.pen_begin + threadIdx.x; e < p.pen_end; e += kThreads) {
    const PenaltyEntry pe = penalties[e];
    float v = x[pe.token];
    if (p.repetition_penalty != 1.0f) v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    if (pe.out_count > 0 && (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f)) {
      v -= p.frequency_penalty * static_cast<float>(pe.out_count);
      v -= p.presence_penalty;
    }
    x[pe.token] = v;
  }
  __syncthreads();
  for (int e = p.ban_begin + threadIdx.x; e < p.ban_end; e += kThreads) x[bans[e]] = -INFINITY;
  __syncthreads();

  float best_v;
  int token;
  block_argmax(x, V, sh, &best_v, &token);
  const bool greedy = p.temperature < kGreedyTemperature || p.top_k == 1;
  if (!greedy) {
    for (int i = threadIdx.x; i < V; i += kThreads) x[i] = x[i] / p.temperature;
    __syncthreads();
    block_argmax(x, V, sh, &best_v, &token);
    const float m = best_v;
    if (m > -INFINITY) {
      if (p.top_k > 0 && p.top_k < V) {
        radix_select<false>(x, V, p.top_k, 0.0, m, sh);
        if (sh.found) keep_top(x, V, sh.key, sh.need, sh);
      }
      if (p.top_p < 1.0f) {
        double total = 0.0;
        for (int i = threadIdx.x; i < V; i += kThreads)
          if (x[i] > -INFINITY) total += exp(static_cast<double>(x[i]) - m);
        total = block_sum_d(total, sh);
        radix_select<true>(x, V, 0, static_cast<double>(p.top_p) * total, m, sh);
        if (sh.found) {
          const uint32_t key = sh.key;
          const double above = sh.above;
          const long long ties = count_key(x, V, key, sh);
          if (threadIdx.x == 0) {
            // Same walk as the reference: add the tied tokens one at a time until top_p is reached.
            uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
            double w = exp(static_cast<double>(__uint_as_float(u)) - m);
            double cum = above / total;
            long long n = 0;
            while (n < ties) {
              cum += w / total;
              ++n;
              if (cum >= static_cast<double>(p.top_p)) break;
            }
            sh.need = static_cast<int>(n);
          }
          __syncthreads();
          keep_top(x, V, key, sh.need, sh);
        }
      }
      // min_p floor, then the inverse-CDF draw in token order.
      const double floor_w = static_cast<double>(p.min_p);
      const int chunk = (V + kThreads - 1) / kThreads;
      const int b = threadIdx.x * chunk, e = min(V, b + chunk);
      double part = 0.0;
      for (int i = b; i < e; ++i) {
        double w = exp(static_cast<double>(x[i]) - m);
        if (w >= floor_w && w != 0.0) part += w;
      }
      // Exclusive scan of the chunk sums, in thread (= token) order.
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
      double incl = part;
      for (int o = 1; o < 32; o <<= 1) {
        double n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
      }
      __syncthreads();
      if (lane == 31) sh.red_d[warp] = incl;
      __syncthreads();
      if (warp == 0) {
        double w = sh.red_d[lane], wi = w;
        for (int o = 1; o < 32; o <<= 1) {
          double n = __shfl_up_sync(0xffffffffu, wi, o);
          if (lane >= o) wi += n;
        }
        sh.red_d[lane] = wi - w;
        if (lane == 31) sh.above = wi;  // total
      }
      __syncthreads();
      const double total = sh.above;
      const double target = p.uniform * total;
      double cum = sh.red_d[warp] + incl - part;
      int picked = -1, last = -1;
      for (int i = b; i < e; ++i) {
        double w = exp(static_cast<double>(x[i]) - m);
        if (w < floor_w || w == 0.0) continue;
        last = i;
        cum += w;
        if (cum > target) { picked = i; break; }
      }
      // Lowest picked id wins (the first chunk whose running sum passes the target); if rounding
      // left none, the last candidate in token order.
      if (threadIdx.x == 0) { sh.red_i[1] = INT_MAX; sh.red_i[2] = -1; }
      __syncthreads();
      if (picked >= 0) atomicMin(&sh.red_i[1], picked);
      if (last >= 0) atomicMax(&sh.red_i[2], last);
      __syncthreads();
      token = sh.red_i[1] != INT_MAX ? sh.red_i[1] : (sh.red_i[2] >= 0 ? sh.red_i[2] : token);
    }
  }

  // Logprobs under the raw (unpenalised, untempered) distribution.
  float rm = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kThreads) rm = fmaxf(rm, to_f32(raw[i]));
  __syncthreads();
  rm = block_max(rm, sh.red_f);
  double se = 0.0;
  if (rm > -INFINITY)
    for (int i = threadIdx.x; i < V; i += kThreads) se += exp(static_cast<double>(to_f32(raw[i])) - rm);
  se = block_sum_d(se, sh);
  const double log_z = rm > -INFINITY ? static_cast<double>(rm) + log(se) : static_cast<double>(rm);
  if (threadIdx.x == 0) {
    out[row].token = token;
    out[row].logprob = static_cast<float>(static_cast<double>(to_f32(raw[token])) - log_z);
  }
  if (p.num_logprobs > 0) {
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += kThreads) x[i] = to_f32(raw[i]);
    __syncthreads();
    const int k = min(p.num_logprobs, min(V, kMaxTopLogprobs));
    for (int j = 0; j < k; ++j) {
      float v;
      int id;
      block_argmax(x, V, sh, &v, &id);
      __syncthreads();
      if (threadIdx.x == 0) {
        top_ids[row * kMaxTopLogprobs + j] = id;
        top_lps[row * kMaxTopLogprobs + j] = static_cast<float>(static_cast<double>(v) - log_z);
        x[id] = NAN;  // taken
      }
      __syncthreads();
    }
  }
}

}  // namespace

cudaError_t launch_sampling(const void* logits, DType dtype, int64_t N, int64_t V, const SampleRowParams* rows,
                            const PenaltyEntry* penalties, const int32_t* bans, float* work, SampleOutput* out,
                            int32_t* top_ids, float* top_lps, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (V <= 0 || V > INT_MAX) return cudaErrorInvalidValue;
  EMBER_DISPATCH_FLOAT(dtype, sampling_kernel<scalar_t><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
                                  static_cast<const scalar_t*>(logits), static_cast<int>(V), rows, penalties, bans,
                                  work, out, top_ids, top_lps));
  return cudaGetLastError();
}

}  // namespace ember::cuda
