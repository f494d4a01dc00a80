// The reference sampler (penalties, temperature, top-k/top-p/min-p, counter-based seeded draw) and
// the validation of sampling options shared by every entry point; GPU samplers are checked against it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "ember/error.h"
#include "ember/sampling.h"

namespace ember {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
[[noreturn]] void reject(const char* param, const char* range, T got) {
  std::ostringstream msg;
  msg << param << " must be " << range << ", got " << got;
  throw InvalidArgument(msg.str());
}

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Token order used wherever candidates are ranked: higher value first, lower id on ties.
struct ByValueDesc {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

int32_t argmax(const std::vector<float>& v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i) {
    if (v[i] > v[best] || (std::isnan(v[best]) && !std::isnan(v[i]))) best = i;
  }
  return best;
}

// The first `k` tokens of `ids` in ByValueDesc order (k clamped to the size).
void rank_prefix(std::vector<int32_t>& ids, size_t k, const float* v) {
  k = std::min(k, ids.size());
  ByValueDesc cmp{v};
  if (k < ids.size()) std::nth_element(ids.begin(), ids.begin() + k, ids.end(), cmp);
  std::sort(ids.begin(), ids.begin() + k, cmp);
}

void check_ids(const std::vector<int32_t>* ids, int64_t vocab, const char* what) {
  if (!ids) return;
  for (int32_t t : *ids) {
    if (t < 0 || t >= vocab) {
      throw InvalidArgument(std::string("sample_row: ") + what + " token id " + std::to_string(t) +
                            " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
}

void apply_penalties(std::vector<float>& l, const SamplingOptions& o, const SamplingRow& row) {
  if (o.repetition_penalty != 1.0f) {
    std::vector<char> seen(l.size(), 0);
    for (const auto* list : {row.prompt_tokens, row.output_tokens}) {
      if (list) for (int32_t t : *list) seen[t] = 1;
    }
    for (size_t i = 0; i < l.size(); ++i) {
      if (seen[i]) l[i] = l[i] > 0.0f ? l[i] / o.repetition_penalty : l[i] * o.repetition_penalty;
    }
  }
  if ((o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f) && row.output_tokens) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : *row.output_tokens) ++counts[t];
    for (const auto& [t, c] : counts) {
      l[t] -= o.frequency_penalty * static_cast<float>(c);
      l[t] -= o.presence_penalty;
    }
  }
}

// log(sum(exp(logits))) of the raw logits: max-subtracted, summed in double in token order.
double log_normalizer(const float* logits, int64_t vocab) {
  float m = kNegInf;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, logits[i]);
  if (!(m > kNegInf)) return m;
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - m);
  return m + std::log(sum);
}

// Draws from the tempered, filtered distribution; `l` holds the penalised logits.
int32_t draw(std::vector<float>& l, const SamplingOptions& o, double u) {
  const int64_t vocab = static_cast<int64_t>(l.size());
  for (float& x : l) x /= o.temperature;
  const float m = l[argmax(l)];
  if (!(m > kNegInf)) return argmax(l);  // nothing finite left to sample from
  // Candidate set, in token order unless a filter needs ranking.
  std::vector<int32_t> cand;
  const bool top_k = o.top_k > 0 && o.top_k < vocab;
  const bool top_p = o.top_p < 1.0f;
  if (top_k || top_p) {
    cand.resize(static_cast<size_t>(vocab));
    for (int32_t i = 0; i < vocab; ++i) cand[i] = i;
    if (top_k) {
      rank_prefix(cand, static_cast<size_t>(o.top_k), l.data());
      cand.resize(static_cast<size_t>(o.top_k));
    }
    if (top_p) {
      double total = 0.0;
      for (int32_t t : cand) total += std::exp(static_cast<double>(l[t]) - m);
      // Rank a growing prefix until it reaches top_p: most of the mass is in few tokens.
      size_t ranked = 0, keep = cand.size();
      double cum = 0.0;
      for (size_t want = 64; ranked < cand.size(); want *= 4) {
        std::vector<int32_t> tail(cand.begin() + ranked, cand.end());
        rank_prefix(tail, want, l.data());
        std::copy(tail.begin(), tail.end(), cand.begin() + ranked);
        const size_t upto = std::min(cand.size(), ranked + want);
        for (; ranked < upto; ++ranked) {
          cum += std::exp(static_cast<double>(l[cand[ranked]]) - m) / total;
          if (cum >= o.top_p) break;
        }
        if (ranked < upto) {
          keep = ranked + 1;
          break;
        }
      }
      cand.resize(keep);
    }
    std::sort(cand.begin(), cand.end());
  }
  const auto weight = [&](int32_t t) { return std::exp(static_cast<double>(l[t]) - m); };
  const auto consider = [&](auto&& visit) {
    if (cand.empty()) {
      for (int32_t t = 0; t < vocab; ++t) visit(t);
    } else {
      for (int32_t t : cand) visit(t);
    }
  };
  // min_p relative to the most likely token (weight 1 at the max), then the inverse-CDF draw.
  const double floor_w = static_cast<double>(o.min_p);
  double total = 0.0;
  consider([&](int32_t t) {
    const double w = weight(t);
    if (w >= floor_w) total += w;
  });
  const double target = u * total;
  double cum = 0.0;
  int32_t last = -1, picked = -1;
  consider([&](int32_t t) {
    if (picked >= 0) return;
    const double w = weight(t);
    if (w < floor_w || w == 0.0) return;
    last = t;
    cum += w;
    if (cum > target) picked = t;
  });
  return picked >= 0 ? picked : last;
}

}  // namespace

