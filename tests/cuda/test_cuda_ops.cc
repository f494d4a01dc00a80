// Every op of the CUDA backend against the CPU reference backend, over odd and large shapes and
// the three float dtypes, with a tolerance per dtype. Skips (with a reason) where no GPU is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>

#include "cuda_test_util.h"

namespace ember::test {
namespace {

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};

std::string dt_name(const testing::TestParamInfo<DType>& i) { return dtype_name(i.param); }

class CudaOps : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
  Backend& gpu() { return cuda_backend(); }
  Backend& cpu() { return cpu_backend(); }
  DType dt() const { return GetParam(); }
};

TEST_P(CudaOps, Embedding) {
  for (auto [V, H, n] : {std::tuple<int64_t, int64_t, int64_t>{37, 67, 1}, {37, 67, 13}, {1000, 4096, 9}}) {
    auto table = random_values(V * H, dt(), 1);
    StepMeta m;
    std::mt19937 rng(2);
    for (int64_t i = 0; i < n; ++i) m.token_ids.push_back(static_cast<int32_t>(rng() % V));
    m.positions = m.slot_mapping = m.token_ids;
    auto g_tab = upload(gpu(), table, dt(), {V, H});
    auto c_tab = upload(cpu(), table, DType::F32, {V, H});
    auto g_out = empty(gpu(), dt(), {n, H});
    auto c_out = empty(cpu(), DType::F32, {n, H});
    gpu().embed(g_tab.t, gpu().upload_step(m).token_ids, n, g_out.t);
    cpu().embed(c_tab.t, cpu().upload_step(m).token_ids, n, c_out.t);
    EXPECT_EQ(rel_error(download(gpu(), g_out.t), download(cpu(), c_out.t)), 0.0) << V << "x" << H;
  }
}

TEST_P(CudaOps, RmsNormAndFusedAdd) {
  // Covers the scalar path (odd dims, rows too wide) and each register-held vector count.
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 67}, {7, 67}, {33, 4096}, {3, 5120}, {1, 4096}, {2, 8192},
                           {1, 16384}, {5, 2048}, {4, 64}}) {
    auto x = random_values(rows * dim, dt(), 3, -3.0f, 3.0f);
    auto d = random_values(rows * dim, dt(), 4);
    auto w = random_values(dim, DType::F32, 5, 0.5f, 1.5f);
    auto gx = upload(gpu(), x, dt(), {rows, dim}), cx = upload(cpu(), x, DType::F32, {rows, dim});
    auto gw = upload(gpu(), w, DType::F32, {dim}), cw = upload(cpu(), w, DType::F32, {dim});
    auto go = empty(gpu(), dt(), {rows, dim}), co = empty(cpu(), DType::F32, {rows, dim});
    gpu().rms_norm(gx.t, gw.t, 1e-6f, go.t);
    cpu().rms_norm(cx.t, cw.t, 1e-6f, co.t);
    EXPECT_LT(rel_error(download(gpu(), go.t), download(cpu(), co.t)), tolerance(dt())) << rows << "x" << dim;

    // residual += delta, rounded to the activation dtype, then normalised.
    auto gd = upload(gpu(), d, dt(), {rows, dim});
    std::vector<float> summed(x.size());
    for (size_t i = 0; i < x.size(); ++i) summed[i] = round_to(dt(), x[i] + d[i]);
    auto cres = upload(cpu(), x, DType::F32, {rows, dim});
    auto cd = upload(cpu(), d, DType::F32, {rows, dim});
    gpu().add_rms_norm(gx.t, gd.t, gw.t, 1e-5f, go.t);
    cpu().add_rms_norm(cres.t, cd.t, cw.t, 1e-5f, co.t);
    EXPECT_LT(rel_error(download(gpu(), gx.t), summed), tolerance(dt()) * 0.1) << "residual";
    EXPECT_LT(rel_error(download(gpu(), go.t), download(cpu(), co.t)), tolerance(dt())) << rows << "x" << dim;
  }
}

