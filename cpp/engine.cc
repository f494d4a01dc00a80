// The engine thread: intake -> schedule -> submit -> collect -> emit. It alone mutates scheduler,
// sequence and page state; stage workers only read the batches they are handed.
#include "ember/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <unordered_map>
#include <variant>

#include "backend/backend_factory.h"
#include "core/blocking_queue.h"
#include "engine_stream.h"
#include "ember/error.h"
#include "ember/weights.h"
#include "kv/block_manager.h"
#include "model/decoder.h"
#include "model/random_model.h"
#include "model/weights.h"
#include "pipeline/stage_plan.h"
#include "pipeline/stage_worker.h"
#include "sched/scheduler.h"

namespace ember {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
  }
  return "";
}

namespace {

struct AddMsg {
  std::unique_ptr<Sequence> seq;
};
struct AbortMsg {
  uint64_t id;
};
struct ShutdownMsg {};
using EngineMsg = std::variant<AddMsg, AbortMsg, StageResult, ShutdownMsg>;

int64_t default_cpu_kv_tokens(const ModelConfig& cfg, int64_t max_model_len) {
  const int64_t per_token = 2 * cfg.num_layers * cfg.kv_size() * 4;
  const int64_t cap = (int64_t{4} << 30) / std::max<int64_t>(per_token, 1);
  return std::max<int64_t>(std::min(std::max<int64_t>(4 * max_model_len, 8192), cap), max_model_len);
}

}  // namespace

class Engine::Impl {
 public:
  explicit Impl(const EngineOptions& opts);
  ~Impl();

  std::shared_ptr<RequestStream> add_request(std::vector<int32_t> prompt, const SamplingOptions& opts);
  void abort(uint64_t id) { inbox_.push(AbortMsg{id}); }
  EngineStats stats() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }
  bool healthy() const { return !dead_.load(); }
  std::string fatal_error() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return fatal_;
  }

  EngineOptions opts_;
  ModelConfig cfg_;

 private:
  void validate_options();
  void build_stages(const ModelFiles& files);
  void loop();
  void handle(EngineMsg& msg);
  void submit(std::vector<ScheduledChunk> chunks);
  void on_result(StageResult& res);
  bool emit_token(Sequence* s, const SampleResult& r);  // true when s finished (and is gone)
  void finish(Sequence* s, FinishReason reason, const std::string& error = "");
  bool request_finish(Sequence* s, FinishReason reason, const std::string& error = "");
  void publish_stats();
  // Batches that may be in flight at once: one per stage, plus one with several stages so that
  // the next chunk is already queued at stage 0 when a batch leaves the last stage (the engine's
  // round trip would otherwise leave stage 0 idle once per batch).
  // Interleaved, a prompt's chunks go round the ring v times; with 2S + 2 of them in flight each
  // stage works through a round of several chunks while the first of them comes back (a schedule
  // simulation and 4-GPU sweeps: S + 1 left the stages waiting at every round).
  int num_slots() const {
    const int S = static_cast<int>(opts_.devices.size());
    if (opts_.batches_in_flight > 0) return opts_.batches_in_flight;
    if (S == 1) return 1;
    return rounds_ > 1 ? 2 * S + 2 : S + 1;
  }

  std::vector<std::unique_ptr<StageWorker>> stages_;
  // Stage s's transport to the next stage. Declared after stages_ so that it is destroyed first,
  // while every backend it refers to is alive (the ring's last link points at stage 0); the
  // destructor stops the stage threads before either goes.
  std::vector<std::unique_ptr<Transport>> links_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::unordered_map<uint64_t, std::pair<FinishReason, std::string>> pending_finish_;
  std::vector<int> free_slots_;
  BlockingQueue<EngineMsg> inbox_;
  std::thread thread_;
  std::atomic<uint64_t> next_id_{1};
  uint64_t next_batch_ = 1;
  uint64_t arrivals_ = 0;
  int64_t num_blocks_ = 0;
  int rounds_ = 1;  // interleave: how many blocks of layers each stage runs
  bool auto_chunk_ = false;  // chunk_size was left to the engine
  bool auto_edge_ = false;   // and edge_chunk_size too
  int64_t steps_ = 0, prompt_tokens_ = 0, generated_tokens_ = 0;
  bool stopping_ = false;
  std::atomic<bool> dead_{false};
  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::string fatal_;
  std::mt19937_64 seed_rng_{std::random_device{}()};
};

