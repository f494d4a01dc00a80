// The stage loop: take a batch, run this stage's layers on its slot buffer, then either hand the
// hidden states to the next stage or (last stage) compute logits and sample. A failure travels
// down the pipeline with the batch, so the engine hears about it and keeps serving.
#include "pipeline/stage_worker.h"

#include <algorithm>
#include <chrono>

#include "ember/error.h"

namespace ember {

StageWorker::StageWorker(int index, std::unique_ptr<Backend> backend, std::unique_ptr<DecoderStage> decoder,
                         int num_slots, int64_t max_tokens, int64_t hidden, bool profile)
    : index_(index), backend_(std::move(backend)), decoder_(std::move(decoder)), hidden_(hidden), profile_(profile) {
  const size_t bytes = static_cast<size_t>(max_tokens * hidden) * dtype_size(decoder_->activation_dtype());
  for (int i = 0; i < num_slots; ++i)
    slots_.push_back(backend_->allocate(bytes, "activation slot " + std::to_string(i) + " of stage " + std::to_string(index)));
}

StageWorker::~StageWorker() { stop(); }

void StageWorker::start(StageWorker* next, std::unique_ptr<Transport> to_next, ResultSink sink,
                        std::chrono::microseconds spin) {
  inbox_.set_spin(spin);
  next_ = next;
  to_next_ = std::move(to_next);
  if (next_) next_->from_prev_ = to_next_.get();
  sink_ = std::move(sink);
  thread_ = std::thread([this] { run(); });
}

void StageWorker::stop() {
  inbox_.close();
  if (thread_.joinable()) thread_.join();
}

void StageWorker::run() {
  while (auto work = inbox_.pop()) {
    if (work->error.empty()) {
      try {
        process(*work);
      } catch (const std::exception& e) {
        work->error = "stage " + std::to_string(index_) + " (" + backend_->name() + "): " + e.what();
      }
    }
    if (!work->error.empty() || next_ == nullptr) {
      sink_(std::move(*work));
    } else {
      next_->submit(std::move(*work));
    }
  }
}

Tensor StageWorker::run_eager(const DeviceStep& step, Tensor x) {
  decoder_->forward(step, x);
  return next_ == nullptr ? decoder_->compute_logits(step, x) : Tensor{};
}

// A decode step's ops depend only on its sizes and buffers, so after one eager run the second
// occurrence of the same key is captured and every later one is a single graph launch.
Tensor StageWorker::run_ops(const DeviceStep& step, Tensor x, bool decode_only) {
  constexpr size_t kMaxGraphs = 256;
  if (!decode_only || !backend_->supports_graphs()) return run_eager(step, x);
  uint64_t key = backend_->graph_key(step);
  key ^= reinterpret_cast<uint64_t>(x.data) * 0x9e3779b97f4a7c15ull;
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    backend_->replay(it->second.id);
    return it->second.logits;
  }
  if (not_capturable_.count(key) || graphs_.size() >= kMaxGraphs || seen_once_.insert(key).second)
    return run_eager(step, x);
  Graph g;
  backend_->capture_begin();
  try {
    g.logits = run_eager(step, x);
    g.id = backend_->capture_end();
  } catch (const std::exception&) {
    backend_->capture_abort();
    not_capturable_.insert(key);
    return run_eager(step, x);
  }
  graphs_.emplace(key, g);
  graphs_count_.fetch_add(1);
  backend_->replay(g.id);
  return g.logits;
}

void StageWorker::process(StageResult& work) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  StepBatch& b = *work.batch;
  if (fence_ && index_ == 0) fence_->acquire(b.slot);
  DeviceStep step = backend_->upload_step(b.meta);
  if (from_prev_) from_prev_->wait_arrival(b.slot);
  Tensor x{slots_[b.slot].get(), decoder_->activation_dtype(), {step.num_tokens, hidden_}};
  const bool decode_only = std::all_of(b.chunks.begin(), b.chunks.end(), [](const ScheduledChunk& c) { return c.length == 1; });
  Tensor logits = run_ops(step, x, decode_only);
  double compute = 0.0, copy = 0.0;
  if (next_ != nullptr) {
    if (profile_) backend_->synchronize();
    const auto t1 = clock::now();
    to_next_->send(x.data, next_->slot_buffer(b.slot), x.nbytes(), b.slot);
    if (profile_) to_next_->synchronize();
    compute = std::chrono::duration<double>(t1 - t0).count();
    copy = std::chrono::duration<double>(clock::now() - t1).count();
  } else {
    backend_->sample(logits, b.sampling, &work.samples);
    if (fence_) fence_->release(b.slot);
    compute = std::chrono::duration<double>(clock::now() - t0).count();
  }
  std::lock_guard<std::mutex> lock(times_mu_);
  times_.compute_s += compute;
  times_.copy_s += copy;
  times_.batches += 1;
}

}  // namespace ember
