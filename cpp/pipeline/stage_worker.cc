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

std::vector<int64_t> StageWorker::block_layers() const {
  std::vector<int64_t> n;
  for (const auto& b : blocks_) n.push_back(b->num_layers());
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
    } else if (work->handed_off) {
      consume_handoff(*work);
    }
    // A failed batch goes to the engine, unless its rows were already handed to the next stage,
    // which must wait for them first.
    const bool to_next = work->error.empty() ? !done : work->handed_off && next_ != nullptr;
    if (to_next) {
      next_->submit(std::move(*work));
    } else {
      sink_(std::move(*work));
    }
  }
}

void StageWorker::consume_handoff(StageResult& work) {
  work.handed_off = false;
  if (!from_prev_) return;
  const StepBatch& b = *work.batch;
  const size_t bytes = b.meta.token_ids.size() * static_cast<size_t>(hidden_) * dtype_size(activation_dtype());
  try {
    from_prev_->wait_arrival(b.slot, slots_[b.slot].get(), bytes);
  } catch (const std::exception&) {  // the device failed too: nothing more will arrive
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
  // Per block: interleaved, a stage holds a block's graphs for every slot and shape.
  const size_t max_graphs = size_t{256} * blocks_.size();
  DecoderStage& b = *blocks_[block];
  if (!decode_only || !backend_->supports_graphs()) return run_eager(b, step, x, h);
  // The step's shape, the slot's buffer (the graph bakes in its address and its hand-offs') and
  // the block, each folded in through a 64-bit mix so that no two combinations cancel.
  auto mix = [](uint64_t key, uint64_t v) {
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
    return (key ^ (v ^ (v >> 31))) * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
  };
  uint64_t key = mix(mix(backend_->graph_key(step), reinterpret_cast<uint64_t>(x.data)), static_cast<uint64_t>(block));
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    backend_->replay(it->second.id);
    return it->second.logits;
  }
  if (not_capturable_.count(key) || graphs_.size() >= max_graphs || seen_once_.insert(key).second)
    return run_eager(b, step, x, h);
  Graph g;
  try {
    backend_->capture_begin();
    g.logits = run_eager(b, step, x, h);
    g.id = backend_->capture_end();
  } catch (const std::exception&) {
    // Nothing captured has run (and nothing at all if the capture did not begin); the hand-offs
    // it held run eagerly now, once each.
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
  work.handed_off = false;
  const int block = work.position / num_stages_;
  if (work.position % num_stages_ != index_ || block >= num_blocks())
    throw EngineError("pipeline position " + std::to_string(work.position) + " is not run by this stage");
  DecoderStage& part = *blocks_[block];
  const bool last = part.is_last();
  if (work.position > 0 && !from_prev_)
    throw EngineError("pipeline position " + std::to_string(work.position) + " has no incoming transport");
  if (!last && (!next_ || !to_next_))
    throw EngineError("pipeline position " + std::to_string(work.position) + " has no successor");
  const int64_t num_tokens = static_cast<int64_t>(b.meta.token_ids.size());
  Tensor x{slots_[b.slot].get(), part.activation_dtype(), {num_tokens, hidden_}};
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
  // Every hand-off the previous stage sent is waited for exactly once, failure or not: the flag
  // kernels count them on both cards, and a wait skipped here would let the next one through early.
  if (fence_ && work.position == 0) fence_->acquire(b.slot);
  DeviceStep step;
  try {
    step = backend_->upload_step(b.meta);
  } catch (...) {
    if (around.receive) around.receive();
    if (inside.receive) inside.receive();
    throw;
  }
  if (around.receive) around.receive();
  Tensor logits = run_ops(block, step, x, decode_only, inside);
  if (inside.send) work.handed_off = true;
  double compute = 0.0, copy = 0.0;
  if (!last) {
    if (profile_) backend_->synchronize();
    const auto t1 = clock::now();
    if (around.send) around.send();
    work.handed_off = true;
    work.position += 1;
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
  return last;
}

}  // namespace ember
