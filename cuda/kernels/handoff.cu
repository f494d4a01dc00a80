// Small stage-to-stage hand-offs (a decode step's rows) without copy engines or cross-device
// events, which cost ~12 us a hop on H200s: the sender's kernel stores the rows straight into the
// receiver's memory (or pinned host memory) and then raises a flag; a one-block kernel on the
// receiver's stream spins on the flag and, when staged through the host, copies the rows in. The
// hand-off numbers live in device counters (one per side), so that both kernels take pointers only
// and a stage can capture them into its CUDA graphs.
#include "kernels/launchers.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 512;
// A wait that outlives this has lost its sender (a bug; a stage item takes seconds at most): fail
// loudly rather than hang.
constexpr unsigned long long kWaitLimitNs = 600ull * 1000 * 1000 * 1000;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Every thread copies its share and fences at system scope; once all have, thread 0 takes the next
// hand-off number from the sender's counter and publishes it in the flag.
__global__ void __launch_bounds__(kThreads)
    handoff_send_kernel(const uint4* __restrict__ src, uint4* dst, size_t n16, const unsigned char* src_tail,
                        unsigned char* dst_tail, int tail, unsigned long long* sent, volatile unsigned long long* flag) {
  for (size_t i = threadIdx.x; i < n16; i += kThreads) dst[i] = src[i];
  if (static_cast<int>(threadIdx.x) < tail) dst_tail[threadIdx.x] = src_tail[threadIdx.x];
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned long long seq = *sent + 1;
    *sent = seq;
    *flag = seq;
  }
}

// Thread 0 takes the next number from the receiver's counter and spins until the flag reaches it.
__global__ void __launch_bounds__(kThreads)
    handoff_wait_kernel(const volatile unsigned long long* flag, unsigned long long* waited, const uint4* staged,
                        uint4* __restrict__ dst, size_t n16, const unsigned char* staged_tail,
                        unsigned char* dst_tail, int tail) {
  if (threadIdx.x == 0) {
    const unsigned long long want = *waited + 1;
    const unsigned long long start = global_ns();
    unsigned long long seen;
    while ((seen = *flag) < want) {
      if (global_ns() - start > kWaitLimitNs) __trap();
    }
    // Past `want`: a hand-off was sent and never waited for, so these rows may be a later
    // batch's. The counters cannot recover; fail loudly rather than compute on them.
    if (seen != want) __trap();
    *waited = want;
    __threadfence_system();
  }
  __syncthreads();
  if (!staged) return;
  for (size_t i = threadIdx.x; i < n16; i += kThreads) dst[i] = __ldcv(staged + i);
  if (static_cast<int>(threadIdx.x) < tail)
    dst_tail[threadIdx.x] = *(reinterpret_cast<const volatile unsigned char*>(staged_tail) + threadIdx.x);
}

bool misaligned(const void* a, const void* b) {
  return (reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) % 16 != 0;
}

}  // namespace

cudaError_t launch_handoff_send(const void* src, void* dst, size_t bytes, unsigned long long* sent,
                                unsigned long long* flag, cudaStream_t stream) {
  if (!src || !dst || !sent || !flag || misaligned(src, dst)) return cudaErrorInvalidValue;
  const size_t n16 = bytes / 16;
  handoff_send_kernel<<<1, kThreads, 0, stream>>>(
      static_cast<const uint4*>(src), static_cast<uint4*>(dst), n16, static_cast<const unsigned char*>(src) + n16 * 16,
      static_cast<unsigned char*>(dst) + n16 * 16, static_cast<int>(bytes % 16), sent, flag);
  return cudaGetLastError();
}

cudaError_t launch_handoff_wait(const unsigned long long* flag, unsigned long long* waited, const void* staged,
                                void* dst, size_t bytes, cudaStream_t stream) {
  if (!flag || !waited || (staged && (!dst || misaligned(staged, dst)))) return cudaErrorInvalidValue;
  const size_t n16 = staged ? bytes / 16 : 0;
  const int tail = staged ? static_cast<int>(bytes % 16) : 0;
  handoff_wait_kernel<<<1, kThreads, 0, stream>>>(
      flag, waited, static_cast<const uint4*>(staged), static_cast<uint4*>(dst), n16,
      staged ? static_cast<const unsigned char*>(staged) + n16 * 16 : nullptr,
      staged ? static_cast<unsigned char*>(dst) + n16 * 16 : nullptr, tail);
  return cudaGetLastError();
}

}  // namespace ember::cuda
