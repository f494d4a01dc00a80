// The engine's public face: start it on a model and a list of devices, add requests, read each
// request's token events from its own stream, abort, and look at the pool and queue statistics.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/sampling.h"

namespace ember {

struct EngineOptions {
  std::string model_path;
  std::vector<std::string> devices{"cpu"};  // one pipeline stage per entry: "cpu", "cuda:0", "0"
  std::vector<int64_t> layer_split;         // layers per stage; empty = even split
  std::string transport = "auto";           // auto | peer | host (between GPU stages)
  // Blocks of layers per stage, placed round-robin (stage s runs blocks s, s + S, ...), so that a
  // batch passes every stage `interleave` times and a pipeline fills and drains on smaller
  // blocks; 0 = automatic (on GPUs the largest power of two up to 8, 4 with host staging, that
  // leaves every block a layer; 1 on CPUs and with one stage).
  int32_t interleave = 0;
  // Batches in the pipeline at once (one activation buffer each per stage); 0 = automatic
  // (1 with one stage, stages + 1 with several, 2 * stages + 2 interleaved).
  int32_t batches_in_flight = 0;
  int64_t max_model_len = 0;                // 0 = min(config, 8192)
  int64_t kv_cache_tokens = 0;              // 0 = sized from kv_memory_fraction / defaults
  double kv_memory_fraction = 0.0;          // of the GPU memory left after weights and workspace; 0 = 0.98
  int32_t block_size = 16;
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 0;       // token budget of one step; 0 = 2048 on CPUs, 8192 on GPUs
  // Longest prefill chunk of one sequence in a step; 0 = the whole budget on one stage, 1024 with
  // several stages (small chunks keep every stage busy while a long prompt flows through), and
  // interleaved 8192 / (2 * stages) rounded down to a power of two, at least 512.
  int32_t chunk_size = 0;
  // A prompt's first and last chunks when smaller than chunk_size (pipelines fill and drain on
  // them); 0 = automatic (512 on a chain of stages with the automatic chunk_size, otherwise
  // off), -1 = off.
  int32_t edge_chunk_size = 0;
  int32_t num_threads = 0;                  // CPU backend threads per stage; 0 = all cores
  int64_t max_memory = 0;                   // bytes each GPU may use (emulates smaller cards); 0 = all
  double gpu_memory_utilization = 0.0;      // fraction of a GPU's memory to reserve; 0 = default 0.9
  bool use_cuda_graphs = true;
  bool profile_stages = false;              // time each stage's compute and copy (adds syncs)
  bool keep_quantized = true;               // GGUF Q4_0/Q4_1/Q8_0 stay blocks where the backend reads them
};

enum class FinishReason : uint8_t { None, Stop, Length, Abort, Error };
const char* finish_reason_name(FinishReason r);

struct TokenEvent {
  int32_t token = -1;  // -1 when the event only carries a finish (abort, error)
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top_logprobs;
  std::vector<float> logits;
  FinishReason finish = FinishReason::None;
  std::string error;
};

struct StageStats {
  std::string device;
  std::string transport;  // to the next stage ("-" for the last of a chain; a ring's links back)
  int64_t layers = 0;
  int64_t blocks = 1;     // blocks of layers (interleave)
  std::vector<int64_t> block_layers;  // layers of each block, in pipeline order
  double compute_s = 0.0;
  double copy_s = 0.0;
  int64_t batches = 0;    // blocks run (a batch counts once per block it passes here)
  int64_t weight_bytes = 0;
  int64_t graphs = 0;  // decode graphs captured
};

struct EngineStats {
  int64_t num_blocks = 0;       // KV pages per stage (same on every stage)
  int64_t blocks_used = 0;
  int64_t blocks_free = 0;
  int64_t block_size = 0;
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0;     // prompt tokens computed (including recomputation)
  int64_t generated_tokens = 0;
  int64_t num_stages = 0;
  int64_t interleave = 1;
  int64_t max_model_len = 0;
  int64_t chunk_size = 0;       // the prefill chunk the engine settled on (given or automatic)
  int64_t edge_chunk_size = 0;  // a prompt's first and last chunks; 0 = off
  std::vector<StageStats> stages;
};

class RequestStream;

class Engine {
 public:
  explicit Engine(const EngineOptions& opts);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. Throws InvalidArgument for bad ids or parameters, or a prompt
  // that cannot fit the context or the KV pool.
  std::shared_ptr<RequestStream> add_request(std::vector<int32_t> prompt, const SamplingOptions& opts);
  // Aborts a request (no-op if it already finished); its pages are freed by the engine thread.
  void abort(uint64_t request_id);
  EngineStats stats() const;
  const ModelConfig& config() const;
  const EngineOptions& options() const;
  // True while the engine thread runs; false after a fatal error (see fatal_error()).
  bool healthy() const;
  std::string fatal_error() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// One request's events, in order; the last one has finish != None.
class RequestStream {
 public:
  explicit RequestStream(uint64_t id) : id_(id) {}
  virtual ~RequestStream() = default;
  uint64_t id() const { return id_; }
  // Waits up to `timeout` for the next event; false on timeout. After the final event, returns
  // false immediately.
  virtual bool next(TokenEvent* ev, std::chrono::milliseconds timeout) = 0;
  // Takes every event already queued without waiting.
  virtual std::vector<TokenEvent> drain() = 0;
  virtual bool finished() const = 0;

 private:
  uint64_t id_;
};

}  // namespace ember
