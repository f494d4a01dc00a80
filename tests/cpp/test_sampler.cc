// Checks the reference sampler: greedy and filtered draws, seeded reproducibility, the empirical
// distribution against softmax, penalties, EOS suppression, logprobs and every validation rejection.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ember/backend.h"
#include "ember/error.h"
#include "ember/sampling.h"

namespace ember {
namespace {

struct Row {
  SamplingOptions opts;
  std::vector<int32_t> prompt, output, eos;
  uint64_t seed = 1234;
  bool suppress_eos = false;

  SampleResult sample(const std::vector<float>& logits, uint64_t step) const {
    SamplingRow r;
    r.opts = &opts;
    r.seed = seed;
    r.step = step;
    r.prompt_tokens = &prompt;
    r.output_tokens = &output;
    r.suppress_eos = suppress_eos;
    r.eos_ids = &eos;
    return sample_row(logits.data(), static_cast<int64_t>(logits.size()), r);
  }
};

std::vector<double> softmax(const std::vector<float>& l, double temperature) {
  double m = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double z = 0;
  for (size_t i = 0; i < l.size(); ++i) z += (p[i] = std::exp((l[i] - m) / temperature));
  for (double& x : p) x /= z;
  return p;
}

// Frequencies of each token over `n` steps.
std::vector<double> histogram(const Row& row, const std::vector<float>& logits, int n) {
  std::vector<double> h(logits.size(), 0.0);
  for (int s = 0; s < n; ++s) h[row.sample(logits, s).token] += 1.0 / n;
  return h;
}

TEST(Sampler, GreedyPicksArgmaxWithLowestIndexOnTies) {
  Row row;
  row.opts.temperature = 0.0f;
  EXPECT_EQ(row.sample({0.1f, 2.0f, -1.0f, 1.9f}, 0).token, 1);
  EXPECT_EQ(row.sample({0.1f, 2.0f, -1.0f, 2.0f}, 0).token, 1);
  EXPECT_EQ(row.sample({-5.0f, -3.0f, -3.0f}, 7).token, 1);
}

TEST(Sampler, TopKOneTinyTopPAndFullMinPAreArgmax) {
  std::vector<float> logits = {0.5f, 1.0f, 1.2f, 0.9f, -2.0f};  // close logits: sampling would vary
  for (int variant = 0; variant < 3; ++variant) {
    Row row;
    row.opts.temperature = 1.5f;
    if (variant == 0) row.opts.top_k = 1;
    if (variant == 1) row.opts.top_p = 1e-6f;
    if (variant == 2) row.opts.min_p = 1.0f;
    for (uint64_t step = 0; step < 200; ++step) {
      ASSERT_EQ(row.sample(logits, step).token, 2) << "variant " << variant << " step " << step;
    }
  }
}

TEST(Sampler, SameSeedAndStepGiveTheSameTokenAndSeedsDiffer) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i)) * 2.0f;
  Row a, b;
  a.seed = 42;
  b.seed = 43;
  std::vector<int32_t> seq_a, seq_b;
  for (uint64_t step = 0; step < 100; ++step) {
    const int32_t t = a.sample(logits, step).token;
    ASSERT_EQ(a.sample(logits, step).token, t);  // pure function of (seed, step)
    seq_a.push_back(t);
    seq_b.push_back(b.sample(logits, step).token);
  }
  EXPECT_NE(seq_a, seq_b);
  // The draw varies with the step, too: a flat-ish distribution gives many distinct tokens.
  std::sort(seq_a.begin(), seq_a.end());
  EXPECT_GT(std::unique(seq_a.begin(), seq_a.end()) - seq_a.begin(), 20);
}

TEST(Sampler, CounterUniformIsUniformAndKeyed) {
  double sum = 0;
  int low = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = counter_uniform(7, static_cast<uint64_t>(i));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    low += u < 0.1;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(static_cast<double>(low) / n, 0.1, 0.005);
  EXPECT_EQ(counter_uniform(7, 3), counter_uniform(7, 3));
  EXPECT_NE(counter_uniform(7, 3), counter_uniform(8, 3));
  EXPECT_NE(counter_uniform(7, 3), counter_uniform(7, 4));
}

TEST(Sampler, EmpiricalDistributionMatchesSoftmax) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f};
  for (float temperature : {1.0f, 0.7f, 2.0f}) {
    Row row;
    row.opts.temperature = temperature;
    const auto freq = histogram(row, logits, 40000);
    const auto p = softmax(logits, temperature);
    for (size_t i = 0; i < p.size(); ++i) {
      EXPECT_NEAR(freq[i], p[i], 0.012) << "T=" << temperature << " token " << i;
    }
  }
}

