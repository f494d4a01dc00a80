// The hardware ceilings a benchmark is judged against, measured on the machine itself in the same
// run (copy bandwidth, bf16 matmul rate, host and peer links) rather than taken from datasheets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ember {

// A copy from one GPU to another through cudaMemcpyPeerAsync; bytes moved per second (each byte
// counted once: read on src, written on dst). 0 where that mode could not be measured.
struct PeerCopyCeiling {
  int src = 0;
  int dst = 0;
  bool can_access_peer = false;           // cudaDeviceCanAccessPeer(src -> dst)
  double bytes_per_s_without_access = 0;  // peer access disabled: the driver stages the copy
  double bytes_per_s_with_access = 0;     // after cudaDeviceEnablePeerAccess; 0 if not possible
};

struct Ceilings {
  std::string device;       // "cpu" or "cuda:N"
  std::string device_name;  // the CPU model or the GPU's name
  int threads = 0;          // CPU: threads that ran the copy
  int device_count = 0;     // CUDA devices visible to the process
  int64_t total_memory_bytes = 0;
  int repetitions = 0;      // timed runs behind each median

  // Device memory copy, bytes read + bytes written per second (median).
  int64_t copy_buffer_bytes = 0;
  double copy_bytes_per_s = 0;

  // Dense bf16 GEMM (fp32 accumulation) of matmul_size^3, FLOP per second (median); 0 on the CPU.
  int64_t matmul_size = 0;
  double matmul_flops_per_s = 0;

  // Pinned host memory <-> device, bytes moved per second (median); 0 on the CPU.
  int64_t host_copy_bytes = 0;
  double h2d_bytes_per_s = 0;
  double d2h_bytes_per_s = 0;

  std::vector<PeerCopyCeiling> peer;  // device -> the next visible device, when there are >= 2
};

// memcpy of a buffer far larger than the caches, split over `threads` OpenMP threads (0 = all);
// median of `repetitions` runs after a warm-up.
Ceilings measure_cpu_ceilings(int64_t buffer_bytes = int64_t{256} << 20, int threads = 0, int repetitions = 10);

#ifdef EMBER_HAVE_CUDA
// Measures `device` (and its link to the next device). Needs about 2.5 GiB free on the device, so
// run it before an engine reserves the card. Restores the calling thread's current device and the
// peer-access state it found. Throws EngineError on any CUDA or cuBLAS failure.
Ceilings measure_cuda_ceilings(int device, int64_t copy_bytes = int64_t{1} << 30, int64_t matmul_size = 8192,
                               int repetitions = 20);
#endif

}  // namespace ember
