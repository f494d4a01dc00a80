// Both transports run asynchronously: the copy waits on an event recorded after the sending
// stage's compute, runs on a stream of its own (so the sender's next chunk computes meanwhile),
// and the receiver's stream waits on the copy's event. No host thread blocks on a transfer.
#include "cuda_transport.h"

#include <cuda_runtime.h>

#include <vector>

#include "cuda_check.h"
#include "ember/error.h"

namespace ember {
namespace {

class ScopedDevice {
 public:
  explicit ScopedDevice(int d) {
    cudaGetDevice(&prev_);
    EMBER_CUDA_CHECK(cudaSetDevice(d));
  }
  ~ScopedDevice() { cudaSetDevice(prev_); }

 private:
  int prev_ = 0;
};

cudaEvent_t make_event(int device) {
  ScopedDevice g(device);
  cudaEvent_t e = nullptr;
  EMBER_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

cudaStream_t make_stream(int device) {
  ScopedDevice g(device);
  cudaStream_t s = nullptr;
  EMBER_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

class CudaTransportBase : public Transport {
 public:
  CudaTransportBase(CudaBackend& from, CudaBackend& to, int num_slots)
      : from_(from), to_(to), compute_done_(make_event(from.device())), copy_stream_(make_stream(from.device())) {
    for (int i = 0; i < num_slots; ++i) arrived_.push_back(make_event(from.device()));
  }
  ~CudaTransportBase() override {
    cudaSetDevice(from_.device());
    cudaStreamSynchronize(copy_stream_);
    for (cudaEvent_t e : arrived_) cudaEventDestroy(e);
    cudaEventDestroy(compute_done_);
    cudaStreamDestroy(copy_stream_);
  }
  void wait_arrival(int slot) override {
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(to_.native_stream()), arrived_.at(slot), 0));
  }
  void synchronize() override {
    ScopedDevice g(from_.device());
    EMBER_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
  }

 protected:
  // The copy stream waits for everything issued so far on the sender's compute stream.
  void order_after_compute() {
    EMBER_CUDA_CHECK(cudaEventRecord(compute_done_, static_cast<cudaStream_t>(from_.native_stream())));
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, compute_done_, 0));
  }
  CudaBackend& from_;
  CudaBackend& to_;
  cudaEvent_t compute_done_;
  cudaStream_t copy_stream_;
  std::vector<cudaEvent_t> arrived_;
};

// A chunk's activations are pulled by the receiving card: a stream of its own waits for the
// sender's compute, copies over the link and records a local event that the receiver's compute
// stream waits on. (Pushed from the sender's copy stream, with the receiver's compute stream
// waiting on the sender's event, a two-stage prefill ran ~1 % slower on H100s.) A decode step's few
// rows are pushed, which was ~1 % faster per token there.
class PeerTransport final : public CudaTransportBase {
 public:
  PeerTransport(CudaBackend& from, CudaBackend& to, int num_slots)
      : CudaTransportBase(from, to, num_slots), pull_stream_(make_stream(to.device())) {
    for (int i = 0; i < num_slots; ++i) landed_.push_back(make_event(to.device()));
    pulled_.assign(static_cast<size_t>(num_slots), 0);
    if (from.device() == to.device()) return;  // two stages on one card: a plain device copy
    enable_peer(from.device(), to.device());
    enable_peer(to.device(), from.device());
  }
  ~PeerTransport() override {
    cudaSetDevice(to_.device());
    cudaStreamSynchronize(pull_stream_);
    for (cudaEvent_t e : landed_) cudaEventDestroy(e);
    cudaStreamDestroy(pull_stream_);
  }
  std::string name() const override { return "peer"; }
  void send(const void* src, void* dst, size_t bytes, int slot) override {
    pulled_.at(slot) = bytes > kPushBytes;
    if (!pulled_[slot]) {
      ScopedDevice g(from_.device());
      order_after_compute();
      EMBER_CUDA_CHECK(cudaMemcpyPeerAsync(dst, to_.device(), src, from_.device(), bytes, copy_stream_));
      EMBER_CUDA_CHECK(cudaEventRecord(arrived_[slot], copy_stream_));
      return;
    }
    {
      ScopedDevice g(from_.device());
      EMBER_CUDA_CHECK(cudaEventRecord(compute_done_, static_cast<cudaStream_t>(from_.native_stream())));
    }
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(pull_stream_, compute_done_, 0));
    EMBER_CUDA_CHECK(cudaMemcpyPeerAsync(dst, to_.device(), src, from_.device(), bytes, pull_stream_));
    EMBER_CUDA_CHECK(cudaEventRecord(landed_[slot], pull_stream_));
  }
  void wait_arrival(int slot) override {
    if (!pulled_.at(slot)) return CudaTransportBase::wait_arrival(slot);
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(to_.native_stream()), landed_[slot], 0));
  }
  void synchronize() override {
    CudaTransportBase::synchronize();
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamSynchronize(pull_stream_));
  }

 private:
  static constexpr size_t kPushBytes = size_t{256} << 10;
  static void enable_peer(int device, int peer) {
    ScopedDevice g(device);
    cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
    else EMBER_CUDA_CHECK(e);
  }
  cudaStream_t pull_stream_;
  std::vector<cudaEvent_t> landed_;
  // Per slot, how its last send went (1: pulled); written by the sender before it hands the batch
  // over, read by the receiver after.
  std::vector<char> pulled_;
};