TEST(Sampler, TopKTopPAndMinPRenormaliseTheKeptTokens) {
  // Probabilities 0.5, 0.3, 0.2 at temperature 1.
  const std::vector<float> logits = {std::log(0.3f), std::log(0.5f), std::log(0.2f)};
  const std::vector<double> keep01 = {0.375, 0.625, 0.0};
  for (int variant = 0; variant < 3; ++variant) {
    Row row;
    if (variant == 0) row.opts.top_k = 2;
    if (variant == 1) row.opts.top_p = 0.6f;   // 0.5 < 0.6 <= 0.8: the two best
    if (variant == 2) row.opts.min_p = 0.5f;   // drops p < 0.25
    const auto freq = histogram(row, logits, 30000);
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(freq[i], keep01[i], 0.012) << variant << " " << i;
    EXPECT_EQ(freq[2], 0.0) << variant;
  }
  // top_p reaching exactly the first token keeps only it.
  Row row;
  row.opts.top_p = 0.5f;
  for (uint64_t s = 0; s < 300; ++s) ASSERT_EQ(row.sample(logits, s).token, 1);
}

TEST(Sampler, TopPOverALargeVocabularyKeepsTheSmallestPrefix) {
  // 5000 tokens: the growing-prefix ranking must cross its first window (64) to reach top_p.
  std::vector<float> logits(5000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = -0.001f * static_cast<float>((i * 7919) % 5000);
  const auto p = softmax(logits, 1.0);
  std::vector<size_t> order(p.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  Row row;
  row.opts.top_p = 0.3f;
  double cum = 0;
  std::vector<char> kept(p.size(), 0);
  for (size_t i : order) {
    kept[i] = 1;
    cum += p[i];
    if (cum >= 0.3) break;
  }
  const int n_kept = static_cast<int>(std::count(kept.begin(), kept.end(), 1));
  ASSERT_GT(n_kept, 64);
  for (uint64_t s = 0; s < 3000; ++s) {
    const int32_t t = row.sample(logits, s).token;
    ASSERT_TRUE(kept[t]) << "token " << t << " is outside the top-p set";
  }
}

// Penalties as the sampler documents them, applied by hand.
std::vector<float> penalised(std::vector<float> l, const Row& row) {
  const SamplingOptions& o = row.opts;
  std::vector<char> seen(l.size(), 0);
  for (int32_t t : row.prompt) seen[t] = 1;
  for (int32_t t : row.output) seen[t] = 1;
  for (size_t i = 0; i < l.size(); ++i) {
    if (seen[i]) l[i] = l[i] > 0 ? l[i] / o.repetition_penalty : l[i] * o.repetition_penalty;
  }
  std::map<int32_t, int> count;
  for (int32_t t : row.output) ++count[t];
  for (auto [t, c] : count) l[t] = l[t] - o.frequency_penalty * c - o.presence_penalty;
  return l;
}

TEST(Sampler, PenaltiesChangeTheRightLogits) {
  // Greedy cases that each penalty flips.
  Row row;
  row.opts.temperature = 0.0f;
  row.opts.repetition_penalty = 2.0f;
  row.prompt = {2};
  EXPECT_EQ(row.sample({0.0f, 1.5f, 2.0f}, 0).token, 1);     // 2.0 / 2 = 1.0 < 1.5
  EXPECT_EQ(row.sample({-1.6f, -1.5f, -1.0f}, 0).token, 1);  // -1.0 * 2 = -2.0 < -1.5
  row.prompt = {};
  row.output = {2};
  EXPECT_EQ(row.sample({0.0f, 1.5f, 2.0f}, 0).token, 1);     // output tokens count too

  Row freq;
  freq.opts.temperature = 0.0f;
  freq.opts.frequency_penalty = 0.5f;
  freq.output = {0};
  EXPECT_EQ(freq.sample({3.0f, 2.0f}, 0).token, 0);  // 3 - 0.5 > 2
  freq.output = {0, 0, 0};
  EXPECT_EQ(freq.sample({3.0f, 2.0f}, 0).token, 1);  // 3 - 1.5 < 2

  Row pres;
  pres.opts.temperature = 0.0f;
  pres.opts.presence_penalty = 1.0f;
  pres.output = {0, 0, 0, 0};
  EXPECT_EQ(pres.sample({3.0f, 1.9f}, 0).token, 0);  // 3 - 1 (once, not per count) > 1.9
  EXPECT_EQ(pres.sample({3.0f, 2.1f}, 0).token, 1);
  pres.opts.presence_penalty = -2.0f;                // negative penalties encourage
  EXPECT_EQ(pres.sample({1.0f, 2.9f}, 0).token, 0);

  // Sampled draws equal the draws on hand-penalised logits, step by step.
  std::vector<float> logits(40);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::cos(1.7f * static_cast<float>(i));
  Row all;
  all.opts.temperature = 0.8f;
  all.opts.repetition_penalty = 1.3f;
  all.opts.frequency_penalty = 0.4f;
  all.opts.presence_penalty = 0.3f;
  all.prompt = {1, 2, 3, 30};
  all.output = {3, 3, 5, 7, 7, 7, 39};
  Row plain;
  plain.opts.temperature = 0.8f;
  const auto manual = penalised(logits, all);
  int differs_from_raw = 0;
  for (uint64_t s = 0; s < 500; ++s) {
    const int32_t t = all.sample(logits, s).token;
    ASSERT_EQ(t, plain.sample(manual, s).token) << "step " << s;
    differs_from_raw += t != plain.sample(logits, s).token;
  }
  EXPECT_GT(differs_from_raw, 0);
}

TEST(Sampler, SuppressEosRemovesEosIds) {
  Row row;
  row.opts.temperature = 0.0f;
  row.eos = {3, 1};
  const std::vector<float> logits = {0.0f, 4.0f, 1.0f, 5.0f};
  EXPECT_EQ(row.sample(logits, 0).token, 3);
  row.suppress_eos = true;
  EXPECT_EQ(row.sample(logits, 0).token, 2);
  row.opts.temperature = 1.0f;
  for (uint64_t s = 0; s < 1000; ++s) {
    const int32_t t = row.sample(logits, s).token;
    ASSERT_TRUE(t == 0 || t == 2) << t;
  }
}

TEST(Sampler, LogprobsComeFromTheRawLogSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 2.5f, 0.0f, 3.0f};
  std::vector<double> lsm(logits.size());
  double m = 3.0, z = 0;
  for (float l : logits) z += std::exp(l - m);
  for (size_t i = 0; i < logits.size(); ++i) lsm[i] = logits[i] - m - std::log(z);

  Row row;
  row.opts.temperature = 0.5f;
  row.opts.repetition_penalty = 1.7f;  // penalties and temperature must not leak into logprobs
  row.opts.frequency_penalty = 1.0f;
  row.output = {1, 1};
  row.opts.logprobs = 3;
  row.opts.return_logits = true;
  for (uint64_t s = 0; s < 50; ++s) {
    const SampleResult r = row.sample(logits, s);
    ASSERT_NEAR(r.logprob, lsm[r.token], 1e-6);
    ASSERT_EQ(r.top_logprobs.size(), 3u);
    // Ties (tokens 1 and 5) by lower id first.
    EXPECT_EQ(r.top_logprobs[0].first, 1);
    EXPECT_EQ(r.top_logprobs[1].first, 5);
    EXPECT_EQ(r.top_logprobs[2].first, 3);
    for (const auto& [t, lp] : r.top_logprobs) EXPECT_NEAR(lp, lsm[t], 1e-6);
    EXPECT_EQ(r.logits, logits);
  }
  row.opts.logprobs = 0;
  row.opts.return_logits = false;
  const SampleResult r0 = row.sample(logits, 0);
  EXPECT_TRUE(r0.top_logprobs.empty());
  EXPECT_TRUE(r0.logits.empty());
  EXPECT_NEAR(r0.logprob, lsm[r0.token], 1e-6);
  row.opts.logprobs = 20;  // more than the vocabulary: all of it, ranked
  EXPECT_EQ(row.sample(logits, 0).top_logprobs.size(), logits.size());
}

TEST(Sampler, RejectsTokenIdsOutsideTheVocabulary) {
  Row row;
  row.opts.repetition_penalty = 1.2f;
  row.prompt = {0, 9};
  EXPECT_THROW(row.sample({0.0f, 1.0f, 2.0f}, 0), InvalidArgument);
  row.prompt = {};
  row.output = {-1};
  EXPECT_THROW(row.sample({0.0f, 1.0f, 2.0f}, 0), InvalidArgument);
}

TEST(Sampler, BackendSampleRunsSampleRowPerRow) {
  auto be = make_cpu_backend(2);
  const int64_t n = 5, vocab = 300;
  std::vector<float> logits(n * vocab);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(0.37f * static_cast<float>(i));
  std::vector<Row> rows(n);
  std::vector<SamplingRow> srows(n);
  for (int64_t i = 0; i < n; ++i) {
    rows[i].seed = 100 + i;
    rows[i].opts.temperature = i == 0 ? 0.0f : 0.9f;
    rows[i].opts.top_k = static_cast<int32_t>(i * 10);
    rows[i].opts.logprobs = static_cast<int32_t>(i);
    srows[i] = SamplingRow{&rows[i].opts, rows[i].seed, 9, &rows[i].prompt, &rows[i].output, false,
                           &rows[i].eos};
  }
  Tensor lt{logits.data(), DType::F32, {n, vocab}};
  std::vector<SampleResult> out;
  be->sample(lt, srows, &out);
  ASSERT_EQ(out.size(), static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> row(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
    const SampleResult want = rows[i].sample(row, 9);
    EXPECT_EQ(out[i].token, want.token) << i;
    EXPECT_EQ(out[i].logprob, want.logprob) << i;
    EXPECT_EQ(out[i].top_logprobs, want.top_logprobs) << i;
  }
}

// ---------------------------------------------------------------- validation

void expect_rejected(const std::function<void(SamplingOptions&)>& edit, const std::string& param) {
  SamplingOptions o;
  edit(o);
  try {
    validate_sampling(o, 1000);
    ADD_FAILURE() << param << ": accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(param), std::string::npos) << e.what();
  }
}

TEST(Sampler, ValidateAcceptsDefaultsAndBoundaries) {
  SamplingOptions o;
  EXPECT_NO_THROW(validate_sampling(o, 1000));
  o.temperature = 0.0f;
  o.top_p = 1.0f;
  o.top_k = 0;
  o.min_p = 1.0f;
  o.presence_penalty = -2.0f;
  o.frequency_penalty = 2.0f;
  o.max_tokens = 1;
  o.min_tokens = 1;
  o.logprobs = 20;
  o.stop_token_ids = {0, 999};
  EXPECT_NO_THROW(validate_sampling(o, 1000));
  o.top_k = -1;
  o.min_p = 0.0f;
  o.logprobs = -1;
  o.repetition_penalty = 0.01f;
  o.top_p = 1e-6f;
  EXPECT_NO_THROW(validate_sampling(o, 1000));
}

TEST(Sampler, ValidateRejectsEachBadValueNamingTheParameter) {
  const float nan = std::nanf("");
  const float inf = INFINITY;
  expect_rejected([&](auto& o) { o.temperature = nan; }, "temperature");
  expect_rejected([&](auto& o) { o.temperature = -0.1f; }, "temperature");
  expect_rejected([&](auto& o) { o.temperature = inf; }, "temperature");
  expect_rejected([&](auto& o) { o.top_p = 0.0f; }, "top_p");
  expect_rejected([&](auto& o) { o.top_p = 1.01f; }, "top_p");
  expect_rejected([&](auto& o) { o.top_p = nan; }, "top_p");
  expect_rejected([&](auto& o) { o.top_k = -2; }, "top_k");
  expect_rejected([&](auto& o) { o.min_p = -0.01f; }, "min_p");
  expect_rejected([&](auto& o) { o.min_p = 1.5f; }, "min_p");
  expect_rejected([&](auto& o) { o.min_p = nan; }, "min_p");
  expect_rejected([&](auto& o) { o.repetition_penalty = 0.0f; }, "repetition_penalty");
  expect_rejected([&](auto& o) { o.repetition_penalty = -1.0f; }, "repetition_penalty");
  expect_rejected([&](auto& o) { o.repetition_penalty = nan; }, "repetition_penalty");
  expect_rejected([&](auto& o) { o.presence_penalty = 2.5f; }, "presence_penalty");
  expect_rejected([&](auto& o) { o.presence_penalty = -2.5f; }, "presence_penalty");
  expect_rejected([&](auto& o) { o.presence_penalty = nan; }, "presence_penalty");
  expect_rejected([&](auto& o) { o.frequency_penalty = 2.01f; }, "frequency_penalty");
  expect_rejected([&](auto& o) { o.frequency_penalty = -3.0f; }, "frequency_penalty");
  expect_rejected([&](auto& o) { o.frequency_penalty = nan; }, "frequency_penalty");
  expect_rejected([&](auto& o) { o.max_tokens = 0; }, "max_tokens");
  expect_rejected([&](auto& o) { o.min_tokens = -1; }, "min_tokens");
  expect_rejected([&](auto& o) { o.min_tokens = 17; }, "min_tokens");  // > max_tokens (16)
  expect_rejected([&](auto& o) { o.logprobs = -2; }, "logprobs");
  expect_rejected([&](auto& o) { o.logprobs = 21; }, "logprobs");
  expect_rejected([&](auto& o) { o.stop_token_ids = {5, 1000}; }, "stop_token_ids");
  expect_rejected([&](auto& o) { o.stop_token_ids = {-1}; }, "stop_token_ids");
}

}  // namespace
}  // namespace ember