TEST_P(CudaOps, Matmul) {
  struct Case { int64_t T, K, N; bool bias; };
  for (Case c : {Case{1, 64, 96, false}, Case{7, 129, 67, true}, Case{33, 4096, 512, true}, Case{300, 96, 1000, false}}) {
    auto x = random_values(c.T * c.K, dt(), 6);
    auto w = random_values(c.N * c.K, dt(), 7, -0.2f, 0.2f);
    auto b = random_values(c.N, DType::F32, 8);
    auto gx = upload(gpu(), x, dt(), {c.T, c.K}), cx = upload(cpu(), x, DType::F32, {c.T, c.K});
    auto gw = upload(gpu(), w, dt(), {c.N, c.K}), cw = upload(cpu(), w, DType::F32, {c.N, c.K});
    auto gb = upload(gpu(), b, DType::F32, {c.N}), cb = upload(cpu(), b, DType::F32, {c.N});
    auto go = empty(gpu(), dt(), {c.T, c.N}), co = empty(cpu(), DType::F32, {c.T, c.N});
    gpu().matmul(gx.t, gw.t, c.bias ? &gb.t : nullptr, go.t);
    cpu().matmul(cx.t, cw.t, c.bias ? &cb.t : nullptr, co.t);
    EXPECT_LT(rel_error(download(gpu(), go.t), download(cpu(), co.t)), tolerance(dt()))
        << c.T << "x" << c.K << "x" << c.N;
  }
}

TEST_P(CudaOps, Rope) {
  for (bool neox : {true, false}) {
    for (auto [T, Hq, Hk, D] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 4, 2, 64}, {9, 6, 2, 128}, {5, 3, 3, 80}}) {
      auto q = random_values(T * Hq * D, dt(), 9), k = random_values(T * Hk * D, dt(), 10);
      std::vector<float> inv(D / 2);
      for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(500000.0f, -2.0f * i / D);
      StepMeta m;
      std::mt19937 rng(11);
      for (int64_t t = 0; t < T; ++t) m.positions.push_back(static_cast<int32_t>(rng() % 40000));
      m.token_ids = m.slot_mapping = m.positions;
      auto gq = upload(gpu(), q, dt(), {T, Hq, D}), gk = upload(gpu(), k, dt(), {T, Hk, D});
      auto cq = upload(cpu(), q, DType::F32, {T, Hq, D}), ck = upload(cpu(), k, DType::F32, {T, Hk, D});
      auto gi = upload(gpu(), inv, DType::F32, {D / 2}), ci = upload(cpu(), inv, DType::F32, {D / 2});
      gpu().rope(gq.t, gk.t, gpu().upload_step(m).positions, gi.t.as<float>(), neox);
      cpu().rope(cq.t, ck.t, cpu().upload_step(m).positions, ci.t.as<float>(), neox);
      double tol = std::max(tolerance(dt()), 1e-4);  // sin/cos of angles up to 4e4 rad
      EXPECT_LT(rel_error(download(gpu(), gq.t), download(cpu(), cq.t)), tol) << "q neox=" << neox << " D=" << D;
      EXPECT_LT(rel_error(download(gpu(), gk.t), download(cpu(), ck.t)), tol) << "k neox=" << neox << " D=" << D;
    }
  }
}

TEST_P(CudaOps, SiluMulAddGather) {
  for (auto [T, F] : {std::pair<int64_t, int64_t>{1, 11}, {13, 1000}, {64, 14336}, {3, 8}, {1, 14336}, {2, 36}}) {
    auto x = random_values(T * 2 * F, dt(), 12, -4.0f, 4.0f);
    auto gx = upload(gpu(), x, dt(), {T, 2 * F}), cx = upload(cpu(), x, DType::F32, {T, 2 * F});
    auto go = empty(gpu(), dt(), {T, F}), co = empty(cpu(), DType::F32, {T, F});
    gpu().silu_mul(gx.t, go.t);
    cpu().silu_mul(cx.t, co.t);
    EXPECT_LT(rel_error(download(gpu(), go.t), download(cpu(), co.t)), tolerance(dt())) << "silu_mul " << T << "x" << F;

    auto b = random_values(T * F, dt(), 13);
    auto gb = upload(gpu(), b, dt(), {T, F}), cb = upload(cpu(), b, DType::F32, {T, F});
    gpu().add(go.t, gb.t);
    cpu().add(co.t, cb.t);
    EXPECT_LT(rel_error(download(gpu(), go.t), download(cpu(), co.t)), tolerance(dt())) << "add";

    StepMeta m;
    for (int64_t i = T - 1; i >= 0; i -= 2) m.logits_indices.push_back(static_cast<int32_t>(i));
    const int64_t n = static_cast<int64_t>(m.logits_indices.size());
    auto gg = empty(gpu(), dt(), {n, F}), cg = empty(cpu(), DType::F32, {n, F});
    gpu().gather_rows(go.t, gpu().upload_step(m).logits_indices, n, gg.t);
    cpu().gather_rows(co.t, cpu().upload_step(m).logits_indices, n, cg.t);
    EXPECT_LT(rel_error(download(gpu(), gg.t), download(cpu(), cg.t)), tolerance(dt())) << "gather_rows";
  }
}

