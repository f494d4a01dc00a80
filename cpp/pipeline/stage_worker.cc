// The stage loop: take a batch, run the block of layers it is at on its slot buffer, then either
// hand the hidden states to the stage that runs the next block or (after the pipeline's last
// block) compute logits and sample. A failure travels on with the batch, so the engine hears
// about it and keeps serving.
#include "pipeline/stage_worker.h"

#include <algorithm>
#include <chrono>

#include "ember/error.h"

namespace ember {

StageWorker::StageWorker(int index, int num_stages, std::unique_ptr<Backend> backend,
                         std::vector<std::unique_ptr<DecoderStage>> blocks, int num_slots, int64_t max_tokens,
                         int64_t hidden, bool profile)
    : index_(index), num_stages_(num_stages), backend_(std::move(backend)), blocks_(std::move(blocks)), hidden_(hidden),
      profile_(profile) {
  if (blocks_.empty()) throw EngineError("stage " + std::to_string(index) + ": no block of layers to run");
  const size_t bytes = static_cast<size_t>(max_tokens * hidden) * dtype_size(blocks_[0]->activation_dtype());
  for (int i = 0; i < num_slots; ++i)
    slots_.push_back(backend_->allocate(bytes, "activation slot " + std::to_string(i) + " of stage " + std::to_string(index)));
}

StageWorker::~StageWorker() { stop(); }

int64_t StageWorker::num_layers() const {
  int64_t n = 0;
  for (const auto& b : blocks_) n += b->num_layers();
  return n;
}

size_t StageWorker::weight_bytes() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b->weight_bytes();
  return n;
}

void StageWorker::start(StageWorker* next, Transport* to_next, ResultSink sink, std::chrono::microseconds spin) {
  inbox_.set_spin(spin);
  next_ = next;
  to_next_ = to_next;
  if (next_) next_->from_prev_ = to_next_;
  sink_ = std::move(sink);
  thread_ = std::thread([this] { run(); });
}

void StageWorker::stop() {
  inbox_.close();
  if (thread_.joinable()) thread_.join();
}

void StageWorker::run() {
  while (auto work = inbox_.pop()) {
    bool done = false;
    if (work->error.empty()) {
      try {
        done = process(*work);
      } catch (const std::exception& e) {
        work->error = "stage " + std::to_string(index_) + " (" + backend_->name() + "): " + e.what();
      }
    }
    if (!work->error.empty() || done) {
      sink_(std::move(*work));
    } else {
      next_->submit(std::move(*work));
    }
  }
}

Tensor StageWorker::run_eager(DecoderStage& block, const DeviceStep& step, Tensor x, const Handoffs& h) {
  if (h.receive) h.receive();
  block.forward(step, x);
  if (h.send) h.send();
  return block.is_last() ? block.compute_logits(step, x) : Tensor{};
}

// A decode step's ops depend only on its sizes and buffers, so after one eager run the second
// occurrence of the same key is captured and every later one is a single graph launch.
Tensor StageWorker::run_ops(int block, const DeviceStep& step, Tensor x, bool decode_only, const Handoffs& h) {
  constexpr size_t kMaxGraphs = 256;
  DecoderStage& b = *blocks_[block];
  if (!decode_only || !backend_->supports_graphs()) return run_eager(b, step, x, h);
  uint64_t key = backend_->graph_key(step);
  key ^= reinterpret_cast<uint64_t>(x.data) * 0x9e3779b97f4a7c15ull;
  key ^= static_cast<uint64_t>(block + 1) * 0xc2b2ae3d27d4eb4full;
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    backend_->replay(it->second.id);
    return it->second.logits;
  }
  if (not_capturable_.count(key) || graphs_.size() >= kMaxGraphs || seen_once_.insert(key).second)
    return run_eager(b, step, x, h);
  Graph g;
  backend_->capture_begin();
  try {
    g.logits = run_eager(b, step, x, h);
    g.id = backend_->capture_end();
  } catch (const std::exception&) {
    // Nothing captured has run; the hand-offs it held run eagerly now, once each.
    backend_->capture_abort();
    not_capturable_.insert(key);
    return run_eager(b, step, x, h);
  }
  graphs_.emplace(key, g);
  graphs_count_.fetch_add(1);
  backend_->replay(g.id);
  return g.logits;
}

bool StageWorker::process(StageResult& work) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  StepBatch& b = *work.batch;
  const int block = work.position / num_stages_;
  if (work.position % num_stages_ != index_ || block >= num_blocks())
    throw EngineError("pipeline position " + std::to_string(work.position) + " is not run by this stage");
  DecoderStage& part = *blocks_[block];
  if (fence_ && work.position == 0) fence_->acquire(b.slot);
  DeviceStep step = backend_->upload_step(b.meta);
  const bool last = part.is_last();
  if (work.position > 0 && !from_prev_)
    throw EngineError("pipeline position " + std::to_string(work.position) + " has no incoming transport");
  if (!last && (!next_ || !to_next_))
    throw EngineError("pipeline position " + std::to_string(work.position) + " has no successor");
  Tensor x{slots_[b.slot].get(), part.activation_dtype(), {step.num_tokens, hidden_}};
  const size_t bytes = x.nbytes();
  void* next_buffer = last ? nullptr : next_->slot_buffer(b.slot);
  const bool decode_only = std::all_of(b.chunks.begin(), b.chunks.end(), [](const ScheduledChunk& c) { return c.length == 1; });
  // A decode step's hand-offs ride in its graph where the transports allow (one launch less on
  // each side of a hop); otherwise they are issued around it. Profiling keeps them outside.
  const bool in_graph = decode_only && !profile_;
  Handoffs inside, around;
  if (work.position > 0) {
    Transport* t = from_prev_;
    auto receive = [t, slot = b.slot, dst = x.data, bytes] { t->wait_arrival(slot, dst, bytes); };
    (in_graph && t->capturable(bytes) ? inside : around).receive = receive;
  }
  if (!last) {
    Transport* t = to_next_;
    auto send = [t, src = x.data, next_buffer, bytes, slot = b.slot] { t->send(src, next_buffer, bytes, slot); };
    (in_graph && t->capturable(bytes) ? inside : around).send = send;
  }
  if (around.receive) around.receive();
  Tensor logits = run_ops(block, step, x, decode_only, inside);
  double compute = 0.0, copy = 0.0;
  if (!last) {
    if (profile_) backend_->synchronize();
    const auto t1 = clock::now();
    if (around.send) around.send();
    if (profile_) to_next_->synchronize();
    compute = std::chrono::duration<double>(t1 - t0).count();
    copy = std::chrono::duration<double>(clock::now() - t1).count();
    work.position += 1;
  } else {
    backend_->sample(logits, b.sampling, &work.samples);
    if (fence_) fence_->release(b.slot);
    compute = std::chrono::duration<double>(clock::now() - t0).count();
  }
  std::lock_guard<std::mutex> lock(times_mu_);
  times_.compute_s += compute;
  times_.copy_s += copy;
  times_.batches += 1;
  return last;
}

}  // namespace ember
