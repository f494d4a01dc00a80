// The scheduler against a fake model: a driver plays the engine thread (submit, return results in
// order, append a token), so that budgets, chunking, preemption and pipelining can be checked.
#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <numeric>
#include <set>

#include "kv/block_manager.h"
#include "sched/scheduler.h"

using namespace ember;

namespace {

struct Driver {
  Driver(int64_t blocks, int32_t block_size, SchedulerOptions o) : bm(blocks, block_size), sched(o, &bm), opts(o) {}

  Sequence* add(int prompt_len, int max_tokens) {
    auto s = std::make_unique<Sequence>();
    s->id = seqs.size();
    s->arrival = seqs.size();
    for (int i = 0; i < prompt_len; ++i) s->prompt.push_back(i % 50);
    s->opts.max_tokens = max_tokens;
    sched.add(s.get());
    seqs.push_back(std::move(s));
    return seqs.back().get();
  }

  // Completes the oldest in-flight batch the way the engine thread does.
  void complete_one() {
    auto batch = inflight.front();
    inflight.pop_front();
    sched.returned(batch);
    for (auto& c : batch) {
      Sequence* s = c.seq;
      s->chunks_in_flight -= 1;
      s->num_computed = std::max(s->num_computed, c.start + c.length);
      if (c.sample) {
        // fake model: next token is a function of the length so far
        s->output.push_back(static_cast<int32_t>(s->total_len() % 97));
        if (static_cast<int>(s->output.size()) >= s->opts.max_tokens) {
          sched.finish(s);
          ++finished;
        }
      }
    }
  }

  void run(int max_in_flight, int max_steps = 100000) {
    for (int step = 0; step < max_steps; ++step) {
      while (static_cast<int>(inflight.size()) < max_in_flight) {
        auto b = sched.schedule();
        if (b.empty()) break;
        check_batch(b);
        inflight.push_back(b);
      }
      if (inflight.empty()) break;
      complete_one();
    }
  }

  void check_batch(const std::vector<ScheduledChunk>& b) {
    int64_t tokens = 0;
    std::set<Sequence*> seen;
    for (const auto& c : b) {
      tokens += c.length;
      EXPECT_LE(c.length, opts.chunk_size);
      EXPECT_TRUE(seen.insert(c.seq).second) << "a sequence appears twice in one batch";
      EXPECT_GE(static_cast<int64_t>(c.seq->block_table.size()) * bm.block_size(), c.start + c.length)
          << "pages do not cover the chunk";
    }
    EXPECT_LE(tokens, opts.max_num_batched_tokens);
    EXPECT_LE(static_cast<int64_t>(b.size()), opts.max_num_seqs);
    ++batches;
  }

  BlockManager bm;
  Scheduler sched;
  SchedulerOptions opts;
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::deque<std::vector<ScheduledChunk>> inflight;
  int finished = 0;
  int batches = 0;
};

SchedulerOptions options(int seqs, int budget, int chunk, int stages = 1) {
  SchedulerOptions o;
  o.max_num_seqs = seqs;
  o.max_num_batched_tokens = budget;
  o.chunk_size = chunk;
  o.num_stages = stages;
  return o;
}

}  // namespace

TEST(Scheduler, AllRequestsCompleteAndPagesReturn) {
  Driver d(64, 4, options(8, 32, 16));
  for (int i = 0; i < 20; ++i) d.add(5 + i, 3 + i % 4);
  d.run(1);
  EXPECT_EQ(d.finished, 20);
  EXPECT_EQ(d.bm.num_free(), 64);
  EXPECT_EQ(d.sched.num_running(), 0);
  EXPECT_EQ(d.sched.num_waiting(), 0);
}

TEST(Scheduler, LongPromptIsChunked) {
  Driver d(64, 4, options(4, 1000, 7));
  Sequence* s = d.add(30, 1);
  auto b = d.sched.schedule();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].length, 7);
  EXPECT_FALSE(b[0].sample);
  d.inflight.push_back(b);
  d.run(1);
  EXPECT_EQ(s->output.size(), 1u);
  EXPECT_EQ(d.batches, 4);  // the other 23 tokens in chunks of 7 (the first batch was ours)
}

// Edge chunks: a pipeline fills and drains on small chunks and runs the middle on large ones.
TEST(Scheduler, EdgeChunksAreSmallFirstAndLast) {
  auto o = options(4, 8192, 2048, 2);
  o.edge_chunk_size = 512;
  for (auto [prompt, want] : {std::pair<int, std::vector<int64_t>>{8192, {512, 2048, 2048, 2048, 1024, 512}},
                              {3000, {512, 1976, 512}},
                              {900, {512, 388}},
                              {400, {400}}}) {
    Driver d(4096, 16, o);
    Sequence* s = d.add(prompt, 1);
    std::vector<int64_t> got;
    while (true) {  // chunks of one sequence may be in flight back to back, as in a pipeline
      auto b = d.sched.schedule();
      if (b.empty()) break;
      d.check_batch(b);
      ASSERT_EQ(b.size(), 1u);
      EXPECT_EQ(b[0].start, std::accumulate(got.begin(), got.end(), int64_t{0}));
      got.push_back(b[0].length);
      d.inflight.push_back(b);
    }
    EXPECT_EQ(got, want) << "prompt " << prompt;
    EXPECT_TRUE(d.inflight.back().back().sample);
    d.run(8);
    EXPECT_EQ(s->output.size(), 1u);
  }
}