TEST_P(CudaOps, KvWriteScrambledSlots) {
  const int64_t T = 23, Hk = 3, D = 72, slots = 64;
  auto k = random_values(T * Hk * D, dt(), 14), v = random_values(T * Hk * D, dt(), 15);
  std::vector<int32_t> perm(slots);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(16));
  StepMeta m;
  m.slot_mapping.assign(perm.begin(), perm.begin() + T);
  m.token_ids = m.positions = m.slot_mapping;
  auto base = random_values(slots * Hk * D, dt(), 17);
  auto gk = upload(gpu(), k, dt(), {T, Hk, D}), gv = upload(gpu(), v, dt(), {T, Hk, D});
  auto ck = upload(cpu(), k, DType::F32, {T, Hk, D}), cv = upload(cpu(), v, DType::F32, {T, Hk, D});
  auto gkc = upload(gpu(), base, dt(), {slots, Hk, D}), gvc = upload(gpu(), base, dt(), {slots, Hk, D});
  auto ckc = upload(cpu(), base, DType::F32, {slots, Hk, D}), cvc = upload(cpu(), base, DType::F32, {slots, Hk, D});
  gpu().kv_write(gk.t, gv.t, gpu().upload_step(m).slot_mapping, gkc.t, gvc.t);
  cpu().kv_write(ck.t, cv.t, cpu().upload_step(m).slot_mapping, ckc.t, cvc.t);
  EXPECT_EQ(rel_error(download(gpu(), gkc.t), download(cpu(), ckc.t)), 0.0);
  EXPECT_EQ(rel_error(download(gpu(), gvc.t), download(cpu(), cvc.t)), 0.0);
}

// ---- attention ----

struct AttnCase {
  std::string name;
  std::vector<std::pair<int, int>> seqs;  // (past length, chunk length)
  int Hq, Hk, D, block_size;
};

void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

class CudaAttention : public testing::TestWithParam<std::tuple<AttnCase, DType>> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
};

TEST_P(CudaAttention, MatchesCpu) {
  const auto& [c, dt] = GetParam();
  Backend& gpu = cuda_backend();
  Backend& cpu = cpu_backend();
  StepMeta m;
  m.block_size = c.block_size;
  int max_blocks = 0, total_blocks = 0;
  for (auto [past, q] : c.seqs) {
    int blocks = (past + q + c.block_size - 1) / c.block_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
  }
  const int num_pages = total_blocks + 3;  // spare pages nobody owns
  std::vector<int32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(18));  // scrambled block tables
  m.max_blocks_per_seq = max_blocks + 1;
  int next = 0, T = 0;
  m.query_start.push_back(0);
  for (auto [past, q] : c.seqs) {
    int L = past + q, blocks = (L + c.block_size - 1) / c.block_size;
    for (int b = 0; b < m.max_blocks_per_seq; ++b) m.block_tables.push_back(b < blocks ? pages[next + b] : -1);
    for (int j = 0; j < q; ++j) {
      int pos = past + j;
      m.token_ids.push_back(0);
      m.positions.push_back(pos);
      m.slot_mapping.push_back(pages[next + pos / c.block_size] * c.block_size + pos % c.block_size);
    }
    next += blocks;
    T += q;
    m.query_start.push_back(T);
    m.seq_lens.push_back(L);
  }
  const int64_t slots = static_cast<int64_t>(num_pages) * c.block_size;
  auto q = random_values(static_cast<size_t>(T) * c.Hq * c.D, dt, 19, -2.0f, 2.0f);
  auto kc = random_values(slots * c.Hk * c.D, dt, 20, -2.0f, 2.0f);
  auto vc = random_values(slots * c.Hk * c.D, dt, 21);
  auto gq = upload(gpu, q, dt, {T, c.Hq, c.D}), cq = upload(cpu, q, DType::F32, {T, c.Hq, c.D});
  auto gk = upload(gpu, kc, dt, {slots, c.Hk, c.D}), ck = upload(cpu, kc, DType::F32, {slots, c.Hk, c.D});
  auto gv = upload(gpu, vc, dt, {slots, c.Hk, c.D}), cv = upload(cpu, vc, DType::F32, {slots, c.Hk, c.D});
  auto go = empty(gpu, dt, {T, c.Hq, c.D}), co = empty(cpu, DType::F32, {T, c.Hq, c.D});
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  gpu.attention(gq.t, gk.t, gv.t, gpu.upload_step(m), scale, go.t);
  cpu.attention(cq.t, ck.t, cv.t, cpu.upload_step(m), scale, co.t);
  const double tol = dt == DType::F32 ? 1e-4 : tolerance(dt);
  EXPECT_LT(rel_error(download(gpu, go.t), download(cpu, co.t)), tol);
}

