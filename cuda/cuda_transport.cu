// Both transports run asynchronously: a chunk's copy waits on an event recorded after the sending
// stage's compute, runs on a copy stream (the receiver's pull stream between peers, the sender's
// then the receiver's through host staging), so that the sender's next chunk computes meanwhile,
// and the receiver's stream waits on the copy's event; a decode step's rows go through the flag
// kernels of kernels/handoff.cu on the compute streams. No host thread blocks on a transfer.
#include "cuda_transport.h"

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "cuda_check.h"
#include "kernels/launchers.h"
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

// Hand-offs up to this size (a few sequences' decode rows) go through the one-block flag kernels
// of handoff.cu on the two compute streams; larger ones (prefill chunks, decode micro-batches under
// load) through copy engines and events, which move them faster and overlap the sender's next work.
constexpr size_t kFlagBytes = size_t{64} << 10;

// Zeroed 64-bit words, one per slot, in a card's memory or in pinned host memory.
class SlotWords {
 public:
  SlotWords(int device, int num_slots, bool on_host) : device_(device), on_host_(on_host) {
    ScopedDevice g(device);
    const size_t bytes = sizeof(unsigned long long) * static_cast<size_t>(num_slots);
    void* p = nullptr;
    if (on_host) {
      EMBER_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped));
      std::memset(p, 0, bytes);
    } else {
      EMBER_CUDA_CHECK(cudaMalloc(&p, bytes));
      EMBER_CUDA_CHECK(cudaMemset(p, 0, bytes));
    }
    words_ = static_cast<unsigned long long*>(p);
  }
  ~SlotWords() {
    if (on_host_) {
      cudaFreeHost(words_);
    } else {
      cudaSetDevice(device_);
      cudaFree(words_);
    }
  }
  SlotWords(const SlotWords&) = delete;
  SlotWords& operator=(const SlotWords&) = delete;
  unsigned long long* at(int slot) const { return words_ + slot; }

 private:
  int device_;
  bool on_host_;
  unsigned long long* words_ = nullptr;
};

// The flag kernels' state per slot: hand-offs sent (the sender's card), the flag the sender raises
// (the receiver's card, or pinned host memory when the cards cannot reach each other) and hand-offs
// waited for (the receiver's card). Every flagged send is matched by one wait, so the counters
// agree without the host keeping any count.
struct HandoffFlags {
  HandoffFlags(int from, int to, int num_slots, bool flag_on_host)
      : sent(from, num_slots, false), flag(to, num_slots, flag_on_host), waited(to, num_slots, false) {}
  SlotWords sent, flag, waited;
};