Engine::Impl::Impl(const EngineOptions& opts) : opts_(opts) {
  ModelFiles files;
  if (is_random_model(opts_.model_path)) {
    files.config = random_model_config(opts_.model_path);
  } else {
    ModelLoadOptions load;
    load.keep_quantized = opts_.keep_quantized;
    files = open_model(opts_.model_path, load);
  }
  cfg_ = files.config;
  validate_options();
  build_stages(files);
  if (auto_chunk_ && rounds_ > 1) {
    // Interleaved, fill and drain cost a block of one chunk (1/rounds of a stage's share, or one
    // layer where interleave_stages thins the pipeline's ends), so the chunks can be larger (and
    // run closer to one whole prompt's efficiency): as large as cuts an 8192-token prompt into 2S
    // chunks, the fewest that keep a ring of S stages busy; at least 512.
    // Edge chunks then shorten neither fill nor drain (the ring idles on its largest middle block)
    // and run at a small chunk's efficiency: off (2 H200s, 8192 prompt: 1.85x without, 1.82x with).
    if (auto_edge_) opts_.edge_chunk_size = -1;
    const int S = static_cast<int>(stages_.size());
    int32_t chunk = 512;
    while (chunk * 2 * 2 * S <= 8192) chunk *= 2;
    opts_.chunk_size = std::min(chunk, opts_.max_num_batched_tokens);
  }
  files.weights.reset();  // weights now live in the stages' memory
  SchedulerOptions so;
  so.max_num_seqs = opts_.max_num_seqs;
  so.max_num_batched_tokens = opts_.max_num_batched_tokens;
  so.chunk_size = opts_.chunk_size;
  so.edge_chunk_size = opts_.edge_chunk_size;
  so.num_stages = static_cast<int32_t>(stages_.size());
  scheduler_ = std::make_unique<Scheduler>(so, blocks_.get());
  for (int i = num_slots() - 1; i >= 0; --i) free_slots_.push_back(i);
  publish_stats();
  thread_ = std::thread([this] { loop(); });
}

Engine::Impl::~Impl() {
  inbox_.push(ShutdownMsg{});
  if (thread_.joinable()) thread_.join();
  for (auto& s : stages_) s->stop();
  // Work the stages issued may still be queued on their cards (a chunk is handed back once issued)
  // and read the transports' staging and flags: let it finish before links_ free them.
  for (auto& s : stages_) {
    try {
      s->backend().synchronize();
    } catch (const std::exception&) {  // a dead device: nothing of it will run any more
    }
  }
}

