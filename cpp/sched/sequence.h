// One request as the engine thread sees it: tokens so far, how many are in the KV cache, how many
// are dispatched to the pipeline, and its page table. Mutated only on the engine thread.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ember/sampling.h"

namespace ember {

class RequestStreamImpl;

enum class SeqStatus : uint8_t { Waiting, Running, Finished };

struct Sequence {
  uint64_t id = 0;
  uint64_t arrival = 0;  // admission order; preemption evicts the newest first
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  SamplingOptions opts;
  uint64_t seed = 0;
  SeqStatus status = SeqStatus::Waiting;
  int64_t num_computed = 0;   // tokens whose KV is written on every stage
  int64_t num_scheduled = 0;  // tokens dispatched (>= num_computed while chunks are in flight)
  int32_t chunks_in_flight = 0;
  bool abort_requested = false;
  std::vector<int32_t> block_table;
  std::shared_ptr<RequestStreamImpl> stream;

  int64_t total_len() const { return static_cast<int64_t>(prompt.size() + output.size()); }
  int32_t token_at(int64_t i) const {
    int64_t p = static_cast<int64_t>(prompt.size());
    return i < p ? prompt[i] : output[i - p];
  }
  bool schedulable() const { return num_scheduled < total_len(); }
  bool in_flight() const { return chunks_in_flight > 0; }
};

}  // namespace ember
