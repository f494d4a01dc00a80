// Moves a batch's hidden states from one stage's memory to the next stage's. Host staging works
// between any two backends; a CUDA peer transport can replace it where cards see each other.
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
  // Copies `bytes` from `src` (in the sending stage's memory) to `dst` (in the receiving stage's
  // memory); returns when `dst` holds the data and `src` may be reused.
  virtual void send(const void* src, void* dst, size_t bytes) = 0;
};

// Device -> pinned/host staging buffer -> device, through the two backends' copy calls.
std::unique_ptr<Transport> make_host_staged_transport(Backend& from, Backend& to, size_t max_bytes);

}  // namespace ember