const AttnCase kAttnCases[] = {
    {"decode_batch", {{0, 1}, {16, 1}, {299, 1}, {40, 1}}, 8, 2, 64, 16},
    {"decode_long_splitk", {{4095, 1}}, 32, 8, 128, 16},
    {"decode_long_batch", {{4095, 1}, {1000, 1}, {2500, 1}}, 8, 8, 128, 32},
    {"decode_gqa8_d256", {{700, 1}, {3, 1}}, 16, 2, 256, 16},
    {"decode_gqa5_d80", {{1500, 1}, {77, 1}}, 10, 2, 80, 16},
    {"decode_qwen3_14b", {{4999, 1}, {40, 1}, {0, 1}}, 40, 8, 128, 16},
    {"decode_qwen3_32b", {{3000, 1}, {7, 1}}, 64, 8, 128, 16},
    {"decode_32k", {{32767, 1}}, 8, 2, 128, 16},
    {"decode_page1_d96", {{900, 1}, {1, 1}}, 12, 4, 96, 1},
    {"decode_d72", {{600, 1}, {2, 1}}, 6, 2, 72, 16},
    {"prefill_single", {{0, 37}}, 4, 2, 64, 16},
    {"prefill_chunk_with_past", {{100, 50}}, 8, 2, 128, 16},
    {"mixed_prefill_decode", {{0, 19}, {60, 1}, {33, 7}, {5, 1}}, 6, 3, 64, 8},
    {"many_pages_long_chunk", {{1900, 130}}, 4, 1, 128, 16},
    {"mha_odd", {{13, 5}, {0, 3}}, 3, 3, 96, 4},
};

std::string attn_name(const testing::TestParamInfo<std::tuple<AttnCase, DType>>& i) {
  return std::get<0>(i.param).name + "_" + dtype_name(std::get<1>(i.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention, testing::Combine(testing::ValuesIn(kAttnCases), testing::ValuesIn(kDtypes)),
                         attn_name);
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, testing::ValuesIn(kDtypes), dt_name);

// ---- allocator and backend contract ----

TEST(CudaBackend, ArenaOutOfMemoryNamesTheRequest) {
  EMBER_REQUIRE_GPU();
  CudaBackendOptions o;
  o.max_memory = size_t{256} << 20;
  auto be = make_cuda_backend(o);
  auto* cb = dynamic_cast<CudaBackend*>(be.get());
  ASSERT_NE(cb, nullptr);
  EXPECT_EQ(cb->reserved_bytes(), size_t{256} << 20);
  const size_t before = cb->reserve_remaining();
  {
    Buffer a = be->allocate(size_t{100} << 20, "block a");
    EXPECT_LE(cb->reserve_remaining(), before - (size_t{100} << 20));
  }
  EXPECT_EQ(cb->reserve_remaining(), before);  // returned and coalesced
  try {
    Buffer big = be->allocate(size_t{1} << 30, "the KV pool");
    FAIL() << "expected an out-of-memory error";
  } catch (const EngineError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("the KV pool"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1024.0 MiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
  }
  EXPECT_EQ(be->name(), "cuda:0");
  EXPECT_EQ(be->activation_dtype(DType::BF16), DType::BF16);
}

TEST(CudaBackend, ParsesDeviceStrings) {
  EXPECT_EQ(parse_cuda_device("cuda:1"), 1);
  EXPECT_EQ(parse_cuda_device("0"), 0);
  EXPECT_EQ(parse_cuda_device("cpu"), -1);
  EXPECT_THROW(parse_cuda_device("cuda:x"), InvalidArgument);
}

}  // namespace
}  // namespace ember::test