TEST(Scheduler, DecodesComeBeforeNewPrefills) {
  Driver d(64, 4, options(8, 8, 8));
  Sequence* a = d.add(4, 10);
  auto b1 = d.sched.schedule();  // a's prefill
  d.inflight.push_back(b1);
  d.complete_one();
  d.add(20, 2);                  // a long newcomer
  auto b2 = d.sched.schedule();
  ASSERT_FALSE(b2.empty());
  EXPECT_EQ(b2[0].seq, a);       // a's decode first
  EXPECT_EQ(b2[0].length, 1);
  EXPECT_EQ(b2[1].length, 7);    // the newcomer gets what is left of the budget
}

TEST(Scheduler, PreemptsNewestWhenPagesRunOutAndStillFinishes) {
  // 8 pages of 4 tokens; 4 sequences each needing up to 4 pages.
  Driver d(8, 4, options(8, 64, 64));
  for (int i = 0; i < 4; ++i) d.add(8, 8);
  d.run(1);
  EXPECT_EQ(d.finished, 4);
  EXPECT_GT(d.sched.num_preemptions(), 0);
  EXPECT_EQ(d.bm.num_free(), 8);
  for (auto& s : d.seqs) EXPECT_EQ(s->output.size(), 8u);
}

TEST(Scheduler, PipelinedChunksOfOnePromptFlowBackToBack) {
  Driver d(64, 4, options(4, 16, 8, /*stages=*/2));
  d.add(40, 2);
  auto b1 = d.sched.schedule();
  auto b2 = d.sched.schedule();  // next chunk while the first is in flight
  ASSERT_EQ(b1.size(), 1u);
  ASSERT_EQ(b2.size(), 1u);
  EXPECT_EQ(b1[0].start, 0);
  EXPECT_EQ(b2[0].start, 8);
  d.inflight.push_back(b1);
  d.inflight.push_back(b2);
  d.run(2);
  EXPECT_EQ(d.finished, 1);
}

TEST(Scheduler, SamplingSequenceIsNotRescheduledWhileInFlight) {
  Driver d(64, 4, options(4, 64, 64, 2));
  d.add(4, 5);
  auto b1 = d.sched.schedule();
  ASSERT_EQ(b1.size(), 1u);
  EXPECT_TRUE(b1[0].sample);
  EXPECT_TRUE(d.sched.schedule().empty());
}

TEST(Scheduler, DecodesSplitIntoMicroBatchesAcrossStages) {
  Driver d(256, 4, options(16, 256, 64, 2));
  for (int i = 0; i < 8; ++i) d.add(4, 20);
  auto prefill = d.sched.schedule();
  EXPECT_EQ(prefill.size(), 8u);
  d.inflight.push_back(prefill);
  d.complete_one();
  auto m1 = d.sched.schedule();
  auto m2 = d.sched.schedule();
  EXPECT_EQ(m1.size(), 4u);
  EXPECT_EQ(m2.size(), 4u);
  d.inflight.push_back(m1);
  d.inflight.push_back(m2);
  d.run(2);
  EXPECT_EQ(d.finished, 8);
  EXPECT_EQ(d.bm.num_free(), 256);
}

TEST(Scheduler, NoMoreDecodeMicroBatchesInFlightThanStagesAndLateOnesMerge) {
  // A budget of 8 tokens prefills two 4-token prompts a batch, so decodes become ready in pairs.
  Driver d(256, 4, options(16, 8, 64, 2));
  for (int i = 0; i < 8; ++i) d.add(4, 20);
  for (int i = 0; i < 4; ++i) d.inflight.push_back(d.sched.schedule());
  EXPECT_TRUE(d.sched.schedule().empty());
  auto ids = [](const std::vector<ScheduledChunk>& b) {
    std::vector<uint64_t> v;
    for (const auto& c : b) {
      EXPECT_TRUE(c.decode);
      v.push_back(c.seq->id);
    }
    return v;
  };
  d.complete_one();  // sequences 0 and 1 sampled their first token
  auto m1 = d.sched.schedule();
  EXPECT_EQ(ids(m1), (std::vector<uint64_t>{0, 1}));
  d.complete_one();
  auto m2 = d.sched.schedule();
  EXPECT_EQ(ids(m2), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(d.sched.decode_batches_in_flight(), 2);
  d.complete_one();  // 4 and 5 ready: both stages already hold a decode micro-batch
  EXPECT_TRUE(d.sched.schedule().empty());
  d.complete_one();  // 6 and 7 ready
  EXPECT_TRUE(d.sched.schedule().empty());
  d.inflight.push_back(m1);
  d.inflight.push_back(m2);
  d.complete_one();  // m1 back: 0, 1, 4, 5, 6, 7 ready, half of the 8 running go out together
  auto merged = d.sched.schedule();
  EXPECT_EQ(ids(merged), (std::vector<uint64_t>{0, 1, 4, 5}));
  d.inflight.push_back(merged);
  d.run(2);
  EXPECT_EQ(d.finished, 8);
  EXPECT_EQ(d.sched.decode_batches_in_flight(), 0);
  EXPECT_EQ(d.bm.num_free(), 256);
}

TEST(Scheduler, RespectsMaxNumSeqs) {
  Driver d(256, 4, options(3, 256, 64));
  for (int i = 0; i < 10; ++i) d.add(4, 4);
  auto b = d.sched.schedule();
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(d.sched.num_waiting(), 7);
  d.inflight.push_back(b);
  d.run(1);
  EXPECT_EQ(d.finished, 10);
}
