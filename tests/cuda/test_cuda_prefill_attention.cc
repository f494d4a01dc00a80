// The tensor-core prefill attention against a float64 host reference: chunks with and without a
// cached past, GQA ratios 1/4/5/8, head dims 64/128, scrambled block tables, pages of 1 to 32,
// mixed prefill+decode steps, every compiled kernel shape with 1 to 8 key splits. The DISABLED_
// benchmarks time Llama-3-8B's attention shape against the CUDA-core kernel and compare the kernel
// shapes and split counts.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <numeric>
#include <string>

#include "cuda_test_util.h"
#include "kernels/launchers.h"
#include "paged_attention_args.h"

namespace ember::test {
namespace {

using cuda::kPrefillRowsPerTile;
using cuda::PrefillAttentionArgs;
using cuda::PrefillMmaArgs;
using cuda::PrefillWorkItem;
using Seqs = std::vector<std::pair<int, int>>;  // (past length, chunk length)

// Step metadata for `seqs` over a scrambled page pool (a few spare pages nobody owns).
StepMeta make_step(const Seqs& seqs, int block_size, uint32_t seed, int64_t* num_slots) {
  StepMeta m;
  m.block_size = block_size;
  int max_blocks = 0, total_blocks = 0;
  for (auto [past, q] : seqs) {
    int blocks = (past + q + block_size - 1) / block_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
  }
  const int num_pages = total_blocks + 3;
  std::vector<int32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(seed));
  m.max_blocks_per_seq = max_blocks + 1;
  int next = 0, T = 0;
  m.query_start.push_back(0);
  for (auto [past, q] : seqs) {
    int L = past + q, blocks = (L + block_size - 1) / block_size;
    for (int b = 0; b < m.max_blocks_per_seq; ++b) m.block_tables.push_back(b < blocks ? pages[next + b] : -1);
    for (int j = 0; j < q; ++j) {
      int pos = past + j;
      m.token_ids.push_back(0);
      m.positions.push_back(pos);
      m.slot_mapping.push_back(pages[next + pos / block_size] * block_size + pos % block_size);
    }
    next += blocks;
    T += q;
    m.query_start.push_back(T);
    m.seq_lens.push_back(L);
  }
  *num_slots = static_cast<int64_t>(num_pages) * block_size;
  return m;
}

// Causal attention in float64 over the paged cache: query j of a chunk of qlen sits at L - qlen + j.
std::vector<float> reference(const std::vector<float>& q, const std::vector<float>& kc, const std::vector<float>& vc,
                             const StepMeta& m, int Hq, int Hk, int D, float scale) {
  std::vector<float> out(q.size());
  const int G = Hq / Hk;
  std::vector<double> sc, acc(D);
  for (size_t s = 0; s + 1 < m.query_start.size(); ++s) {
    const int q0 = m.query_start[s], qlen = m.query_start[s + 1] - q0, L = m.seq_lens[s];
    const int32_t* table = m.block_tables.data() + s * m.max_blocks_per_seq;
    for (int j = 0; j < qlen; ++j) {
      const int pos = L - qlen + j;
      for (int h = 0; h < Hq; ++h) {
        const float* qr = q.data() + (static_cast<size_t>(q0 + j) * Hq + h) * D;
        sc.assign(pos + 1, 0.0);
        double mx = -1e300;
        for (int t = 0; t <= pos; ++t) {
          const int64_t slot = static_cast<int64_t>(table[t / m.block_size]) * m.block_size + t % m.block_size;
          const float* kr = kc.data() + (slot * Hk + h / G) * D;
          double d = 0.0;
          for (int i = 0; i < D; ++i) d += static_cast<double>(qr[i]) * kr[i];
          sc[t] = d * scale;
          mx = std::max(mx, sc[t]);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0.0;
        for (int t = 0; t <= pos; ++t) {
          const int64_t slot = static_cast<int64_t>(table[t / m.block_size]) * m.block_size + t % m.block_size;
          const float* vr = vc.data() + (slot * Hk + h / G) * D;
          const double p = std::exp(sc[t] - mx);
          sum += p;
          for (int i = 0; i < D; ++i) acc[i] += p * vr[i];
        }
        float* orow = out.data() + (static_cast<size_t>(q0 + j) * Hq + h) * D;
        for (int i = 0; i < D; ++i) orow[i] = static_cast<float>(acc[i] / sum);
      }
    }
  }
  return out;
}

struct PrefillCase {
  std::string name;
  Seqs seqs;
  int Hq, Hk, D, block_size;
};
void PrintTo(const PrefillCase& c, std::ostream* os) { *os << c.name; }

Seqs many_seqs() {
  std::mt19937 rng(7);
  Seqs s;
  for (int i = 0; i < 45; ++i) s.push_back({static_cast<int>(rng() % 200), 1 + static_cast<int>(rng() % 40)});
  return s;
}

const PrefillCase kCases[] = {
    {"single_chunk_gqa4_d128", {{0, 300}}, 8, 2, 128, 16},
    {"chunk_with_past_gqa8_d128", {{517, 200}}, 16, 2, 128, 16},
    {"mha_two_seqs_d64", {{0, 257}, {64, 130}}, 4, 4, 64, 16},
    {"gqa8_d64_block32", {{33, 95}, {1000, 64}}, 8, 1, 64, 32},
    {"mixed_prefill_decode_llama_heads", {{0, 19}, {60, 1}, {33, 7}, {5, 1}, {250, 129}, {0, 1}}, 32, 8, 128, 16},
    {"block8_past_not_page_aligned", {{13, 77}}, 12, 3, 128, 8},
    {"many_seqs_d64", many_seqs(), 8, 2, 64, 16},
    {"long_past_short_chunk", {{2000, 17}}, 32, 8, 128, 16},
    {"gqa5_d128_past", {{300, 450}}, 10, 2, 128, 16},
    {"gqa5_d64_block1_two_seqs", {{37, 90}, {0, 33}}, 5, 1, 64, 1},
    {"long_chunk_mha_d128", {{0, 700}}, 2, 2, 128, 16},
    {"fallback_d96", {{40, 33}}, 8, 2, 96, 16},
    // Short chunks over long pasts, beside short ones: the backend splits the keys.
    {"splits_mixed_pasts_gqa4_d64_block1", {{700, 40}, {0, 65}, {1500, 3}, {260, 130}}, 16, 4, 64, 1},
    {"splits_long_past_mha_d128_block32", {{1200, 50}, {90, 1}, {2500, 140}}, 4, 4, 128, 32},
    {"splits_gqa8_d128_pasts", {{3000, 30}, {513, 300}, {0, 100}}, 16, 2, 128, 16},
    {"splits_gqa5_d64", {{2100, 70}, {20, 260}}, 10, 2, 64, 16},
};
const DType kDtypes[] = {DType::F16, DType::BF16, DType::F32};

class CudaPrefillAttention : public testing::TestWithParam<std::tuple<PrefillCase, DType>> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
};

// One case's step, random q and caches on the GPU, and the host reference output.
struct CaseInputs {
  CaseInputs(const PrefillCase& c, DType dt, Backend& gpu) {
    int64_t slots = 0;
    m = make_step(c.seqs, c.block_size, 18, &slots);
    T = m.query_start.back();
    auto q = random_values(static_cast<size_t>(T) * c.Hq * c.D, dt, 19, -2.0f, 2.0f);
    auto kc = random_values(static_cast<size_t>(slots) * c.Hk * c.D, dt, 20, -2.0f, 2.0f);
    auto vc = random_values(static_cast<size_t>(slots) * c.Hk * c.D, dt, 21);
    gq = upload(gpu, q, dt, {T, c.Hq, c.D});
    gk = upload(gpu, kc, dt, {slots, c.Hk, c.D});
    gv = upload(gpu, vc, dt, {slots, c.Hk, c.D});
    scale = 1.0f / std::sqrt(static_cast<float>(c.D));
    want = reference(q, kc, vc, m, c.Hq, c.Hk, c.D, scale);
  }
  StepMeta m;
  int64_t T = 0;
  Owned gq, gk, gv;
  float scale = 0.0f;
  std::vector<float> want;
};

TEST_P(CudaPrefillAttention, MatchesHostReference) {
  const auto& [c, dt] = GetParam();
  Backend& gpu = cuda_backend();
  CaseInputs in(c, dt, gpu);
  const StepMeta& m = in.m;
  const int64_t T = in.T;
  auto &gq = in.gq, &gk = in.gk, &gv = in.gv;
  const float scale = in.scale;
  const auto& want = in.want;

  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {  // fresh poisoned output each time; the two runs must agree exactly
    auto go = empty(gpu, dt, {T, c.Hq, c.D});
    gpu.attention(gq.t, gk.t, gv.t, gpu.upload_step(m), scale, go.t);
    auto got = download(gpu, go.t);
    if (run == 0) {
      const double tol = dt == DType::F32 ? 1e-4 : tolerance(dt);
      EXPECT_LT(rel_error(got, want), tol);
      double worst = 0.0;
      int64_t worst_row = -1;
      for (int64_t r = 0; r < T * c.Hq; ++r) {
        std::vector<float> g(got.begin() + r * c.D, got.begin() + (r + 1) * c.D);
        std::vector<float> w(want.begin() + r * c.D, want.begin() + (r + 1) * c.D);
        double e = rel_error(g, w);
        if (e > worst) worst = e, worst_row = r;
      }
      EXPECT_LT(worst, 4 * tol) << "worst (token, head) row " << worst_row / c.Hq << ", " << worst_row % c.Hq;
      first = std::move(got);
    } else {
      EXPECT_TRUE(first == got) << "two runs on the same inputs differ";
    }
  }
}

std::string case_name(const testing::TestParamInfo<std::tuple<PrefillCase, DType>>& i) {
  return std::get<0>(i.param).name + "_" + dtype_name(std::get<1>(i.param));
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaPrefillAttention, testing::Combine(testing::ValuesIn(kCases), testing::ValuesIn(kDtypes)),
                         case_name);

// Arguments for launching the tensor-core kernel directly, built and tiled as the backend does.
PrefillMmaArgs mma_args(const Tensor& q, const Tensor& kc, const Tensor& vc, Tensor& out, const DeviceStep& ds,
                        const StepMeta& m, int Hq, int Hk, int D, float scale) {
  PrefillMmaArgs a = cuda::paged_attention_args<PrefillMmaArgs>(q, kc, vc, out, ds, Hq, Hk, D, scale);
  a.num_seqs = ds.num_seqs;
  a.num_tiles = static_cast<int>(cuda::prefill_mma_tiles(m.query_start, Hq / Hk));
  a.num_splits = 1;
  return a;
}

// Points `a` at `ws` for `splits` key splits (0: the backend's automatic choice); `ws` grows to fit.
void set_splits(PrefillMmaArgs& a, int splits, int64_t T, int max_seq_len, Backend& gpu, Buffer& ws) {
  a.num_splits = splits > 0 ? splits : cuda::prefill_attention_mma_splits(a.num_tiles, a.num_kv_heads, max_seq_len);
  a.part_acc = a.part_ml = nullptr;
  if (a.num_splits == 1) return;
  const size_t per = static_cast<size_t>(T) * a.num_heads * a.num_splits;
  const size_t bytes = per * (a.head_dim + 2) * sizeof(float);
  if (!ws.get() || ws.bytes() < bytes) {
    ws = Buffer();  // the old one goes first: the bench's forced splits of a long chunk take a lot
    ws = gpu.allocate(bytes, "split-K partials");
  }
  a.part_acc = static_cast<float*>(ws.get());
  a.part_ml = a.part_acc + per * a.head_dim;
}

// The backend runs one shape and split count; every other compiled shape and split count must be
// just as correct. 8 splits leave some splits with no key for some rows (or for any row).
TEST(CudaPrefillAttentionShapes, EveryShapeMatchesHostReference) {
  EMBER_REQUIRE_GPU();
  Backend& gpu = cuda_backend();
  for (const PrefillCase& c : kCases) {
    if (!cuda::prefill_attention_mma_supported(DType::BF16, c.D)) continue;
    for (DType dt : {DType::F16, DType::BF16}) {
      CaseInputs in(c, dt, gpu);
      const StepMeta& m = in.m;
      const int64_t T = in.T;
      auto &gq = in.gq, &gk = in.gk, &gv = in.gv;
      const float scale = in.scale;
      const auto& want = in.want;
      const DeviceStep ds = gpu.upload_step(m);
      gpu.synchronize();
      const int max_seq_len = *std::max_element(m.seq_lens.begin(), m.seq_lens.end());
      Buffer ws;
      for (int splits : {1, 2, 3, 4, 8, 0}) {
        for (int shape = -1; shape < cuda::prefill_attention_mma_shapes(); ++shape) {
          auto go = empty(gpu, dt, {T, c.Hq, c.D});
          gpu.synchronize();
          PrefillMmaArgs a = mma_args(gq.t, gk.t, gv.t, go.t, ds, m, c.Hq, c.Hk, c.D, scale);
          set_splits(a, splits, T, max_seq_len, gpu, ws);
          const cudaError_t err = cuda::launch_prefill_attention_mma_shape(a, dt, shape, nullptr);
          ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const auto got = download(gpu, go.t);
          const double err_rel = rel_error(got, want);
          double worst = 0.0;
          for (int64_t r = 0; r < T * c.Hq; ++r) {
            std::vector<float> g(got.begin() + r * c.D, got.begin() + (r + 1) * c.D);
            std::vector<float> w(want.begin() + r * c.D, want.begin() + (r + 1) * c.D);
            worst = std::max(worst, rel_error(g, w));
          }
          const std::string what = c.name + " " + dtype_name(dt) + " shape " +
                                   (shape < 0 ? "auto" : cuda::prefill_attention_mma_shape_name(shape)) +
                                   " splits " + std::to_string(a.num_splits) + (splits == 0 ? " (auto)" : "");
          EXPECT_LT(err_rel, tolerance(dt)) << what;
          EXPECT_LT(worst, 4 * tolerance(dt)) << what << " (worst row)";
        }
      }
    }
  }
}

TEST(CudaPrefillAttentionShapes, RejectsBadSplitArguments) {
  EMBER_REQUIRE_GPU();
  PrefillMmaArgs a{};
  a.num_seqs = 1;
  a.num_tiles = 1;
  a.num_heads = a.num_kv_heads = 1;
  a.head_dim = 64;
  a.max_blocks_per_seq = a.block_size = 1;
  a.scale = 1.0f;
  a.num_splits = 0;
  EXPECT_EQ(cuda::launch_prefill_attention_mma(a, DType::BF16, nullptr), cudaErrorInvalidValue);
  a.num_splits = 2;  // partials missing
  EXPECT_EQ(cuda::launch_prefill_attention_mma(a, DType::BF16, nullptr), cudaErrorInvalidValue);
  a.num_splits = cuda::kPrefillMmaMaxSplits + 1;
  EXPECT_EQ(cuda::launch_prefill_attention_mma(a, DType::BF16, nullptr), cudaErrorInvalidValue);
}

// Few blocks over a long past split; blocks that fill the chip, or few keys, do not.
TEST(CudaPrefillAttentionShapes, AutomaticSplitCount) {
  EMBER_REQUIRE_GPU();
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  // Llama-3-8B heads: a 2048-token chunk gives 64 tiles x 8 kv heads, a 512-token one 16 x 8.
  EXPECT_EQ(cuda::prefill_attention_mma_splits(64, 8, 8192), 1);
  if (16 * 8 < 2 * sms) {
    EXPECT_GT(cuda::prefill_attention_mma_splits(16, 8, 8192), 1);
    EXPECT_EQ(cuda::prefill_attention_mma_splits(16, 8, 200), 1);  // too few keys to share
  }
  EXPECT_GE(cuda::prefill_attention_mma_splits(1, 1, 1 << 20), 1);
  EXPECT_LE(cuda::prefill_attention_mma_splits(1, 1, 1 << 20), cuda::kPrefillMmaMaxSplits);
}

// ---- benchmark: Llama-3-8B attention (32 q heads, 8 kv heads, D=128, bf16, pages of 16) ----

double causal_flops(int past, int chunk, int Hq, int D) {
  double keys = 0.0;  // sum over the chunk's queries of the keys each sees
  for (int j = 0; j < chunk; ++j) keys += past + j + 1;
  return 4.0 * D * Hq * keys;
}

void check_cuda(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

// Kernel time of `launch` in ms: median of five runs timed with events on the default stream,
// after one warm-up run.
float median_ms(const std::function<void()>& launch) {
  cudaEvent_t e0, e1;
  check_cuda(cudaEventCreate(&e0), "event");
  check_cuda(cudaEventCreate(&e1), "event");
  launch();
  check_cuda(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> t;
  for (int r = 0; r < 5; ++r) {
    check_cuda(cudaEventRecord(e0, nullptr), "record");
    launch();
    check_cuda(cudaEventRecord(e1, nullptr), "record");
    check_cuda(cudaEventSynchronize(e1), "sync");
    float x = 0.0f;
    check_cuda(cudaEventElapsedTime(&x, e0, e1), "elapsed");
    t.push_back(x);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One sequence of `total` tokens whose pages are scrambled, prefilled in chunks: each chunk step
// sees the earlier chunks as its past.
std::vector<StepMeta> chunk_steps(int total, int chunk, int block_size, int64_t* slots) {
  const StepMeta full = make_step({{0, total}}, block_size, 5, slots);
  std::vector<StepMeta> steps;
  for (int past = 0; past < total; past += chunk) {
    StepMeta m = full;
    m.query_start = {0, chunk};
    m.seq_lens = {past + chunk};
    m.token_ids.assign(chunk, 0);
    m.positions.resize(chunk);
    std::iota(m.positions.begin(), m.positions.end(), past);
    m.slot_mapping.assign(full.slot_mapping.begin() + past, full.slot_mapping.begin() + past + chunk);
    steps.push_back(std::move(m));
  }
  return steps;
}

// What every bench runs on: a prompt of `total` tokens prefilled in chunks of `chunk` (the chunk
// steps, the paged K/V of the whole prompt, one chunk's q) and the causal FLOPs of all its chunks.
struct ChunkedPrompt {
  std::vector<StepMeta> steps;
  Owned kc, vc, q;
  double flops = 0.0;
};
ChunkedPrompt chunked_prompt(Backend& gpu, int total, int chunk, int Hq, int Hk, int D, int block_size, DType dt) {
  ChunkedPrompt p;
  int64_t slots = 0;
  p.steps = chunk_steps(total, chunk, block_size, &slots);
  p.kc = upload(gpu, random_values(static_cast<size_t>(slots) * Hk * D, dt, 30, -2.0f, 2.0f), dt, {slots, Hk, D});
  p.vc = upload(gpu, random_values(static_cast<size_t>(slots) * Hk * D, dt, 31), dt, {slots, Hk, D});
  p.q = upload(gpu, random_values(static_cast<size_t>(chunk) * Hq * D, dt, 32, -2.0f, 2.0f), dt, {chunk, Hq, D});
  for (int past = 0; past < total; past += chunk) p.flops += causal_flops(past, chunk, Hq, D);
  return p;
}

TEST(CudaPrefillAttentionBench, DISABLED_Llama3_8B) {
  EMBER_REQUIRE_GPU();
  Backend& gpu = cuda_backend();
  constexpr int Hq = 32, Hk = 8, D = 128, kBlock = 16;
  const DType dt = DType::BF16;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::printf("%-22s %12s %12s %12s %12s %8s\n", "prompt/chunk", "GFLOP", "new ms", "new TFLOP/s", "old TFLOP/s",
              "speedup");
  for (auto [total, chunk] : std::vector<std::pair<int, int>>{{2048, 2048}, {2048, 512}, {8192, 8192}, {8192, 512}}) {
    const ChunkedPrompt p = chunked_prompt(gpu, total, chunk, Hq, Hk, D, kBlock, dt);
    const std::vector<StepMeta>& steps = p.steps;
    const Owned &kc = p.kc, &vc = p.vc, &q = p.q;
    const double flops = p.flops;
    auto out_new = empty(gpu, dt, {chunk, Hq, D});
    auto out_old = empty(gpu, dt, {chunk, Hq, D});

    auto run_new = [&] {
      for (const StepMeta& m : steps) gpu.attention(q.t, kc.t, vc.t, gpu.upload_step(m), scale, out_new.t);
      gpu.synchronize();
    };
    // The CUDA-core kernel, launched directly on the legacy stream with its 16-row work items.
    std::vector<PrefillWorkItem> items;
    for (int r = 0; r < chunk * (Hq / Hk); r += kPrefillRowsPerTile) items.push_back({0, r});
    Buffer items_buf = gpu.allocate(items.size() * sizeof(PrefillWorkItem), "bench work items");
    gpu.copy_to_device(items_buf.get(), items.data(), items.size() * sizeof(PrefillWorkItem));
    auto run_old = [&] {
      for (const StepMeta& m : steps) {
        DeviceStep ds = gpu.upload_step(m);
        gpu.synchronize();
        auto a = cuda::paged_attention_args<PrefillAttentionArgs>(q.t, kc.t, vc.t, out_old.t, ds, Hq, Hk, D, scale);
        a.items = static_cast<const PrefillWorkItem*>(items_buf.get());
        a.num_items = static_cast<int>(items.size());
        check_cuda(cuda::launch_prefill_attention(a, dt, nullptr), "old prefill kernel");
        check_cuda(cudaDeviceSynchronize(), "old prefill kernel");
      }
    };
    auto time_ms = [](auto&& fn, int reps) {
      std::vector<double> t;
      for (int i = 0; i < reps; ++i) {
        auto a = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    run_new();  // warm-up
    const double new_ms = time_ms(run_new, 7);
    run_old();
    const double old_ms = time_ms(run_old, total > 4096 ? 1 : 3);
    // Both kernels computed the last chunk into their outputs: they must agree.
    const double diff = rel_error(download(gpu, out_new.t), download(gpu, out_old.t));
    EXPECT_LT(diff, tolerance(dt));
    char label[64];
    std::snprintf(label, sizeof label, "%d/%d", total, chunk);
    std::printf("%-22s %12.1f %12.3f %12.1f %12.1f %7.1fx   (new vs old rel diff %.2e)\n", label, flops / 1e9, new_ms,
                flops / new_ms / 1e9, flops / old_ms / 1e9, old_ms / new_ms, diff);
  }
}

// Kernel time only (events around each launch, median of five after a warm-up), summed over the
// chunk steps, for every compiled shape of the tensor-core kernel.
TEST(CudaPrefillAttentionBench, DISABLED_Llama3_8B_Shapes) {
  EMBER_REQUIRE_GPU();
  Backend& gpu = cuda_backend();
  constexpr int Hq = 32, Hk = 8, D = 128, kBlock = 16;
  const DType dt = DType::BF16;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int n = cuda::prefill_attention_mma_shapes();
  std::printf("TFLOP/s by kernel shape (kernel time only)\n%-12s %8s", "prompt/chunk", "auto");
  for (int i = 0; i < n; ++i) std::printf(" %14s", cuda::prefill_attention_mma_shape_name(i));
  std::printf("\n");
  for (auto [total, chunk] : std::vector<std::pair<int, int>>{
           {2048, 2048}, {2048, 512}, {8192, 8192}, {8192, 2048}, {8192, 1024}, {8192, 512}}) {
    const ChunkedPrompt p = chunked_prompt(gpu, total, chunk, Hq, Hk, D, kBlock, dt);
    const std::vector<StepMeta>& steps = p.steps;
    const Owned &kc = p.kc, &vc = p.vc, &q = p.q;
    const double flops = p.flops;
    auto out = empty(gpu, dt, {chunk, Hq, D});
    std::vector<double> ms(n + 1, 0.0);  // [0]: the launcher's choice
    for (const StepMeta& m : steps) {
      const DeviceStep ds = gpu.upload_step(m);
      gpu.synchronize();
      const PrefillMmaArgs a = mma_args(q.t, kc.t, vc.t, out.t, ds, m, Hq, Hk, D, scale);
      for (int shape = -1; shape < n; ++shape) {
        ms[shape + 1] += median_ms([&] {
          check_cuda(cuda::launch_prefill_attention_mma_shape(a, dt, shape, nullptr), "prefill mma");
        });
      }
    }
    char label[64];
    std::snprintf(label, sizeof label, "%d/%d", total, chunk);
    std::printf("%-12s", label);
    for (int i = 0; i <= n; ++i) std::printf(i == 0 ? " %8.1f" : " %14.1f", flops / ms[i] / 1e9);
    std::printf("   (ms: auto %.3f", ms[0]);
    for (int i = 1; i <= n; ++i) std::printf(", %.3f", ms[i]);
    std::printf(")\n");
  }
}

// Kernel time of a whole chunked prompt (attention and merge of every chunk step launched back to
// back between two events, median of five after a warm-up): the automatic split count against one
// split (the launch as it was before the splits) and fixed counts, each with the launcher's shape.
TEST(CudaPrefillAttentionBench, DISABLED_Llama3_8B_Splits) {
  EMBER_REQUIRE_GPU();
  Backend& gpu = cuda_backend();
  constexpr int Hq = 32, Hk = 8, D = 128, kBlock = 16;
  const DType dt = DType::BF16;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const std::vector<int> variants = {0, 1, 2, 4, 8};  // 0: automatic
  std::printf("ms and TFLOP/s by key splits (whole prompt, kernels back to back; auto's last-chunk count in "
              "brackets)\n%-13s %8s", "prompt/chunk", "GFLOP");
  for (int v : variants) std::printf("  %17s", v == 0 ? "auto" : (std::to_string(v) + " split").c_str());
  std::printf("\n");
  Buffer ws;
  for (auto [total, chunk] : std::vector<std::pair<int, int>>{
           {2048, 2048}, {8192, 8192}, {8192, 1024}, {8192, 512}, {8192, 256}, {32768, 512}}) {
    const ChunkedPrompt p = chunked_prompt(gpu, total, chunk, Hq, Hk, D, kBlock, dt);
    const std::vector<StepMeta>& steps = p.steps;
    const Owned &kc = p.kc, &vc = p.vc, &q = p.q;
    const double flops = p.flops;
    auto out_auto = empty(gpu, dt, {chunk, Hq, D});
    auto out_one = empty(gpu, dt, {chunk, Hq, D});
    auto out_other = empty(gpu, dt, {chunk, Hq, D});
    // The chunk steps share the page table and query_start ({0, chunk}); only the sequence length
    // differs, so every step's length sits in one device array.
    const DeviceStep ds = gpu.upload_step(steps.front());
    std::vector<int32_t> lens;
    for (const StepMeta& m : steps) lens.push_back(m.seq_lens[0]);
    Buffer lens_buf = gpu.allocate(lens.size() * sizeof(int32_t), "bench sequence lengths");
    gpu.copy_to_device(lens_buf.get(), lens.data(), lens.size() * sizeof(int32_t));
    gpu.synchronize();
    std::vector<double> ms(variants.size(), 0.0);
    int auto_splits = 0;
    for (size_t i = 0; i < variants.size(); ++i) {
      Tensor& out = variants[i] == 0 ? out_auto.t : variants[i] == 1 ? out_one.t : out_other.t;
      std::vector<PrefillMmaArgs> args;
      int most = 1;
      for (size_t k = 0; k < steps.size(); ++k) {
        PrefillMmaArgs a = mma_args(q.t, kc.t, vc.t, out, ds, steps[k], Hq, Hk, D, scale);
        a.seq_lens = static_cast<const int32_t*>(lens_buf.get()) + k;
        a.num_splits = variants[i] > 0 ? variants[i] : cuda::prefill_attention_mma_splits(a.num_tiles, Hk, lens[k]);
        most = std::max(most, a.num_splits);
        args.push_back(a);
      }
      if (variants[i] == 0) auto_splits = args.back().num_splits;
      const size_t per_split = static_cast<size_t>(chunk) * Hq;
      const size_t bytes = per_split * most * (D + 2) * sizeof(float);
      if (most > 1 && (!ws.get() || ws.bytes() < bytes)) {
        ws = Buffer();
        ws = gpu.allocate(bytes, "split-K partials");
      }
      for (PrefillMmaArgs& a : args) {
        if (a.num_splits == 1) continue;
        a.part_acc = static_cast<float*>(ws.get());
        a.part_ml = a.part_acc + per_split * a.num_splits * D;
      }
      ms[i] = median_ms([&] {
        for (const PrefillMmaArgs& a : args) check_cuda(cuda::launch_prefill_attention_mma(a, dt, nullptr), "prefill mma");
      });
    }
    // The last chunk's output, automatic split count against one split.
    const double diff = rel_error(download(gpu, out_auto.t), download(gpu, out_one.t));
    EXPECT_LT(diff, tolerance(dt));
    char label[64];
    std::snprintf(label, sizeof label, "%d/%d", total, chunk);
    std::printf("%-13s %8.1f", label, flops / 1e9);
    for (size_t i = 0; i < variants.size(); ++i) {
      const std::string note = i == 0 ? "[" + std::to_string(auto_splits) + "]" : "";
      std::printf("  %8.3f %6.1f%-3s", ms[i], flops / ms[i] / 1e9, note.c_str());
    }
    std::printf("   (auto vs 1 split rel diff %.2e)\n", diff);
  }
}

}  // namespace
}  // namespace ember::test
