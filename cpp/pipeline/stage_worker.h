// One pipeline stage: a thread that owns one device's backend, weights, KV pool and activation
// buffers, runs its blocks of layers on each batch it receives and hands the result on.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/blocking_queue.h"
#include "ember/backend.h"
#include "model/decoder.h"
#include "pipeline/transport.h"
#include "sched/step_batch.h"

namespace ember {

// Cumulative time one stage spent (measured only when the engine profiles its stages, since
// measuring a GPU stage means waiting for it).
struct StageTimes {
  double compute_s = 0.0;
  double copy_s = 0.0;
  int64_t batches = 0;
};

struct StageResult {
  std::shared_ptr<StepBatch> batch;
  std::vector<SampleResult> samples;
  std::string error;  // non-empty: the batch failed in some stage
  int position = 0;   // the block of layers the batch goes through next (pipeline order)
  // The stage before handed this batch's rows to position `position`'s stage, which must wait for
  // them even when the batch failed after the hand-off (the flag kernels count every hand-off).
  bool handed_off = false;
};

class StageWorker {
 public:
  using ResultSink = std::function<void(StageResult)>;

  // Stage `index` of `num_stages` runs `blocks` (its blocks of layers, in pipeline order: block j
  // is pipeline position j * num_stages + index). `num_slots` activation buffers of
  // [max_tokens, hidden] receive batches in flight.
  StageWorker(int index, int num_stages, std::unique_ptr<Backend> backend,
              std::vector<std::unique_ptr<DecoderStage>> blocks, int num_slots, int64_t max_tokens, int64_t hidden,
              bool profile);
  ~StageWorker();
  StageWorker(const StageWorker&) = delete;
  StageWorker& operator=(const StageWorker&) = delete;

  // Wires the stage to the one that runs the next pipeline position (nullptr when there is none:
  // a single stage, or the last of a pipeline without interleaving) and starts the thread, which
  // polls its inbox for `spin` before sleeping (BlockingQueue::set_spin).
  // The transport belongs to the caller and must outlive the thread (stop()) and both stages'
  // backends; in a ring the last stage's transport points back at the first stage's backend.
  void start(StageWorker* next, Transport* to_next, ResultSink sink,
             std::chrono::microseconds spin = std::chrono::microseconds(0));
  void submit(StageResult work) { inbox_.push(std::move(work)); }
  // The first stage acquires and the last releases each batch's slot through `fence` (before start).
  void set_slot_fence(std::shared_ptr<SlotFence> fence) { fence_ = std::move(fence); }
  void stop();

  Backend& backend() { return *backend_; }
  int64_t num_layers() const;
  size_t weight_bytes() const;
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  std::vector<int64_t> block_layers() const;
  DType activation_dtype() const { return blocks_.front()->activation_dtype(); }
  void* slot_buffer(int slot) const { return slots_[slot].get(); }
  std::string transport_name() const { return to_next_ ? to_next_->name() : "-"; }
  int64_t graphs_captured() const { return graphs_count_.load(); }
  StageTimes times() const {
    std::lock_guard<std::mutex> lock(times_mu_);
    return times_;
  }

 private:
  void run();
  // Runs the block at work.position; true when it was the pipeline's last (the batch is sampled).
  bool process(StageResult& work);
  // A batch that failed after its rows were handed here: wait for them all the same.
  void consume_handoff(StageResult& work);
  // What a block runs besides its layers: the wait for its input and the hand-off of its output,
  // when the transports let a graph hold them (either may be empty).
  struct Handoffs {
    std::function<void()> receive;
    std::function<void()> send;
  };
  // Runs a block's ops (with `h`) for a decode step, as a replayed graph where the backend supports
  // it. Returns the logits after the pipeline's last block.
  Tensor run_ops(int block, const DeviceStep& step, Tensor x, bool decode_only, const Handoffs& h);
  Tensor run_eager(DecoderStage& block, const DeviceStep& step, Tensor x, const Handoffs& h);

  struct Graph {
    int id = -1;
    Tensor logits;
  };
  std::unordered_map<uint64_t, Graph> graphs_;
  std::unordered_set<uint64_t> seen_once_;
  std::unordered_set<uint64_t> not_capturable_;

  int index_;
  int num_stages_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<DecoderStage>> blocks_;
  std::vector<Buffer> slots_;
  int64_t hidden_;
  StageWorker* next_ = nullptr;
  Transport* to_next_ = nullptr;    // owned by the engine
  Transport* from_prev_ = nullptr;  // the previous stage's to_next_
  bool profile_ = false;
  std::atomic<int64_t> graphs_count_{0};
  mutable std::mutex times_mu_;
  StageTimes times_;
  ResultSink sink_;
  BlockingQueue<StageResult> inbox_;
  std::shared_ptr<SlotFence> fence_;
  std::thread thread_;
};

}  // namespace ember
