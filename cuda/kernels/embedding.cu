// Token embedding lookup: one block per token copies its table row (same dtype in and out).
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, int64_t hidden,
                                 int64_t vocab, T* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  T* orow = out + t * hidden;
  if (id < 0 || id >= vocab) {  // the engine validates ids; never read outside the table
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) orow[i] = from_f32<T>(0.0f);
    return;
  }
  const T* row = table + static_cast<int64_t>(id) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) orow[i] = row[i];
}

}  // namespace

cudaError_t launch_embedding(const void* table, const int32_t* ids, int64_t n, int64_t hidden, int64_t vocab,
                             void* out, DType dtype, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, embedding_kernel<scalar_t><<<static_cast<unsigned>(n), 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(table), ids, hidden, vocab,
                                  static_cast<scalar_t*>(out)));
  return cudaGetLastError();
}

}  // namespace ember::cuda
