// Greedy sampling without penalties, bans or top logprobs (the common decode case) split over many
// blocks per row: the general sampler's one block per row took ~60 us for a 128k vocabulary.
// Same result as sampling.cu: highest value, lowest id on ties, NaN skipped; raw logprob.
#include <climits>

#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPartElems = 4096;  // logits per partial block

struct Partial {
  float m;    // max (NaN ignored)
  float s;    // sum of exp(x - m) over the part
  float bv;   // best value and its id
  int bi;
  int nan;    // a NaN was seen: the raw normaliser is NaN, as in the general sampler
};
constexpr Partial kEmpty{-INFINITY, 0.0f, -INFINITY, INT_MAX, 0};

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

// Folds (m2, s2) into the running (m, s) of sum exp(x - m).
__device__ __forceinline__ void merge_sum(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float mn = fmaxf(m, m2);
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

__device__ __forceinline__ void merge(Partial& a, const Partial& b) {
  merge_sum(a.m, a.s, b.m, b.s);
  a.nan |= b.nan;
  if (better(b.bv, b.bi, a.bv, a.bi)) {
    a.bv = b.bv;
    a.bi = b.bi;
  }
}

__device__ Partial warp_merge(Partial p) {
  for (int o = 16; o > 0; o >>= 1) {
    Partial q;
    q.m = __shfl_xor_sync(0xffffffffu, p.m, o);
    q.s = __shfl_xor_sync(0xffffffffu, p.s, o);
    q.bv = __shfl_xor_sync(0xffffffffu, p.bv, o);
    q.bi = __shfl_xor_sync(0xffffffffu, p.bi, o);
    q.nan = __shfl_xor_sync(0xffffffffu, p.nan, o);
    merge(p, q);
  }
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    greedy_partial_kernel(const T* __restrict__ logits, int V, Partial* __restrict__ parts) {
  __shared__ Partial warps[kThreads / 32];
  const int64_t row = blockIdx.y;
  const int begin = blockIdx.x * kPartElems, end = min(V, begin + kPartElems);
  const T* x = logits + row * V;
  Partial p = kEmpty;
  for (int i = begin + threadIdx.x; i < end; i += kThreads) {
    const float v = to_f32(x[i]);
    if (isnan(v)) {
      p.nan = 1;
      continue;
    }
    if (better(v, i, p.bv, p.bi)) {
      p.bv = v;
      p.bi = i;
    }
    if (v != -INFINITY) merge_sum(p.m, p.s, v, 1.0f);
  }
  p = warp_merge(p);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = p;
  __syncthreads();
  if (warp == 0) {
    p = lane < kThreads / 32 ? warps[lane] : kEmpty;
    p = warp_merge(p);
    if (lane == 0) parts[row * gridDim.x + blockIdx.x] = p;
  }
}

template <typename T>
__global__ void greedy_finish_kernel(const T* __restrict__ logits, int V, int nparts,
                                     const Partial* __restrict__ parts, SampleOutput* __restrict__ out) {
  const int64_t row = blockIdx.x;
  Partial p = kEmpty;
  for (int i = threadIdx.x; i < nparts; i += 32) merge(p, parts[row * nparts + i]);
  p = warp_merge(p);
  if (threadIdx.x == 0) {
    // An all -inf (or all NaN) row gives id 0, like block_argmax in the general sampler.
    const int token = p.bi == INT_MAX ? 0 : p.bi;
    const double log_z = p.m == -INFINITY ? static_cast<double>(p.m)
                         : p.nan        ? static_cast<double>(NAN)
                                        : static_cast<double>(p.m) + log(static_cast<double>(p.s));
    out[row].token = token;
    out[row].logprob = static_cast<float>(static_cast<double>(to_f32(logits[row * V + token])) - log_z);
  }
}

}  // namespace

size_t greedy_sampling_scratch_bytes(int64_t N, int64_t V) {
  return sizeof(Partial) * static_cast<size_t>(N) * static_cast<size_t>((V + kPartElems - 1) / kPartElems);
}

cudaError_t launch_greedy_sampling(const void* logits, DType dtype, int64_t N, int64_t V, void* scratch,
                                   SampleOutput* out, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (V <= 0 || V > INT_MAX || N > 65535) return cudaErrorInvalidValue;
  const int nparts = ceil_div(V, kPartElems);
  auto* parts = static_cast<Partial*>(scratch);
  EMBER_DISPATCH_FLOAT(dtype, {
    greedy_partial_kernel<scalar_t><<<dim3(nparts, static_cast<unsigned>(N)), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(logits), static_cast<int>(V), parts);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    greedy_finish_kernel<scalar_t><<<static_cast<unsigned>(N), 32, 0, stream>>>(
        static_cast<const scalar_t*>(logits), static_cast<int>(V), nparts, parts, out);
  });
  return cudaGetLastError();
}

}  // namespace ember::cuda
