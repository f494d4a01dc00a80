// Writes each token's K and V rows into its slot of the paged cache (slot_mapping from the step);
// a negative slot marks a padding token and is skipped.
#include "kernels/common.cuh"
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

template <typename T>
__global__ void kv_write_kernel(const T* __restrict__ k, const T* __restrict__ v, const int32_t* __restrict__ slots,
                                T* __restrict__ k_cache, T* __restrict__ v_cache, int64_t row_elems) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  for (int64_t i = threadIdx.x; i < row_elems; i += blockDim.x) {
    k_cache[slot * row_elems + i] = k[t * row_elems + i];
    v_cache[slot * row_elems + i] = v[t * row_elems + i];
  }
}

}  // namespace

cudaError_t launch_kv_write(const void* k, const void* v, const int32_t* slot_mapping, void* k_cache, void* v_cache,
                            int64_t T, int64_t row_elems, DType dtype, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  EMBER_DISPATCH_FLOAT(dtype, kv_write_kernel<scalar_t><<<static_cast<unsigned>(T), 256, 0, stream>>>(
                                  static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v), slot_mapping,
                                  static_cast<scalar_t*>(k_cache), static_cast<scalar_t*>(v_cache), row_elems));
  return cudaGetLastError();
}

}  // namespace ember::cuda
