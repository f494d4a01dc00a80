// The scheduling policy: decodes never starve behind prefills, a long prompt is cut into chunks
// that may be in flight back to back, and the newest sequence is the one preempted.
#include "sched/scheduler.h"

#include <algorithm>

namespace ember {
namespace {
bool has_decode(const std::vector<ScheduledChunk>& batch) {
  return std::any_of(batch.begin(), batch.end(), [](const ScheduledChunk& c) { return c.decode; });
}
}  // namespace

Scheduler::Scheduler(const SchedulerOptions& opts, BlockManager* blocks) : opts_(opts), blocks_(blocks) {}

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  auto it = std::upper_bound(waiting_.begin(), waiting_.end(), seq,
                             [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; });
  waiting_.insert(it, seq);
}

void Scheduler::returned(const std::vector<ScheduledChunk>& batch) {
  if (has_decode(batch)) decode_batches_in_flight_ -= 1;
}

void Scheduler::finish(Sequence* seq) {
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  blocks_->release(seq->block_table);
  seq->status = SeqStatus::Finished;
}

void Scheduler::preempt(Sequence* victim) {
  running_.erase(std::remove(running_.begin(), running_.end(), victim), running_.end());
  blocks_->release(victim->block_table);
  victim->num_computed = 0;
  victim->num_scheduled = 0;
  ++preemptions_;
  add(victim);
}

Sequence* Scheduler::pick_victim(const Sequence* requester, const std::vector<ScheduledChunk>& batch) const {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* s = *it;
    if (s == requester || s->in_flight() || s->block_table.empty()) continue;
    bool in_batch = std::any_of(batch.begin(), batch.end(), [&](const ScheduledChunk& c) { return c.seq == s; });
    if (!in_batch) return s;
  }
  return nullptr;
}

int64_t Scheduler::chunk_length(int64_t start, int64_t remaining) const {
  const int64_t big = opts_.chunk_size, edge = opts_.edge_chunk_size;
  if (edge <= 0 || edge >= big) return big;
  if (start == 0 || remaining <= edge) return edge;   // first chunk; or the last one
  if (remaining <= big + edge) return remaining - edge;  // leave a small last chunk
  return big;
}

std::vector<ScheduledChunk> Scheduler::schedule() {
  std::vector<ScheduledChunk> batch;
  int64_t budget = opts_.max_num_batched_tokens;
  // Spread decodes over the stages' micro-batches so that every stage has work.
  int64_t ready = std::count_if(running_.begin(), running_.end(), [](const Sequence* s) { return s->schedulable(); });
  int64_t seq_cap = ready;
  // With every stage's micro-batch in flight, decodes wait; those that come back meanwhile go out
  // together in the next one.
  bool decodes_wait = false;
  if (opts_.num_stages > 1 && running_.size() > 1) {
    int64_t share = (static_cast<int64_t>(running_.size()) + opts_.num_stages - 1) / opts_.num_stages;
    seq_cap = std::max<int64_t>(1, std::min(ready, share));
    decodes_wait = decode_batches_in_flight_ >= opts_.num_stages;
  }
  auto is_decode = [](const Sequence* s) { return !s->output.empty() && s->num_scheduled + 1 == s->total_len(); };

  auto take = [&](Sequence* s) -> bool {
    int64_t remaining = s->total_len() - s->num_scheduled;
    int64_t n = std::min<int64_t>({remaining, chunk_length(s->num_scheduled, remaining), budget});
    if (n <= 0) return false;
    if (!blocks_->grow(s->block_table, s->num_scheduled + n)) return false;
    ScheduledChunk c;
    c.seq = s;
    c.start = s->num_scheduled;
    c.length = n;
    c.sample = (s->num_scheduled + n == s->total_len());
    c.decode = n == 1 && is_decode(s);
    s->num_scheduled += n;
    s->chunks_in_flight += 1;
    budget -= n;
    batch.push_back(c);
    return true;
  };

  // 1. Running sequences, oldest first; preempt the newest when pages run out.
  std::vector<Sequence*> order = running_;
  for (Sequence* s : order) {
    if (budget <= 0 || static_cast<int64_t>(batch.size()) >= seq_cap) break;
    if (s->status != SeqStatus::Running || !s->schedulable()) continue;
    if (decodes_wait && is_decode(s)) continue;
    while (!take(s)) {
      if (budget <= 0) break;
      Sequence* victim = pick_victim(s, batch);
      if (victim == nullptr) {
        // Nobody can give pages now: if s holds pages and nothing of it is in flight, it steps
        // back itself so that older sequences can finish; otherwise it waits for in-flight work.
        if (!s->in_flight() && s != running_.front()) preempt(s);
        break;
      }
      preempt(victim);
    }
  }

  // 2. Waiting sequences in arrival order while seats, budget and pages last. A preempted
  // sequence at the head blocks newer ones so that its recompute cannot starve.
  while (!waiting_.empty() && budget > 0 && static_cast<int64_t>(running_.size()) < opts_.max_num_seqs) {
    Sequence* s = waiting_.front();
    if (!take(s)) break;
    waiting_.pop_front();
    s->status = SeqStatus::Running;
    running_.push_back(s);
    std::sort(running_.begin(), running_.end(), [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; });
  }
  if (has_decode(batch)) decode_batches_in_flight_ += 1;
  return batch;
}

}  // namespace ember
