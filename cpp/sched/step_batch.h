// What one step asks of the pipeline: a chunk of tokens from each of several sequences, flattened.
// The engine thread builds it; stage workers only read it.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/backend.h"
#include "ember/sampling.h"

namespace ember {

struct Sequence;

struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t start = 0;   // first token position of the chunk
  int64_t length = 0;  // tokens in the chunk
  bool sample = false; // the chunk reaches the end of the known tokens: sample the next one
  bool decode = false; // a decode step: the one newest token of a sequence that has output
};

struct StepBatch {
  uint64_t id = 0;
  int slot = 0;  // which activation buffer of each stage this batch uses
  std::vector<ScheduledChunk> chunks;
  StepMeta meta;
  // One per sampling chunk, in logits_indices order. Rows point into their Sequence, which the
  // engine thread neither frees nor extends while the chunk is in flight.
  std::vector<SamplingRow> sampling;
};

}  // namespace ember