// What both transports share: the flag hand-offs of small transfers (`flag_on_host`: the flag in
// pinned host memory, for cards that cannot reach each other), and for chunks the event recorded
// after the sender's compute and the receiving card's stream that lands them, with one event per
// slot that the receiver's compute stream waits on.
class CudaTransportBase : public Transport {
 public:
  CudaTransportBase(CudaBackend& from, CudaBackend& to, int num_slots, bool flag_on_host)
      : from_(from), to_(to), compute_done_(make_event(from.device())), land_stream_(make_stream(to.device())),
        flags_(from.device(), to.device(), num_slots, flag_on_host) {
    for (int i = 0; i < num_slots; ++i) landed_.push_back(make_event(to.device()));
  }
  ~CudaTransportBase() override {
    cudaSetDevice(to_.device());
    cudaStreamSynchronize(land_stream_);
    for (cudaEvent_t e : landed_) cudaEventDestroy(e);
    cudaStreamDestroy(land_stream_);
    cudaSetDevice(from_.device());
    cudaEventDestroy(compute_done_);
  }
  bool capturable(size_t bytes) const override { return bytes <= kFlagBytes; }
  void wait_arrival(int slot, void* dst, size_t bytes) override {
    if (bytes <= kFlagBytes) return flag_wait(slot, staged_rows(slot), dst, bytes);
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(to_.native_stream()), landed_.at(slot), 0));
  }
  void synchronize() override {  // the flag hand-offs' first leg runs on the sender's compute stream
    {
      ScopedDevice g(from_.device());
      EMBER_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(from_.native_stream())));
    }
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamSynchronize(land_stream_));
  }

 protected:
  // Where a flag hand-off's rows wait for the receiver to copy them in (null: already in place).
  virtual const void* staged_rows(int slot) const = 0;
  // The sender's flag kernel: `bytes` from src to `to` (the receiver's buffer, or staging).
  void flag_send(const void* src, void* to, size_t bytes, int slot) {
    ScopedDevice g(from_.device());
    EMBER_CUDA_CHECK(cuda::launch_handoff_send(src, to, bytes, flags_.sent.at(slot), flags_.flag.at(slot),
                                               static_cast<cudaStream_t>(from_.native_stream())));
  }
  // The receiver's flag kernel; with `staged`, it also copies `bytes` from there to dst.
  void flag_wait(int slot, const void* staged, void* dst, size_t bytes) {
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cuda::launch_handoff_wait(flags_.flag.at(slot), flags_.waited.at(slot), staged, dst, bytes,
                                               static_cast<cudaStream_t>(to_.native_stream())));
  }
  // Records compute_done_ after everything issued so far on the sender's compute stream.
  void record_compute_done() {
    ScopedDevice g(from_.device());
    EMBER_CUDA_CHECK(cudaEventRecord(compute_done_, static_cast<cudaStream_t>(from_.native_stream())));
  }
  CudaBackend& from_;
  CudaBackend& to_;
  cudaEvent_t compute_done_;
  cudaStream_t land_stream_;  // on the receiving card: a chunk's last leg
  std::vector<cudaEvent_t> landed_;
  HandoffFlags flags_;
};

// A chunk's activations are pulled by the receiving card: its land stream waits for the sender's
// compute, copies over the link and records the slot's landed event. (Pushed from the sender's
// copy stream, with the receiver's compute stream waiting on the sender's event, a two-stage
// prefill ran ~1 % slower on H100s.) A decode step's rows go through the flag kernels.
class PeerTransport final : public CudaTransportBase {
 public:
  PeerTransport(CudaBackend& from, CudaBackend& to, int num_slots)
      : CudaTransportBase(from, to, num_slots, /*flag_on_host=*/false) {
    if (from.device() == to.device()) return;  // two stages on one card: a plain device copy
    enable_peer(from.device(), to.device());
    enable_peer(to.device(), from.device());
  }
  std::string name() const override { return "peer"; }
  void send(const void* src, void* dst, size_t bytes, int slot) override {
    if (bytes <= kFlagBytes) return flag_send(src, dst, bytes, slot);
    record_compute_done();
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(land_stream_, compute_done_, 0));
    EMBER_CUDA_CHECK(cudaMemcpyPeerAsync(dst, to_.device(), src, from_.device(), bytes, land_stream_));
    EMBER_CUDA_CHECK(cudaEventRecord(landed_.at(slot), land_stream_));
  }

 private:
  const void* staged_rows(int /*slot*/) const override { return nullptr; }
  static void enable_peer(int device, int peer) {
    ScopedDevice g(device);
    cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
    else EMBER_CUDA_CHECK(e);
  }
};