void Engine::Impl::validate_options() {
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) throw InvalidArgument(std::string(name) + " must be >= 1, got " + std::to_string(v));
  };
  if (opts_.devices.empty()) throw InvalidArgument("devices: at least one device is needed");
  positive(opts_.block_size, "block_size");
  positive(opts_.max_num_seqs, "max_num_seqs");
  if (opts_.max_num_batched_tokens == 0)
    opts_.max_num_batched_tokens = (opts_.devices[0] == "cpu") ? 2048 : 8192;
  positive(opts_.max_num_batched_tokens, "max_num_batched_tokens");
  if (opts_.interleave < 0)
    throw InvalidArgument("interleave must be >= 1 (or 0 for automatic), got " + std::to_string(opts_.interleave));
  if (opts_.batches_in_flight < 0 || opts_.batches_in_flight > 64)
    throw InvalidArgument("batches_in_flight must be in [1, 64] (or 0 for automatic), got " +
                          std::to_string(opts_.batches_in_flight));
  if (opts_.chunk_size < 0) throw InvalidArgument("chunk_size must be >= 1 (or 0 for automatic), got " + std::to_string(opts_.chunk_size));
  // Pipelines: the bulk of a long prompt in chunks of kPipelineChunk, the first and last of
  // kPipelineEdgeChunk, so that stages overlap without running at a small chunk's efficiency
  // (interleaved pipelines revise both once the rounds are known: auto_chunk_, auto_edge_).
  constexpr int32_t kPipelineChunk = 1024, kPipelineEdgeChunk = 512;
  const bool auto_chunk = opts_.chunk_size == 0;
  auto_chunk_ = auto_chunk;
  const bool pipeline = opts_.devices.size() > 1;
  if (auto_chunk) opts_.chunk_size = pipeline ? kPipelineChunk : opts_.max_num_batched_tokens;
  if (opts_.edge_chunk_size < -1)
    throw InvalidArgument("edge_chunk_size must be >= 1, 0 (automatic) or -1 (off), got " +
                          std::to_string(opts_.edge_chunk_size));
  auto_edge_ = opts_.edge_chunk_size == 0 && pipeline && auto_chunk;
  if (opts_.edge_chunk_size == 0) opts_.edge_chunk_size = auto_edge_ ? kPipelineEdgeChunk : -1;
  if (opts_.block_size > 1024) throw InvalidArgument("block_size must be <= 1024, got " + std::to_string(opts_.block_size));
  if (opts_.max_model_len < 0) throw InvalidArgument("max_model_len must be positive");
  if (opts_.max_model_len == 0) opts_.max_model_len = std::min<int64_t>(cfg_.max_position_embeddings, 8192);
  if (opts_.kv_cache_tokens < 0) throw InvalidArgument("kv_cache_tokens must be positive");
  if (opts_.kv_memory_fraction < 0 || opts_.kv_memory_fraction > 1 || std::isnan(opts_.kv_memory_fraction))
    throw InvalidArgument("kv_memory_fraction must be in [0, 1]");
  if (opts_.chunk_size > opts_.max_num_batched_tokens) opts_.chunk_size = opts_.max_num_batched_tokens;
  if (opts_.transport != "auto" && opts_.transport != "peer" && opts_.transport != "host")
    throw InvalidArgument("transport must be \"auto\", \"peer\" or \"host\", got \"" + opts_.transport + "\"");
}

