// Continuous batching under a token budget: running sequences first (decodes and unfinished
// prefills), then new ones from the waiting queue; preemption by recompute when pages run out.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "kv/block_manager.h"
#include "sched/sequence.h"
#include "sched/step_batch.h"

namespace ember {

struct SchedulerOptions {
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
  int32_t chunk_size = 512;
  // When in (0, chunk_size): a prompt's first and last chunks are this long and the middle ones
  // chunk_size, so that a pipeline fills and drains on small chunks but runs the bulk on large ones.
  int32_t edge_chunk_size = 0;
  // Decodes are spread over this many micro-batches, and no more of them are in flight at once:
  // one per stage keeps every stage busy, and more would each read all the weights for fewer
  // sequences (with 2S + 2 batches allowed in flight, 64 sequences had split into ~6).
  int32_t num_stages = 1;
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& opts, BlockManager* blocks);

  void add(Sequence* seq);
  // Builds the next batch from sequences not waiting on an in-flight sampling step; empty when
  // nothing can run now. Advances num_scheduled and chunks_in_flight of the chosen sequences.
  std::vector<ScheduledChunk> schedule();
  // The engine hands back each batch it got from schedule() once the batch has returned, before
  // it updates the batch's sequences (so that the decode micro-batches in flight are counted).
  void returned(const std::vector<ScheduledChunk>& batch);
  // Removes a finished or aborted sequence (not in flight) and frees its pages.
  void finish(Sequence* seq);
  int64_t decode_batches_in_flight() const { return decode_batches_in_flight_; }

  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return preemptions_; }
  const std::vector<Sequence*>& running() const { return running_; }
  const std::deque<Sequence*>& waiting() const { return waiting_; }

 private:
  void preempt(Sequence* victim);
  Sequence* pick_victim(const Sequence* requester, const std::vector<ScheduledChunk>& batch) const;
  // Length of the next chunk of a sequence scheduled up to `start` with `remaining` tokens left
  // (before the step budget is applied).
  int64_t chunk_length(int64_t start, int64_t remaining) const;

  SchedulerOptions opts_;
  BlockManager* blocks_;
  std::vector<Sequence*> running_;  // admission order
  std::deque<Sequence*> waiting_;   // arrival order (preempted sequences go back in order)
  int64_t preemptions_ = 0;
  int64_t decode_batches_in_flight_ = 0;  // batches from schedule() with a decode, not yet returned
};

}  // namespace ember