// Device -> pinned host buffer of the slot -> device. A chunk: the first leg runs on a copy stream
// of the sending card, the second on the receiving card's land stream, ordered after the first by
// an event; neither blocks a host thread. A decode step's rows: the sender's flag kernel writes
// them into the staging buffer and the receiver's copies them in once the flag (in pinned host
// memory too) is up.
class PinnedHostTransport final : public CudaTransportBase {
 public:
  PinnedHostTransport(CudaBackend& from, CudaBackend& to, size_t max_bytes, int num_slots)
      : CudaTransportBase(from, to, num_slots, /*flag_on_host=*/true), copy_stream_(make_stream(from.device())),
        max_bytes_(max_bytes) {
    for (int i = 0; i < num_slots; ++i) {
      void* p = nullptr;
      EMBER_CUDA_CHECK(cudaHostAlloc(&p, max_bytes, cudaHostAllocPortable | cudaHostAllocMapped));
      staging_.push_back(p);
      staged_.push_back(make_event(from.device()));
    }
  }
  ~PinnedHostTransport() override {
    cudaSetDevice(from_.device());
    cudaStreamSynchronize(copy_stream_);
    cudaSetDevice(to_.device());
    cudaStreamSynchronize(land_stream_);  // its second legs read the staging buffers
    for (cudaEvent_t e : staged_) cudaEventDestroy(e);
    for (void* p : staging_) cudaFreeHost(p);
    cudaSetDevice(from_.device());
    cudaStreamDestroy(copy_stream_);
  }
  std::string name() const override { return "host"; }
  void send(const void* src, void* dst, size_t bytes, int slot) override {
    if (bytes > max_bytes_)
      throw EngineError("host transport: " + std::to_string(bytes) + " bytes exceed the staging buffer");
    if (bytes <= kFlagBytes) return flag_send(src, staging_.at(slot), bytes, slot);
    record_compute_done();
    {
      ScopedDevice g(from_.device());
      EMBER_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, compute_done_, 0));
      EMBER_CUDA_CHECK(cudaMemcpyAsync(staging_.at(slot), src, bytes, cudaMemcpyDeviceToHost, copy_stream_));
      EMBER_CUDA_CHECK(cudaEventRecord(staged_[slot], copy_stream_));
    }
    ScopedDevice g(to_.device());
    EMBER_CUDA_CHECK(cudaStreamWaitEvent(land_stream_, staged_[slot], 0));
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dst, staging_[slot], bytes, cudaMemcpyHostToDevice, land_stream_));
    EMBER_CUDA_CHECK(cudaEventRecord(landed_.at(slot), land_stream_));
  }
  void synchronize() override {
    CudaTransportBase::synchronize();
    ScopedDevice g(from_.device());
    EMBER_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
  }

 private:
  const void* staged_rows(int slot) const override { return staging_.at(slot); }
  cudaStream_t copy_stream_;  // on the sending card: a chunk's first leg
  size_t max_bytes_;
  std::vector<void*> staging_;
  std::vector<cudaEvent_t> staged_;
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

namespace {
// Each card can reach the other's memory (the receiver pulls chunks, the sender pushes rows).
bool can_reach(CudaBackend& from, CudaBackend& to) {
  if (from.device() == to.device()) return true;
  int there = 0, back = 0;
  EMBER_CUDA_CHECK(cudaDeviceCanAccessPeer(&there, from.device(), to.device()));
  EMBER_CUDA_CHECK(cudaDeviceCanAccessPeer(&back, to.device(), from.device()));
  return there && back;
}
}  // namespace

bool cuda_transport_is_peer(CudaBackend& from, CudaBackend& to, const std::string& mode) {
  return mode != "host" && can_reach(from, to);
}

std::unique_ptr<Transport> make_cuda_transport(CudaBackend& from, CudaBackend& to, const std::string& mode,
                                               size_t max_bytes, int num_slots) {
  const bool peer = cuda_transport_is_peer(from, to, mode);
  if (mode == "peer" && !peer)
    throw InvalidArgument("transport=\"peer\" but cuda:" + std::to_string(from.device()) + " cannot access cuda:" +
                          std::to_string(to.device()) + " directly; use \"host\" or \"auto\"");
  if (peer) return std::make_unique<PeerTransport>(from, to, num_slots);
  return std::make_unique<PinnedHostTransport>(from, to, max_bytes, num_slots);
}

std::unique_ptr<SlotFence> make_cuda_slot_fence(CudaBackend& first, CudaBackend& last, int num_slots) {
  return std::make_unique<CudaSlotFence>(first, last, num_slots);
}

}  // namespace ember