void Engine::Impl::build_stages(const ModelFiles& files) {
  const int S = static_cast<int>(opts_.devices.size());
  std::vector<DeviceSpec> devs;
  for (const auto& d : opts_.devices) devs.push_back(parse_device(d));
  for (const auto& d : devs)
    if (d.kind != devs[0].kind) throw InvalidArgument("devices: mixing CPU and GPU stages is not supported");
  const int64_t max_tokens = opts_.max_num_batched_tokens;
  const int64_t max_logits = std::min<int64_t>(opts_.max_num_seqs, max_tokens);
  const int cpu_stages = static_cast<int>(
      std::count_if(devs.begin(), devs.end(), [](const DeviceSpec& d) { return d.kind == DeviceSpec::Kind::Cpu; }));
  std::vector<std::unique_ptr<Backend>> backends;
  for (int s = 0; s < S; ++s) backends.push_back(make_backend(devs[s], opts_, cpu_stages));

  // Activations, workspace and slot buffers a stage needs besides weights and KV pages.
  const int64_t workspace = max_tokens * (8 * cfg_.hidden_size + 6 * cfg_.q_size() + 3 * cfg_.intermediate_size) * 4 +
                            max_logits * cfg_.vocab_size * 4 + (int64_t{256} << 20);
  const bool gpu = devs[0].kind == DeviceSpec::Kind::Cuda;
  const DType matrix_dtype = backends[0]->weight_storage_dtype(cfg_.dtype);
  std::vector<double> capacity;
  if (gpu && opts_.layer_split.empty() && S > 1) {
    // Candidate split: layers follow each device's free memory once the embedding and the LM head
    // are placed.
    const double vocab_bytes = static_cast<double>(cfg_.vocab_size * cfg_.hidden_size) * dtype_size(matrix_dtype);
    for (int s = 0; s < S; ++s) {
      double free_b = static_cast<double>(backend_free_bytes(*backends[s])) - static_cast<double>(workspace);
      if (s == 0) free_b -= vocab_bytes;
      if (s == S - 1) free_b -= vocab_bytes;
      capacity.push_back(std::max(free_b, 1.0));
    }
  }
  std::vector<StageRange> shares = plan_stages(cfg_.num_layers, S, opts_.layer_split, capacity);
  if (!capacity.empty()) {
    // A pipeline runs at the pace of its slowest stage, so an even split (equal compute) is kept
    // unless following free memory would give the KV pool at least 10 % more pages.
    // KV room per layer of the tightest stage; minus infinity when some stage cannot hold its share.
    auto kv_room = [&](const std::vector<StageRange>& split) {
      double room = std::numeric_limits<double>::infinity();
      for (int s = 0; s < S; ++s) {
        const double weights = static_cast<double>(
            stage_weight_bytes(cfg_, split[s].begin, split[s].end, s == 0, s == S - 1, matrix_dtype));
        const double left = static_cast<double>(backend_free_bytes(*backends[s])) - static_cast<double>(workspace) - weights;
        if (left < 0) return -std::numeric_limits<double>::infinity();
        room = std::min(room, left / static_cast<double>(split[s].end - split[s].begin));
      }
      return room;
    };
    const std::vector<StageRange> even = plan_stages(cfg_.num_layers, S, {});
    if (kv_room(even) * 1.1 >= kv_room(shares)) shares = even;
  }
  if (S > 1 && opts_.interleave == 0) {
    // Every round adds S hops to a decode step: ~4.5 us each between peer cards (H200s), ~7 us
    // staged through the host, so host staging stops at fewer rounds.
    int max_rounds = 8;
    for (int s = 0; s < S; ++s)
      if (!stage_link_is_peer(*backends[s], *backends[(s + 1) % S], opts_.transport)) max_rounds = 4;
    rounds_ = default_interleave(shares, gpu, max_rounds);
  } else {
    rounds_ = S == 1 ? 1 : opts_.interleave;
  }
  // Pipeline position p runs on stage p % S; stage s owns positions s, s + S, ... (its blocks).
  const std::vector<StageRange> plan = interleave_stages(shares, rounds_);
  const int P = static_cast<int>(plan.size());
  if (gpu) {  // refuse before loading anything if some stage cannot hold its share
    std::string report;
    bool fits = true;
    for (int s = 0; s < S; ++s) {
      size_t need = static_cast<size_t>(workspace);
      for (int p = s; p < P; p += S)
        need += stage_weight_bytes(cfg_, plan[p].begin, plan[p].end, p == 0, p == P - 1, matrix_dtype);
      const size_t free_b = backend_free_bytes(*backends[s]);
      fits = fits && need <= free_b;
      const std::string layers = rounds_ > 1 ? std::to_string(shares[s].end - shares[s].begin) + " layers in " +
                                                   std::to_string(rounds_) + " blocks"
                                             : "layers " + std::to_string(shares[s].begin) + "-" +
                                                   std::to_string(shares[s].end - 1);
      report += "\n  " + backends[s]->name() + ": " + layers + " need " + std::to_string(need >> 20) + " MiB, " +
                std::to_string(free_b >> 20) + " MiB available";
    }
    if (!fits)
      throw EngineError("the model does not fit on the given devices (weights plus workspace, before any KV cache):" +
                        report + "\nuse more devices, a larger max_memory, or a smaller max_num_batched_tokens");
  }
  std::vector<StageWeights> weights;  // per pipeline position
  for (int p = 0; p < P; ++p) {
    const int s = p % S;
    const bool first = p == 0, last = p == P - 1;
    weights.push_back(files.weights
                          ? load_stage_weights(cfg_, *files.weights, *backends[s], plan[p].begin, plan[p].end, first, last)
                          : random_stage_weights(cfg_, *backends[s], plan[p].begin, plan[p].end, first, last, 1234));
  }
  // Each stage computes in one activation dtype, that of its first block (position s): its KV
  // pages and its workspace are made in it.
  std::vector<DType> acts;
  for (int s = 0; s < S; ++s) acts.push_back(DecoderStage::activation_dtype_for(weights[s], *backends[s]));
  // KV pool: the same page count on every stage, sized by the tightest one.
  int64_t tokens = opts_.kv_cache_tokens;
  if (tokens == 0) {
    if (devs[0].kind == DeviceSpec::Kind::Cpu) {
      tokens = default_cpu_kv_tokens(cfg_, opts_.max_model_len);
    } else {
      const double frac = opts_.kv_memory_fraction > 0 ? opts_.kv_memory_fraction : 0.98;
      int64_t best = -1;
      for (int s = 0; s < S; ++s) {
        const int64_t layers = shares[s].end - shares[s].begin;
        const int64_t per_token = 2 * layers * cfg_.kv_size() * static_cast<int64_t>(dtype_size(acts[s]));
        // What the reservation still holds once the workspace and activation slots are set aside.
        const int64_t free_bytes = static_cast<int64_t>(backend_free_bytes(*backends[s])) - workspace;
        const int64_t t = static_cast<int64_t>(std::max<int64_t>(free_bytes, 0) * frac) / std::max<int64_t>(per_token, 1);
        best = best < 0 ? t : std::min(best, t);
      }
      tokens = best;
    }
  }
  num_blocks_ = tokens / opts_.block_size;
  if (num_blocks_ < 1)
    throw EngineError("no memory left for the KV cache after loading the weights; lower max_num_batched_tokens or use more devices");
  blocks_ = std::make_unique<BlockManager>(num_blocks_, opts_.block_size);

  for (int s = 0; s < S; ++s) {
    auto ws = std::make_shared<const DecoderWorkspace>(cfg_, *backends[s], acts[s], max_tokens, max_logits,
                                                       /*logits=*/(P - 1) % S == s);
    std::vector<std::unique_ptr<DecoderStage>> blocks;
    for (int p = s; p < P; p += S)
      blocks.push_back(std::make_unique<DecoderStage>(cfg_, std::move(weights[p]), *backends[s], ws, num_blocks_,
                                                      opts_.block_size, p == 0, p == P - 1));
    stages_.push_back(std::make_unique<StageWorker>(s, S, std::move(backends[s]), std::move(blocks), num_slots(),
                                                    max_tokens, cfg_.hidden_size, opts_.profile_stages));
  }
  // GPU stages: the engine and stage threads poll their inboxes for a while before sleeping, so a
  // decode step's two thread hand-offs cost microseconds, not a wake-up each. CPU stages need
  // every core for their own matmuls, so they sleep at once.
  const auto hand_off_spin = std::chrono::microseconds(cpu_stages == 0 ? 20000 : 0);
  inbox_.set_spin(hand_off_spin);
  if (S > 1) {
    std::shared_ptr<SlotFence> fence = make_slot_fence(stages_[0]->backend(), stages_[S - 1]->backend(), num_slots());
    stages_[0]->set_slot_fence(fence);
    stages_[S - 1]->set_slot_fence(fence);
  }
  // Without interleaving the stages form a chain; with it, a ring (the last stage hands blocks
  // back to the first).
  auto next_of = [&](int s) -> StageWorker* {
    return s + 1 < S ? stages_[s + 1].get() : (rounds_ > 1 ? stages_[0].get() : nullptr);
  };
  for (int s = 0; s < S; ++s) {
    StageWorker* next = next_of(s);
    const size_t bytes = static_cast<size_t>(max_tokens * cfg_.hidden_size) *
                         dtype_size(stages_[s]->activation_dtype());
    links_.push_back(next ? make_stage_transport(stages_[s]->backend(), next->backend(), opts_.transport, bytes, num_slots())
                          : nullptr);
  }
  for (int s = 0; s < S; ++s)
    stages_[s]->start(next_of(s), links_[s].get(), [this](StageResult r) { inbox_.push(std::move(r)); }, hand_off_spin);
}

