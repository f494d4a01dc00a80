// The GPU sampler against the reference sampler (sample_row via the CPU backend): the same tokens
// for the same seeds and steps across greedy, temperature, top-k, top-p, min-p and penalties, and
// logprobs within float tolerance. Skips (with a reason) where no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <string>

#include "cuda_test_util.h"

namespace ember::test {
namespace {

struct SampleCase {
  std::string name;
  SamplingOptions opts;
  int64_t vocab;
  DType dtype;
  bool plain = false;  // no banned EOS rows: greedy cases then take the many-blocks greedy path
};

void PrintTo(const SampleCase& c, std::ostream* os) { *os << c.name; }

SamplingOptions make(float temp, int top_k, float top_p, float min_p, float rep = 1.0f, float pres = 0.0f,
                     float freq = 0.0f, int logprobs = -1) {
  SamplingOptions o;
  o.temperature = temp;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  o.repetition_penalty = rep;
  o.presence_penalty = pres;
  o.frequency_penalty = freq;
  o.logprobs = logprobs;
  return o;
}

class CudaSampling : public testing::TestWithParam<SampleCase> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
};

TEST_P(CudaSampling, SameTokensAsReference) {
  const SampleCase& c = GetParam();
  const int64_t N = 48, V = c.vocab;
  // Logits spread like a model's (a few large ones), rounded to the dtype so that ties occur.
  auto logits = random_values(static_cast<size_t>(N * V), c.dtype, 31, -6.0f, 6.0f);
  std::mt19937 rng(32);
  for (int64_t r = 0; r < N; ++r)
    for (int j = 0; j < 5; ++j) logits[r * V + rng() % V] = round_to(c.dtype, 8.0f + (rng() % 100) * 0.05f);
  std::vector<std::vector<int32_t>> prompts(N), outputs(N);
  std::vector<int32_t> eos = {static_cast<int32_t>(V - 1), 2};
  std::vector<SamplingRow> rows(N);
  for (int64_t r = 0; r < N; ++r) {
    for (int i = 0; i < 20; ++i) prompts[r].push_back(static_cast<int32_t>(rng() % V));
    for (int i = 0; i < static_cast<int>(r % 9); ++i) outputs[r].push_back(static_cast<int32_t>(rng() % V));
    rows[r].opts = &c.opts;
    rows[r].seed = 1234 + static_cast<uint64_t>(r) * 7;
    rows[r].step = static_cast<uint64_t>(r) * 3;
    rows[r].prompt_tokens = &prompts[r];
    rows[r].output_tokens = &outputs[r];
    rows[r].suppress_eos = !c.plain && r % 4 == 0;
    rows[r].eos_ids = &eos;
  }
  Backend& gpu = cuda_backend();
  Backend& cpu = cpu_backend();
  auto gl = upload(gpu, logits, c.dtype, {N, V});
  auto cl = upload(cpu, logits, DType::F32, {N, V});
  std::vector<SampleResult> got, want;
  gpu.sample(gl.t, rows, &got);
  cpu.sample(cl.t, rows, &want);
  ASSERT_EQ(got.size(), want.size());
  int same = 0;
  for (int64_t r = 0; r < N; ++r) {
    EXPECT_EQ(got[r].token, want[r].token) << "row " << r;
    same += got[r].token == want[r].token;
    EXPECT_NEAR(got[r].logprob, want[r].logprob, 1e-3) << "row " << r;
    ASSERT_EQ(got[r].top_logprobs.size(), want[r].top_logprobs.size()) << "row " << r;
    for (size_t j = 0; j < got[r].top_logprobs.size(); ++j) {
      EXPECT_EQ(got[r].top_logprobs[j].first, want[r].top_logprobs[j].first) << "row " << r << " rank " << j;
      EXPECT_NEAR(got[r].top_logprobs[j].second, want[r].top_logprobs[j].second, 1e-3);
    }
    if (rows[r].suppress_eos) {
      EXPECT_NE(got[r].token, eos[0]);
      EXPECT_NE(got[r].token, eos[1]);
    }
  }
  // Sampled rows must actually vary (a broken draw that always picks the argmax would pass above
  // only for greedy cases).
  if (c.opts.temperature > 0.5f && c.opts.top_k != 1) {
    std::set<int32_t> distinct;
    for (const auto& g : got) distinct.insert(g.token);
    EXPECT_GT(distinct.size(), 3u);
  }
  EXPECT_EQ(same, N);
}

const SampleCase kCases[] = {
    {"greedy_f32", make(0.0f, -1, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 5), 1000, DType::F32},
    {"greedy_penalties_bf16", make(0.0f, -1, 1.0f, 0.0f, 1.3f, 0.5f, 0.4f), 32003, DType::BF16},
    {"temperature_f32", make(0.8f, -1, 1.0f, 0.0f), 5000, DType::F32},
    {"temperature_hot_f16", make(1.5f, -1, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 3), 151936, DType::F16},
    {"top_k_bf16", make(1.0f, 40, 1.0f, 0.0f), 32000, DType::BF16},
    {"top_p_f32", make(1.0f, -1, 0.9f, 0.0f), 32000, DType::F32},
    {"top_p_ties_bf16", make(1.2f, -1, 0.7f, 0.0f), 50257, DType::BF16},
    {"top_k_top_p_min_p_f16", make(0.9f, 100, 0.95f, 0.05f), 32000, DType::F16},
    {"min_p_f32", make(1.0f, -1, 1.0f, 0.2f), 4096, DType::F32},
    {"all_penalties_f32", make(1.0f, 50, 0.8f, 0.01f, 1.2f, 0.3f, -0.2f, 20), 7777, DType::F32},
    {"top_k_1_is_greedy", make(1.0f, 1, 1.0f, 0.0f), 999, DType::F32},
    {"plain_greedy_bf16", make(0.0f, -1, 1.0f, 0.0f), 128256, DType::BF16, true},
    {"plain_greedy_f32", make(0.0f, -1, 1.0f, 0.0f), 1000, DType::F32, true},
    {"plain_top_k_1_f16", make(1.0f, 1, 1.0f, 0.0f), 151936, DType::F16, true},
};

// Rows the greedy fast path must get right: all -inf (id 0, like the reference), NaN entries
// (skipped by the argmax), ties (lowest id), the best logit in the last partial block.
TEST(CudaGreedySampling, EdgeRowsMatchReference) {
  EMBER_REQUIRE_GPU();
  const int64_t V = 9000, N = 4;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> logits(static_cast<size_t>(N * V), 0.0f);
  for (int64_t i = 0; i < V; ++i) logits[i] = -inf;                 // row 0: all -inf
  logits[V + 5] = std::nanf(""), logits[V + 7] = 3.0f;              // row 1: NaN and a max
  logits[2 * V + 4100] = 2.0f, logits[2 * V + 8000] = 2.0f;         // row 2: tie across blocks
  for (int64_t i = 0; i < V; ++i) logits[3 * V + i] = -1.0f * (i % 17);
  logits[3 * V + V - 1] = 9.0f;                                     // row 3: best in the tail
  SamplingOptions greedy = make(0.0f, -1, 1.0f, 0.0f);
  std::vector<SamplingRow> rows(N);
  for (auto& r : rows) r.opts = &greedy;
  Backend& gpu = cuda_backend();
  auto gl = upload(gpu, logits, DType::F32, {N, V});
  std::vector<SampleResult> got;
  gpu.sample(gl.t, rows, &got);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].token, 0);
  EXPECT_EQ(got[1].token, 7);
  EXPECT_TRUE(std::isnan(got[1].logprob));  // the raw normaliser sums a NaN
  EXPECT_EQ(got[2].token, 4100);
  EXPECT_EQ(got[3].token, V - 1);
  std::vector<float> row3(logits.begin() + 3 * V, logits.end());
  double z = 0.0;
  for (float v : row3) z += std::exp(static_cast<double>(v) - 9.0);
  EXPECT_NEAR(got[3].logprob, -std::log(z), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Options, CudaSampling, testing::ValuesIn(kCases),
                         [](const testing::TestParamInfo<SampleCase>& i) { return i.param.name; });

}  // namespace
}  // namespace ember::test
