// Moves a batch's hidden states from one stage's memory to the next stage's: plain host staging
// between any two backends, peer copies or pinned host staging between CUDA stages.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ember/backend.h"

namespace ember {

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string name() const = 0;
  // Starts copying `bytes` from `src` (the sending stage's memory, written by work already issued
  // on its backend) to `dst` (the receiving stage's buffer for pipeline slot `slot`). May return
  // before the copy is done; the receiver calls wait_arrival(slot, dst, bytes) before it reads `dst`.
  virtual void send(const void* src, void* dst, size_t bytes, int slot) = 0;
  // Orders the receiver's next work after the arrival of `slot`'s data (a stream wait on GPUs);
  // `dst` and `bytes` are the receiver's own view of the hand-off, the same as the sender's. Every
  // send must be met by exactly one wait_arrival, even when the batch fails: the CUDA flag
  // hand-offs count both sides.
  virtual void wait_arrival(int slot, void* dst, size_t bytes) = 0;
  // True when send and wait_arrival of `bytes` only launch kernels on the two stages' own streams,
  // with no host-side state, so that each stage may capture its side into its CUDA graphs.
  virtual bool capturable(size_t /*bytes*/) const { return false; }
  // Blocks the calling thread until every copy issued so far has landed (for profiling).
  virtual void synchronize() = 0;
};

// Device -> pinned/host staging buffer -> device, through the two backends' copy calls.
std::unique_ptr<Transport> make_host_staged_transport(Backend& from, Backend& to, size_t max_bytes);

// The engine reuses a pipeline slot once the last stage has *issued* a batch's work, which on GPUs
// may still be running (and reading the slot's buffers on every stage). The fence orders the first
// stage's next work on a slot after the last stage's work on it; every stage in between finished
// with the slot before that, since each waited for the one before it.
class SlotFence {
 public:
  virtual ~SlotFence() = default;
  virtual void release(int slot) = 0;  // last stage, after issuing its work on `slot`
  virtual void acquire(int slot) = 0;  // first stage, before issuing work that writes `slot`
};

}  // namespace ember