std::shared_ptr<RequestStream> Engine::Impl::add_request(std::vector<int32_t> prompt, const SamplingOptions& sopts) {
  if (dead_) throw EngineError("the engine has stopped after a fatal error: " + fatal_error());
  validate_sampling(sopts, cfg_.vocab_size);
  if (prompt.empty()) throw InvalidArgument("prompt is empty; at least one token is needed");
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= cfg_.vocab_size)
      throw InvalidArgument("prompt token id " + std::to_string(prompt[i]) + " at position " + std::to_string(i) +
                            " is out of range [0, " + std::to_string(cfg_.vocab_size) + ")");
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n >= opts_.max_model_len)
    throw InvalidArgument("prompt has " + std::to_string(n) + " tokens but the model's maximum context length is " +
                          std::to_string(opts_.max_model_len) + " tokens");
  if (n + sopts.max_tokens > opts_.max_model_len)
    throw InvalidArgument("This model's maximum context length is " + std::to_string(opts_.max_model_len) +
                          " tokens. However, you requested " + std::to_string(n + sopts.max_tokens) + " tokens (" +
                          std::to_string(n) + " in the prompt, " + std::to_string(sopts.max_tokens) +
                          " in max_tokens). Please reduce the prompt or max_tokens.");
  if (blocks_->blocks_for(n + sopts.max_tokens) > num_blocks_)
    throw InvalidArgument("request needs " + std::to_string(n + sopts.max_tokens) + " tokens of KV cache but the pool holds only " +
                          std::to_string(num_blocks_ * opts_.block_size) + "; lower max_tokens or give the engine more KV memory");
  auto seq = std::make_unique<Sequence>();
  seq->id = next_id_.fetch_add(1);
  seq->prompt = std::move(prompt);
  seq->opts = sopts;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    seq->seed = sopts.has_seed ? sopts.seed : seed_rng_();
  }
  auto stream = std::make_shared<RequestStreamImpl>(seq->id);
  seq->stream = stream;
  inbox_.push(AddMsg{std::move(seq)});
  return stream;
}

