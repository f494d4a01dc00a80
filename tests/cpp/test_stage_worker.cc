// Stage workers on CPU backends with a transport that counts: every hand-off is waited for exactly
// once (the CUDA flag hand-offs rely on it), also when a stage fails after handing its rows over.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "backend/backend_factory.h"
#include "ember/engine.h"
#include "model/decoder.h"
#include "model/random_model.h"
#include "pipeline/stage_plan.h"
#include "pipeline/stage_worker.h"

using namespace ember;

namespace {

// Copies on send, counts sends and waits; synchronize() (called in profile mode right after a
// send) throws when armed, which fails a batch after its rows were handed over.
class CountingTransport : public Transport {
 public:
  std::string name() const override { return "counting"; }
  void send(const void* src, void* dst, size_t bytes, int /*slot*/) override {
    std::memcpy(dst, src, bytes);
    sends.fetch_add(1);
  }
  void wait_arrival(int /*slot*/, void* /*dst*/, size_t /*bytes*/) override { waits.fetch_add(1); }
  void synchronize() override {
    if (fail_after_send.exchange(false)) throw std::runtime_error("injected failure after the hand-off");
  }
  std::atomic<int> sends{0}, waits{0};
  std::atomic<bool> fail_after_send{false};
};

struct Pipeline {
  static constexpr const char* kModel = "random:custom:vocab=64,hidden=32,layers=4,heads=2,kv_heads=1,ffn=64";
  static constexpr int kSlots = 2, kTokens = 16, kBlocks = 8, kBlockSize = 16;

  explicit Pipeline(int rounds) : cfg(random_model_config(kModel)) {
    EngineOptions eo;
    eo.num_threads = 1;
    const std::vector<StageRange> plan = interleave_stages(plan_stages(cfg.num_layers, 2, {}), rounds);
    const int P = static_cast<int>(plan.size());
    for (int s = 0; s < 2; ++s) {
      auto backend = make_backend(parse_device("cpu"), eo, 2);
      std::vector<std::unique_ptr<DecoderStage>> blocks;
      std::shared_ptr<const DecoderWorkspace> ws;
      for (int p = s; p < P; p += 2) {
        StageWeights w = random_stage_weights(cfg, *backend, plan[p].begin, plan[p].end, p == 0, p == P - 1, 7);
        if (!ws)
          ws = std::make_shared<const DecoderWorkspace>(cfg, *backend, DecoderStage::activation_dtype_for(w, *backend),
                                                        kTokens, kTokens, (P - 1) % 2 == s);
        blocks.push_back(std::make_unique<DecoderStage>(cfg, std::move(w), *backend, ws, kBlocks, kBlockSize, p == 0,
                                                        p == P - 1));
      }
      stages.push_back(std::make_unique<StageWorker>(s, 2, std::move(backend), std::move(blocks), kSlots, kTokens,
                                                     cfg.hidden_size, /*profile=*/true));
    }
    links.push_back(std::make_unique<CountingTransport>());
    links.push_back(std::make_unique<CountingTransport>());
    auto sink = [this](StageResult r) {
      std::lock_guard<std::mutex> lock(mu);
      results.push_back(std::move(r));
      cv.notify_all();
    };
    stages[0]->start(stages[1].get(), links[0].get(), sink);
    stages[1]->start(rounds > 1 ? stages[0].get() : nullptr, rounds > 1 ? links[1].get() : nullptr, sink);
  }
  ~Pipeline() {
    for (auto& s : stages) s->stop();
  }

  // One prompt of n tokens in slot `slot`, sampled greedily at its end.
  void submit(int n, int slot) {
    auto b = std::make_shared<StepBatch>();
    b->slot = slot;
    StepMeta& m = b->meta;
    m.block_size = kBlockSize;
    m.max_blocks_per_seq = 1;
    for (int i = 0; i < n; ++i) {
      m.token_ids.push_back(1 + i);
      m.positions.push_back(i);
      m.slot_mapping.push_back(slot * kBlockSize + i);
    }
    m.query_start = {0, n};
    m.seq_lens = {n};
    m.block_tables = {slot};
    m.logits_indices = {n - 1};
    opts.temperature = 0.0f;
    SamplingRow row;
    row.opts = &opts;
    b->sampling.push_back(row);
    StageResult work;
    work.batch = b;
    stages[0]->submit(std::move(work));
  }
  StageResult wait_result() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !results.empty(); });
    StageResult r = std::move(results.front());
    results.erase(results.begin());
    return r;
  }
  CountingTransport& link(int s) { return static_cast<CountingTransport&>(*links[s]); }

  ModelConfig cfg;
  SamplingOptions opts;
  std::vector<std::unique_ptr<Transport>> links;  // outlive the stages' threads (stopped first)
  std::vector<std::unique_ptr<StageWorker>> stages;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<StageResult> results;
};

}  // namespace

TEST(StageWorker, InterleavedBatchGoesRoundTheRingAndIsSampled) {
  Pipeline p(2);  // blocks: stage 0, stage 1, stage 0, stage 1
  p.submit(5, 0);
  StageResult r = p.wait_result();
  EXPECT_TRUE(r.error.empty()) << r.error;
  ASSERT_EQ(r.samples.size(), 1u);
  EXPECT_EQ(r.position, 3);
  EXPECT_EQ(p.link(0).sends.load(), 2);  // 0 -> 1 twice
  EXPECT_EQ(p.link(1).sends.load(), 1);  // 1 -> 0 once
  EXPECT_EQ(p.link(0).waits.load(), 2);
  EXPECT_EQ(p.link(1).waits.load(), 1);
}

TEST(StageWorker, BatchFailingAfterItsHandOffIsWaitedForThenReported) {
  Pipeline p(2);
  p.link(0).fail_after_send = true;  // stage 0 fails right after handing block 0's rows over
  p.submit(5, 0);
  StageResult r = p.wait_result();
  EXPECT_NE(r.error.find("injected failure"), std::string::npos) << r.error;
  EXPECT_FALSE(r.handed_off);
  EXPECT_EQ(p.link(0).sends.load(), 1);
  EXPECT_EQ(p.link(0).waits.load(), 1);  // stage 1 consumed the rows before reporting
  // The pipeline keeps serving, and its counts stay paired.
  p.submit(7, 1);
  r = p.wait_result();
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(p.link(0).sends.load(), p.link(0).waits.load());
  EXPECT_EQ(p.link(1).sends.load(), p.link(1).waits.load());
}

TEST(StageWorker, ChainOfTwoStagesWithoutInterleaving) {
  Pipeline p(1);
  p.submit(9, 1);
  StageResult r = p.wait_result();
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.position, 1);
  EXPECT_EQ(p.link(0).sends.load(), 1);
  EXPECT_EQ(p.link(0).waits.load(), 1);
  EXPECT_EQ(p.link(1).sends.load(), 0);
}
