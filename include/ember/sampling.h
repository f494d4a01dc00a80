// Per-request sampling parameters and the per-row inputs a backend's sampler needs. Validation
// lives here so that every entry point (Python, server, C++) rejects the same bad values.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace ember {

// Temperatures below this are treated as greedy (dividing by them would overflow the logits); every
// sampler (reference, CUDA) uses this one cut-off.
constexpr float kGreedyTemperature = 1e-5f;

struct SamplingOptions {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = -1;        // -1 or 0 = off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  float repetition_penalty = 1.0f;  // > 0
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  bool has_seed = false;
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t max_tokens = 16;  // >= 1
  int32_t min_tokens = 0;   // <= max_tokens
  int32_t logprobs = -1;    // -1: none; k >= 0: the sampled token's logprob plus the top k
  bool return_logits = false;  // carry the raw logits of each step (for tests and scoring)
};

// Throws InvalidArgument naming the parameter and the accepted range.
void validate_sampling(const SamplingOptions& opts, int64_t vocab_size);

// What the sampler needs for one row of the logits matrix.
struct SamplingRow {
  const SamplingOptions* opts = nullptr;
  uint64_t seed = 0;           // the request's seed (drawn at random when none was given)
  uint64_t step = 0;           // index of the token being sampled; keys the counter-based RNG
  const std::vector<int32_t>* prompt_tokens = nullptr;  // for the repetition penalty
  const std::vector<int32_t>* output_tokens = nullptr;  // for all penalties
  bool suppress_eos = false;   // min_tokens not reached yet
  const std::vector<int32_t>* eos_ids = nullptr;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;  // of the sampled token under the model's (unpenalised) distribution
  std::vector<std::pair<int32_t, float>> top_logprobs;
  std::vector<float> logits;  // filled when opts->return_logits
};

// Reference sampler on one row of fp32 logits (penalties, temperature, top-k, top-p, min-p,
// seeded draw). The CPU backend uses it directly; GPU samplers are checked against it.
SampleResult sample_row(const float* logits, int64_t vocab, const SamplingRow& row);

// Uniform [0, 1) from (seed, step): independent of batching, preemption and stage count.
double counter_uniform(uint64_t seed, uint64_t step);

}  // namespace ember