void Engine::Impl::loop() {
  try {
    while (true) {
      while (!stopping_ && !free_slots_.empty()) {
        std::vector<ScheduledChunk> chunks = scheduler_->schedule();
        if (chunks.empty()) break;
        submit(std::move(chunks));
      }
      publish_stats();
      const bool idle = static_cast<int>(free_slots_.size()) == num_slots();
      if (stopping_ && idle) break;
      std::optional<EngineMsg> msg = inbox_.pop();
      if (!msg) break;
      handle(*msg);
      while (auto more = inbox_.try_pop()) handle(*more);
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    fatal_ = e.what();
    dead_ = true;
  }
  // Every request still known gets a final event so that no reader waits forever.
  const FinishReason why = dead_ ? FinishReason::Error : FinishReason::Abort;
  for (auto& [id, s] : seqs_) {
    TokenEvent ev;
    ev.finish = why;
    ev.error = dead_ ? fatal_ : "engine shut down";
    s->stream->push(std::move(ev));
  }
  while (auto m = inbox_.try_pop()) {
    if (auto* add = std::get_if<AddMsg>(&*m)) {
      TokenEvent ev;
      ev.finish = why;
      ev.error = "engine shut down";
      add->seq->stream->push(std::move(ev));
    }
  }
}

void Engine::Impl::handle(EngineMsg& msg) {
  if (auto* add = std::get_if<AddMsg>(&msg)) {
    if (stopping_) {
      TokenEvent ev;
      ev.finish = FinishReason::Abort;
      ev.error = "engine shut down";
      add->seq->stream->push(std::move(ev));
      return;
    }
    Sequence* s = add->seq.get();
    s->arrival = arrivals_++;
    seqs_[s->id] = std::move(add->seq);
    scheduler_->add(s);
  } else if (auto* ab = std::get_if<AbortMsg>(&msg)) {
    auto it = seqs_.find(ab->id);
    if (it != seqs_.end()) request_finish(it->second.get(), FinishReason::Abort);
  } else if (auto* res = std::get_if<StageResult>(&msg)) {
    on_result(*res);
  } else if (std::holds_alternative<ShutdownMsg>(msg)) {
    stopping_ = true;
  }
}

void Engine::Impl::submit(std::vector<ScheduledChunk> chunks) {
  auto batch = std::make_shared<StepBatch>();
  batch->id = next_batch_++;
  batch->slot = free_slots_.back();
  free_slots_.pop_back();
  StepMeta& m = batch->meta;
  m.block_size = opts_.block_size;
  int32_t max_blocks = 0;
  for (const auto& c : chunks) max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(c.seq->block_table.size()));
  m.max_blocks_per_seq = std::max(max_blocks, 1);
  const bool decode_only = std::all_of(chunks.begin(), chunks.end(), [](const ScheduledChunk& c) { return c.length == 1; });
  if (decode_only) {  // a power of two, so that decode steps of one batch size share a CUDA graph
    int32_t p = 1;
    while (p < m.max_blocks_per_seq) p *= 2;
    m.max_blocks_per_seq = p;
  }
  m.query_start.push_back(0);
  for (const auto& c : chunks) {
    Sequence* s = c.seq;
    for (int64_t i = 0; i < c.length; ++i) {
      const int64_t pos = c.start + i;
      m.token_ids.push_back(s->token_at(pos));
      m.positions.push_back(static_cast<int32_t>(pos));
      m.slot_mapping.push_back(s->block_table[pos / opts_.block_size] * opts_.block_size + static_cast<int32_t>(pos % opts_.block_size));
    }
    m.query_start.push_back(static_cast<int32_t>(m.token_ids.size()));
    m.seq_lens.push_back(static_cast<int32_t>(c.start + c.length));
    for (int32_t b = 0; b < m.max_blocks_per_seq; ++b)
      m.block_tables.push_back(b < static_cast<int32_t>(s->block_table.size()) ? s->block_table[b] : -1);
    if (c.sample) {
      m.logits_indices.push_back(static_cast<int32_t>(m.token_ids.size() - 1));
      SamplingRow row;
      row.opts = &s->opts;
      row.seed = s->seed;
      row.step = s->output.size();
      row.prompt_tokens = &s->prompt;
      row.output_tokens = &s->output;
      row.suppress_eos = static_cast<int64_t>(s->output.size()) < s->opts.min_tokens;
      row.eos_ids = &cfg_.eos_token_ids;
      batch->sampling.push_back(row);
    }
    // Every token of a chunk is prefill work except the one token of a plain decode step.
    prompt_tokens_ += c.decode ? 0 : c.length;
  }
  batch->chunks = std::move(chunks);
  ++steps_;
  StageResult work;
  work.batch = std::move(batch);
  stages_.front()->submit(std::move(work));
}