void validate_sampling(const SamplingOptions& o, int64_t vocab_size) {
  if (!std::isfinite(o.temperature) || o.temperature < 0.0f) {
    reject("temperature", "a finite number >= 0", o.temperature);
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) reject("top_p", "in (0, 1]", o.top_p);
  if (o.top_k < -1) reject("top_k", "-1 or 0 (off) or a positive integer", o.top_k);
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) reject("min_p", "in [0, 1]", o.min_p);
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty)) {
    reject("repetition_penalty", "a finite number > 0", o.repetition_penalty);
  }
  if (!(o.presence_penalty >= -2.0f && o.presence_penalty <= 2.0f)) {
    reject("presence_penalty", "in [-2, 2]", o.presence_penalty);
  }
  if (!(o.frequency_penalty >= -2.0f && o.frequency_penalty <= 2.0f)) {
    reject("frequency_penalty", "in [-2, 2]", o.frequency_penalty);
  }
  if (o.max_tokens < 1) reject("max_tokens", ">= 1", o.max_tokens);
  if (o.min_tokens < 0 || o.min_tokens > o.max_tokens) {
    reject("min_tokens", ("in [0, max_tokens=" + std::to_string(o.max_tokens) + "]").c_str(),
           o.min_tokens);
  }
  if (o.logprobs < -1 || o.logprobs > 20) reject("logprobs", "-1 (none) or in [0, 20]", o.logprobs);
  for (int32_t t : o.stop_token_ids) {
    if (t < 0 || t >= vocab_size) {
      reject("stop_token_ids", ("in [0, vocab_size=" + std::to_string(vocab_size) + ")").c_str(), t);
    }
  }
}

double counter_uniform(uint64_t seed, uint64_t step) {
  const uint64_t h = mix64(mix64(seed) ^ (step * 0xd1b54a32d192ed03ull));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

SampleResult sample_row(const float* logits, int64_t vocab, const SamplingRow& row) {
  if (!row.opts) throw InvalidArgument("sample_row: the row has no sampling options");
  if (vocab <= 0) throw InvalidArgument("sample_row: vocab must be > 0, got " + std::to_string(vocab));
  const SamplingOptions& o = *row.opts;
  check_ids(row.prompt_tokens, vocab, "prompt");
  check_ids(row.output_tokens, vocab, "output");
  check_ids(row.suppress_eos ? row.eos_ids : nullptr, vocab, "eos");

  SampleResult res;
  if (o.return_logits) res.logits.assign(logits, logits + vocab);
  std::vector<float> l(logits, logits + vocab);
  apply_penalties(l, o, row);
  if (row.suppress_eos && row.eos_ids) {
    for (int32_t t : *row.eos_ids) l[t] = kNegInf;
  }
  if (o.temperature < kGreedyTemperature || o.top_k == 1) {
    res.token = argmax(l);
  } else {
    res.token = draw(l, o, counter_uniform(row.seed, row.step));
  }

  const double log_z = log_normalizer(logits, vocab);
  res.logprob = static_cast<float>(logits[res.token] - log_z);
  if (o.logprobs > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
    const size_t k = std::min<size_t>(static_cast<size_t>(o.logprobs), ids.size());
    rank_prefix(ids, k, logits);
    for (size_t i = 0; i < k; ++i) {
      res.top_logprobs.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - log_z));
    }
  }
  return res;
}

}  // namespace ember
