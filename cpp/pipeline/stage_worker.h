// One pipeline stage: a thread that owns one device's backend, weights, KV pool and activation
// buffers, runs its layers on each batch it receives and hands the result to the next stage.
#pragma once

#include <functional>
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

struct StageResult {
  std::shared_ptr<StepBatch> batch;
  std::vector<SampleResult> samples;
  std::string error;  // non-empty: the batch failed in some stage
};

class StageWorker {
 public:
  using ResultSink = std::function<void(StageResult)>;

  // `num_slots` activation buffers of [max_tokens, hidden] receive batches in flight.
  StageWorker(int index, std::unique_ptr<Backend> backend, std::unique_ptr<DecoderStage> decoder, int num_slots,
              int64_t max_tokens, int64_t hidden);
  ~StageWorker();
  StageWorker(const StageWorker&) = delete;
  StageWorker& operator=(const StageWorker&) = delete;

  // Wires the stage to its successor (nullptr for the last stage) and starts the thread.
  void start(StageWorker* next, std::unique_ptr<Transport> to_next, ResultSink sink);
  void submit(StageResult work) { inbox_.push(std::move(work)); }
  void stop();

  Backend& backend() { return *backend_; }
  DecoderStage& decoder() { return *decoder_; }
  void* slot_buffer(int slot) const { return slots_[slot].get(); }
  std::string transport_name() const { return to_next_ ? to_next_->name() : "-"; }

 private:
  void run();
  void process(StageResult& work);

  int index_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<DecoderStage> decoder_;
  std::vector<Buffer> slots_;
  int64_t hidden_;
  StageWorker* next_ = nullptr;
  std::unique_ptr<Transport> to_next_;
  ResultSink sink_;
  BlockingQueue<StageResult> inbox_;
  std::thread thread_;
};

}  // namespace ember