void Engine::Impl::on_result(StageResult& res) {
  StepBatch& b = *res.batch;
  free_slots_.push_back(b.slot);
  scheduler_->returned(b.chunks);
  size_t sample_index = 0;
  for (const ScheduledChunk& c : b.chunks) {
    Sequence* s = c.seq;
    s->chunks_in_flight -= 1;
    if (res.error.empty()) s->num_computed = std::max(s->num_computed, c.start + c.length);
    const SampleResult* sample = nullptr;
    if (c.sample && res.error.empty()) sample = &res.samples.at(sample_index++);
    bool gone = false;
    if (!res.error.empty()) {
      gone = request_finish(s, FinishReason::Error, res.error);
    } else if (sample && !pending_finish_.count(s->id)) {
      gone = emit_token(s, *sample);
    }
    if (gone) continue;
    auto pending = pending_finish_.find(s->id);
    if (pending != pending_finish_.end() && !s->in_flight()) {
      auto [reason, error] = pending->second;
      pending_finish_.erase(pending);
      finish(s, reason, error);
    }
  }
}

bool Engine::Impl::emit_token(Sequence* s, const SampleResult& r) {
  s->output.push_back(r.token);
  ++generated_tokens_;
  TokenEvent ev;
  ev.token = r.token;
  ev.logprob = r.logprob;
  ev.top_logprobs = r.top_logprobs;
  ev.logits = r.logits;
  const int64_t produced = static_cast<int64_t>(s->output.size());
  const SamplingOptions& o = s->opts;
  FinishReason reason = FinishReason::None;
  if (produced >= o.min_tokens) {
    const bool is_eos = std::find(cfg_.eos_token_ids.begin(), cfg_.eos_token_ids.end(), r.token) != cfg_.eos_token_ids.end();
    const bool is_stop = std::find(o.stop_token_ids.begin(), o.stop_token_ids.end(), r.token) != o.stop_token_ids.end();
    if ((is_eos && !o.ignore_eos) || is_stop) reason = FinishReason::Stop;
  }
  if (reason == FinishReason::None && (produced >= o.max_tokens || s->total_len() >= opts_.max_model_len))
    reason = FinishReason::Length;
  ev.finish = reason;
  s->stream->push(std::move(ev));
  if (reason == FinishReason::None) return false;
  scheduler_->finish(s);
  seqs_.erase(s->id);
  return true;
}