// Device -> pinned host buffer of the slot -> device. The second leg runs on a copy stream of the
// receiving device, ordered after the first by an event; neither blocks a host thread.
class PinnedHostTransport final : public CudaTransportBase {
 public:
  PinnedHostTransport(CudaBackend& from, CudaBackend& to, size_t max_bytes, int num_slots)
      : CudaTransportBase(from, to, num_slots), to_stream_(make_stream(to.device())) {
    for (int i = 0; i < num_slots; ++i) {
      void* p = nullptr;
      EMBER_CUDA_CHECK(cudaHostAlloc(&p, max_bytes, cudaHostAllocPortable));
      staging_.push_back(p);
      staged_.push_back(make_event(from.device()));
      landed_.push_back(make_event(to.device()));
    }
    max_bytes_ = max_bytes;
  }
  ~PinnedHostTransport() override {
    cudaSetDevice(to_.device());
    cudaStreamSynchronize(to_stream_);
    for (cudaEvent_t e : landed_) cudaEventDestroy(e);
    cudaStreamDestroy(to_stream_);
    cudaSetDevice(from_.device());
    cudaStreamSynchronize(copy_stream_);
    for (cudaEvent_t e : staged_) cudaEventDestroy(e);
    for (void* p : staging_) cudaFreeHost(p);
  }
  std::string name() const override { return "host"; }
  void send(const void* src, void* dst, size_t bytes, int slot) override {
    if (bytes > max_bytes_)
      throw EngineError("host transport: " + std::to_string(bytes) + " bytes exceed the staging buffer");
    {
      ScopedDevice g(from_.device());
      order_after_compute();
      EMBER_CUDA_CHECK(cudaMemcpyAsync(staging_[slot], src, bytes, cudaMemcpyDeviceToHost, copy_stream_));
      EMBER_CUDA_CHECK(cudaEventRecord(staged_[slot], copy_stream_));
    }
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(to_stream_, staged_[slot], 0));
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dst, staging_[slot], bytes, cudaMemcpyHostToDevice, to_stream_));
    EMBER_CUDA_CHECK(cudaEventRecord(landed_[slot], to_stream_));
  }
  void wait_arrival(int slot) override {
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(to_.native_stream()), landed_.at(slot), 0));
  }
  void synchronize() override {
    CudaTransportBase::synchronize();
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamSynchronize(to_stream_));
  }

 private:
  cudaStream_t to_stream_;
  std::vector<void*> staging_;
  std::vector<cudaEvent_t> staged_;
  std::vector<cudaEvent_t> landed_;
  size_t max_bytes_ = 0;
};

class CudaSlotFence final : public SlotFence {
 public:
  CudaSlotFence(CudaBackend& first, CudaBackend& last, int num_slots) : first_(first), last_(last) {
    for (int i = 0; i < num_slots; ++i) done_.push_back(make_event(last.device()));
  }
  ~CudaSlotFence() override {
    for (cudaEvent_t e : done_) cudaEventDestroy(e);
  }
  void release(int slot) override {
    ScopedDevice g(last_.device());
    EMBER_CUDA_CHECK(cudaEventRecord(done_.at(slot), static_cast<cudaStream_t>(last_.native_stream())));
  }
  // A slot never released yet waits on an unrecorded event, which is complete.
  void acquire(int slot) override {
    ScopedDevice g(first_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(first_.native_stream()), done_.at(slot), 0));
  }

 private:
  CudaBackend& first_;
  CudaBackend& last_;
  std::vector<cudaEvent_t> done_;
};

}  // namespace

std::unique_ptr<Transport> make_cuda_transport(CudaBackend& from, CudaBackend& to, const std::string& mode,
                                               size_t max_bytes, int num_slots) {
  int can = 1;
  if (from.device() != to.device()) {  // the receiver reads the sender's memory
    int there = 0, back = 0;
    EMBER_CUDA_CHECK(cudaDeviceCanAccessPeer(&there, from.device(), to.device()));
    EMBER_CUDA_CHECK(cudaDeviceCanAccessPeer(&back, to.device(), from.device()));
    can = there && back;
  }
  if (mode == "host") return std::make_unique<PinnedHostTransport>(from, to, max_bytes, num_slots);
  if (mode == "peer" && !can)
    throw InvalidArgument("transport=\"peer\" but cuda:" + std::to_string(from.device()) + " cannot access cuda:" +
                          std::to_string(to.device()) + " directly; use \"host\" or \"auto\"");
  if (can) return std::make_unique<PeerTransport>(from, to, num_slots);
  return std::make_unique<PinnedHostTransport>(from, to, max_bytes, num_slots);
}

std::unique_ptr<SlotFence> make_cuda_slot_fence(CudaBackend& first, CudaBackend& last, int num_slots) {
  return std::make_unique<CudaSlotFence>(first, last, num_slots);
}

}  // namespace ember
