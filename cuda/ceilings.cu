// The GPU ceilings `ember bench` divides by: device copy bandwidth, the bf16 cuBLAS matmul rate,
// pinned host links and peer links, each timed with CUDA events on this card in the same run.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "ember/ceilings.h"
#include "ember/error.h"
#include "kernels/launchers.h"

namespace ember {
namespace {

// Makes `device` current for a scope and restores the device the thread had.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    EMBER_CUDA_CHECK(cudaGetDevice(&prev_));
    EMBER_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(prev_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
};

class DeviceBuffer {
 public:
  DeviceBuffer(int64_t bytes, const char* what) {
    const cudaError_t err = cudaMalloc(&ptr_, static_cast<size_t>(bytes));
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw EngineError(std::string("measure_ceilings: cannot allocate ") + std::to_string(bytes >> 20) + " MiB for " +
                        what + " (" + std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                        "); measure the ceilings before an engine reserves the card");
    }
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

class PinnedBuffer {
 public:
  explicit PinnedBuffer(int64_t bytes) { EMBER_CUDA_CHECK(cudaMallocHost(&ptr_, static_cast<size_t>(bytes))); }
  ~PinnedBuffer() { cudaFreeHost(ptr_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

class Stream {
 public:
  Stream() { EMBER_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class EventPair {
 public:
  EventPair() {
    EMBER_CUDA_CHECK(cudaEventCreate(&start_));
    EMBER_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventPair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream) {
    EMBER_CUBLAS_CHECK(cublasCreate(&h_));
    EMBER_CUBLAS_CHECK(cublasSetStream(h_, stream));
  }
  ~CublasHandle() { cublasDestroy(h_); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

// Median seconds of `reps` runs of `op` on `stream`, each between two events, after `warmup` runs.
double median_seconds(cudaStream_t stream, int warmup, int reps, const std::function<void()>& op) {
  for (int i = 0; i < warmup; ++i) op();
  EMBER_CUDA_CHECK(cudaStreamSynchronize(stream));
  EventPair ev;
  std::vector<double> secs;
  for (int i = 0; i < reps; ++i) {
    EMBER_CUDA_CHECK(cudaEventRecord(ev.start(), stream));
    op();
    EMBER_CUDA_CHECK(cudaEventRecord(ev.stop(), stream));
    EMBER_CUDA_CHECK(cudaEventSynchronize(ev.stop()));
    float ms = 0;
    EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start(), ev.stop()));
    secs.push_back(ms * 1e-3);
  }
  std::sort(secs.begin(), secs.end());
  return secs[secs.size() / 2];
}

void fill(void* x, int64_t bytes, uint64_t seed, cudaStream_t stream) {
  EMBER_CUDA_CHECK_OP("fill_random", cuda::launch_fill_random(x, bytes / 2, seed, 1.0f, 0.0f, DType::BF16, stream));
}

double device_copy(int64_t bytes, int reps, cudaStream_t stream) {
  DeviceBuffer src(bytes, "the copy source"), dst(bytes, "the copy destination");
  fill(src.get(), bytes, 11, stream);
  const double s = median_seconds(stream, 2, reps, [&] {
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream));
  });
  return 2.0 * static_cast<double>(bytes) / s;  // read + written
}

double bf16_matmul(int64_t n, int reps, cudaStream_t stream) {
  const int64_t bytes = n * n * 2;
  DeviceBuffer a(bytes, "matmul A"), b(bytes, "matmul B"), c(bytes, "matmul C");
  fill(a.get(), bytes, 21, stream);  // random data: zeros can run faster than real operands
  fill(b.get(), bytes, 22, stream);
  CublasHandle handle(stream);
  const float alpha = 1.0f, beta = 0.0f;
  const int dim = static_cast<int>(n);
  const double s = median_seconds(stream, 3, reps, [&] {
    EMBER_CUBLAS_CHECK(cublasGemmEx(handle.get(), CUBLAS_OP_N, CUBLAS_OP_N, dim, dim, dim, &alpha, a.get(), CUDA_R_16BF,
                                    dim, b.get(), CUDA_R_16BF, dim, &beta, c.get(), CUDA_R_16BF, dim,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s;
}

void host_links(int64_t bytes, int reps, cudaStream_t stream, Ceilings* c) {
  DeviceBuffer dev(bytes, "the host-copy buffer");
  PinnedBuffer host(bytes);
  fill(dev.get(), bytes, 31, stream);
  const auto n = static_cast<size_t>(bytes);
  const double d2h = median_seconds(stream, 2, reps, [&] {
    EMBER_CUDA_CHECK(cudaMemcpyAsync(host.get(), dev.get(), n, cudaMemcpyDeviceToHost, stream));
  });
  const double h2d = median_seconds(stream, 2, reps, [&] {
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dev.get(), host.get(), n, cudaMemcpyHostToDevice, stream));
  });
  c->host_copy_bytes = bytes;
  c->d2h_bytes_per_s = static_cast<double>(bytes) / d2h;
  c->h2d_bytes_per_s = static_cast<double>(bytes) / h2d;
}

// Peer access is a property of the source device's context; this toggles it and puts it back.
bool set_peer_access(int src, int dst, bool enable) {
  DeviceScope scope(src);
  const cudaError_t err = enable ? cudaDeviceEnablePeerAccess(dst, 0) : cudaDeviceDisablePeerAccess(dst);
  if (err == cudaErrorPeerAccessAlreadyEnabled || err == cudaErrorPeerAccessNotEnabled) {
    cudaGetLastError();
    return false;  // it already was in the asked-for state
  }
  EMBER_CUDA_CHECK(err);
  return true;
}

PeerCopyCeiling peer_link(int src, int dst, int64_t bytes, int reps) {
  PeerCopyCeiling p;
  p.src = src;
  p.dst = dst;
  int can = 0;
  EMBER_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, src, dst));
  p.can_access_peer = can != 0;

  std::unique_ptr<DeviceBuffer> dst_buf;
  {
    DeviceScope scope(dst);
    dst_buf = std::make_unique<DeviceBuffer>(bytes, "the peer-copy destination");
  }
  DeviceScope scope(src);
  DeviceBuffer src_buf(bytes, "the peer-copy source");
  Stream stream;
  fill(src_buf.get(), bytes, 41, stream.get());
  auto copy = [&] {
    EMBER_CUDA_CHECK(cudaMemcpyPeerAsync(dst_buf->get(), dst, src_buf.get(), src, static_cast<size_t>(bytes),
                                         stream.get()));
  };
  const bool was_enabled = p.can_access_peer && set_peer_access(src, dst, false);
  p.bytes_per_s_without_access = static_cast<double>(bytes) / median_seconds(stream.get(), 2, reps, copy);
  if (p.can_access_peer) {
    const bool changed = set_peer_access(src, dst, true);
    p.bytes_per_s_with_access = static_cast<double>(bytes) / median_seconds(stream.get(), 2, reps, copy);
    if (changed && !was_enabled) set_peer_access(src, dst, false);
  }
  {
    DeviceScope dscope(dst);
    dst_buf.reset();
  }
  return p;
}

}  // namespace

Ceilings measure_cuda_ceilings(int device, int64_t copy_bytes, int64_t matmul_size, int repetitions) {
  int count = 0;
  EMBER_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw InvalidArgument("measure_ceilings: CUDA device " + std::to_string(device) + " does not exist (" +
                          std::to_string(count) + " visible)");
  if (copy_bytes < (int64_t{1} << 20) || matmul_size < 256 || matmul_size % 8 != 0 || repetitions < 1)
    throw InvalidArgument("measure_ceilings: need copy_bytes >= 1 MiB, matmul_size >= 256 and a multiple of 8, "
                          "repetitions >= 1");
  DeviceScope scope(device);
  cudaDeviceProp prop{};
  EMBER_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));

  Ceilings c;
  c.device = "cuda:" + std::to_string(device);
  c.device_name = prop.name;
  c.device_count = count;
  c.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  c.repetitions = repetitions;
  {
    Stream stream;
    c.copy_buffer_bytes = copy_bytes;
    c.copy_bytes_per_s = device_copy(copy_bytes, repetitions, stream.get());
    c.matmul_size = matmul_size;
    c.matmul_flops_per_s = bf16_matmul(matmul_size, repetitions, stream.get());
    host_links(std::min<int64_t>(copy_bytes, int64_t{256} << 20), repetitions, stream.get(), &c);
  }
  if (count >= 2) {
    const int other = (device + 1) % count;
    c.peer.push_back(peer_link(device, other, std::min<int64_t>(copy_bytes, int64_t{256} << 20), repetitions));
  }
  return c;
}

}  // namespace ember