bool Engine::Impl::request_finish(Sequence* s, FinishReason reason, const std::string& error) {
  if (s->in_flight()) {
    pending_finish_.emplace(s->id, std::make_pair(reason, error));
    return false;
  }
  finish(s, reason, error);
  return true;
}

void Engine::Impl::finish(Sequence* s, FinishReason reason, const std::string& error) {
  TokenEvent ev;
  ev.finish = reason;
  ev.error = error;
  s->stream->push(std::move(ev));
  scheduler_->finish(s);
  seqs_.erase(s->id);
}

void Engine::Impl::publish_stats() {
  EngineStats st;
  st.num_blocks = blocks_->num_blocks();
  st.blocks_used = blocks_->num_used();
  st.blocks_free = blocks_->num_free();
  st.block_size = blocks_->block_size();
  st.running = scheduler_ ? scheduler_->num_running() : 0;
  st.waiting = scheduler_ ? scheduler_->num_waiting() : 0;
  st.preemptions = scheduler_ ? scheduler_->num_preemptions() : 0;
  st.steps = steps_;
  st.prompt_tokens = prompt_tokens_;
  st.generated_tokens = generated_tokens_;
  st.num_stages = static_cast<int64_t>(stages_.size());
  st.interleave = rounds_;
  st.max_model_len = opts_.max_model_len;
  st.chunk_size = opts_.chunk_size;
  st.edge_chunk_size = std::max(0, opts_.edge_chunk_size);
  for (auto& w : stages_) {
    StageStats ss;
    ss.device = w->backend().name();
    ss.transport = w->transport_name();
    ss.layers = w->num_layers();
    ss.blocks = w->num_blocks();
    ss.block_layers = w->block_layers();
    ss.weight_bytes = static_cast<int64_t>(w->weight_bytes());
    const StageTimes t = w->times();
    ss.compute_s = t.compute_s;
    ss.copy_s = t.copy_s;
    ss.batches = t.batches;
    ss.graphs = w->graphs_captured();
    st.stages.push_back(ss);
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = st;
}

// ---- Engine facade ----
Engine::Engine(const EngineOptions& opts) : impl_(std::make_unique<Impl>(opts)) {}
Engine::~Engine() = default;
std::shared_ptr<RequestStream> Engine::add_request(std::vector<int32_t> prompt, const SamplingOptions& opts) {
  return impl_->add_request(std::move(prompt), opts);
}
void Engine::abort(uint64_t request_id) { impl_->abort(request_id); }
EngineStats Engine::stats() const { return impl_->stats(); }
const ModelConfig& Engine::config() const { return impl_->cfg_; }
const EngineOptions& Engine::options() const { return impl_->opts_; }
bool Engine::healthy() const { return impl_->healthy(); }
std::string Engine::fatal_error() const { return impl_->fatal_error(); }

}  // namespace ember
