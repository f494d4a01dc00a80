// Decode attention's launcher against a double-precision host reference, split count by split
// count: GQA groups 1 to 16, head sizes 64 to 256 (and one that is not a multiple of 16), page
// sizes 1 to 256, contexts up to 32k, empty splits, and a non-decode sequence that must be skipped.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

struct DecodeCase {
  std::string name;
  int Hq, Hk, D, block_size;
  std::vector<int> lens;    // context length of each decode sequence
  std::vector<int> splits;  // split counts to run
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

// Device copy of host values in `dt`.
struct DeviceArray {
  void* p = nullptr;
  ~DeviceArray() { cudaFree(p); }
};
void to_device(DeviceArray& d, const std::vector<float>& v, DType dt) {
  const size_t bytes = v.size() * dtype_size(dt);
  ASSERT_EQ(cudaMalloc(&d.p, bytes + 16), cudaSuccess);
  if (dt == DType::F32) {
    ASSERT_EQ(cudaMemcpy(d.p, v.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = dt == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
  ASSERT_EQ(cudaMemcpy(d.p, h.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
}
std::vector<float> to_host(const void* p, size_t n, DType dt) {
  std::vector<float> v(n);
  if (dt == DType::F32) {
    cudaMemcpy(v.data(), p, n * 4, cudaMemcpyDeviceToHost);
    return v;
  }
  std::vector<uint16_t> h(n);
  cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < n; ++i) v[i] = dt == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  return v;
}

class CudaDecodeAttention : public testing::TestWithParam<std::tuple<DecodeCase, DType>> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
};

TEST_P(CudaDecodeAttention, MatchesHostReference) {
  const auto& [c, dt] = GetParam();
  const int Hq = c.Hq, Hk = c.Hk, D = c.D, bs = c.block_size, G = Hq / Hk;
  // Sequences: the decode ones of the case, plus one with a two-token query after the first,
  // which the kernel must leave alone (its output rows stay poisoned).
  const int n = static_cast<int>(c.lens.size()) + 1;
  std::vector<int> lens = c.lens, qlen(n, 1);
  lens.insert(lens.begin() + 1, 50);
  qlen[1] = 2;
  std::vector<int32_t> query_start = {0};
  for (int s = 0; s < n; ++s) query_start.push_back(query_start.back() + qlen[s]);
  const int T = query_start.back();
  int max_blocks = 0, pages = 3;  // three pages nobody owns
  for (int L : lens) {
    max_blocks = std::max(max_blocks, (L + bs - 1) / bs);
    pages += (L + bs - 1) / bs;
  }
  std::vector<int32_t> perm(pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
  std::vector<int32_t> tables;
  for (int s = 0, next = 0; s < n; ++s) {
    const int blocks = (lens[s] + bs - 1) / bs;
    for (int b = 0; b < max_blocks + 1; ++b) tables.push_back(b < blocks ? perm[next + b] : -1);
    next += blocks;
  }
  const size_t slots = static_cast<size_t>(pages) * bs;
  const auto q = random_values(static_cast<size_t>(T) * Hq * D, dt, 1, -2.0f, 2.0f);
  const auto k = random_values(slots * Hk * D, dt, 2, -2.0f, 2.0f);
  const auto v = random_values(slots * Hk * D, dt, 3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Reference, for the decode sequences only.
  std::vector<float> want(static_cast<size_t>(T) * Hq * D, 0.0f);
  for (int s = 0; s < n; ++s) {
    if (qlen[s] != 1) continue;
    const int tok = query_start[s];
    for (int h = 0; h < Hq; ++h) {
      const int kvh = h / G;
      const float* qr = &q[(static_cast<size_t>(tok) * Hq + h) * D];
      std::vector<double> score(lens[s]);
      double mx = -INFINITY;
      for (int t = 0; t < lens[s]; ++t) {
        const size_t slot = static_cast<size_t>(tables[s * (max_blocks + 1) + t / bs]) * bs + t % bs;
        const float* kr = &k[(slot * Hk + kvh) * D];
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += static_cast<double>(qr[d]) * kr[d];
        score[t] = dot * scale;
        mx = std::max(mx, score[t]);
      }
      std::vector<double> o(D, 0.0);
      double sum = 0.0;
      for (int t = 0; t < lens[s]; ++t) {
        const size_t slot = static_cast<size_t>(tables[s * (max_blocks + 1) + t / bs]) * bs + t % bs;
        const float* vr = &v[(slot * Hk + kvh) * D];
        const double p = std::exp(score[t] - mx);
        sum += p;
        for (int d = 0; d < D; ++d) o[d] += p * vr[d];
      }
      for (int d = 0; d < D; ++d) want[(static_cast<size_t>(tok) * Hq + h) * D + d] = static_cast<float>(o[d] / sum);
    }
  }

  DeviceArray dq, dk, dv, dout, dmeta, dpart;
  to_device(dq, q, dt);
  to_device(dk, k, dt);
  to_device(dv, v, dt);
  std::vector<int32_t> meta = query_start;
  meta.insert(meta.end(), lens.begin(), lens.end());
  meta.insert(meta.end(), tables.begin(), tables.end());
  CHECK_CUDA(cudaMalloc(&dmeta.p, meta.size() * 4));
  CHECK_CUDA(cudaMemcpy(dmeta.p, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice));
  int max_splits = 1;
  for (int sp : c.splits) max_splits = std::max(max_splits, sp);
  const size_t per = static_cast<size_t>(n) * Hq * max_splits;
  CHECK_CUDA(cudaMalloc(&dpart.p, per * (D + 2) * 4));
  const size_t out_elems = static_cast<size_t>(T) * Hq * D;
  CHECK_CUDA(cudaMalloc(&dout.p, out_elems * dtype_size(dt)));
  const int32_t* m = static_cast<const int32_t*>(dmeta.p);

  const double tol = dt == DType::F32 ? 1e-4 : dt == DType::F16 ? 2e-3 : 1.2e-2;
  for (int splits : c.splits) {
    CHECK_CUDA(cudaMemset(dout.p, 0xff, out_elems * dtype_size(dt)));  // NaN poison
    cuda::DecodeAttentionArgs a{};
    a.q = dq.p;
    a.k_cache = dk.p;
    a.v_cache = dv.p;
    a.out = dout.p;
    a.query_start = m;
    a.seq_lens = m + n + 1;
    a.block_tables = m + 2 * n + 1;
    a.part_acc = static_cast<float*>(dpart.p);
    a.part_ml = static_cast<float*>(dpart.p) + per * D;
    a.num_seqs = n;
    a.num_heads = Hq;
    a.num_kv_heads = Hk;
    a.head_dim = D;
    a.max_blocks_per_seq = max_blocks + 1;
    a.block_size = bs;
    a.num_splits = splits;
    a.scale = scale;
    CHECK_CUDA(cuda::launch_paged_attention_decode(a, dt, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    auto got = to_host(dout.p, out_elems, dt);
    // The skipped sequence's rows are still the poison; compare the rest.
    const size_t row = static_cast<size_t>(Hq) * D;
    for (size_t i = query_start[1] * row; i < query_start[2] * row; ++i) {
      ASSERT_TRUE(std::isnan(got[i])) << "splits=" << splits << ": the non-decode sequence's output was written";
      got[i] = 0.0f;
    }
    EXPECT_LT(rel_error(got, want), tol) << "splits=" << splits;
    for (int s = 0; s < n; ++s) {  // every decode sequence on its own, so that a short one is not drowned
      if (qlen[s] != 1) continue;
      const size_t b = query_start[s] * row;
      std::vector<float> gs(got.begin() + b, got.begin() + b + row), ws(want.begin() + b, want.begin() + b + row);
      EXPECT_LT(rel_error(gs, ws), tol) << "splits=" << splits << " seq " << s << " L=" << lens[s];
    }
  }
}

const DecodeCase kCases[] = {
    {"llama8b", 32, 8, 128, 16, {4096, 1, 17, 300}, {1, 3, 16, 64}},
    {"mha", 4, 4, 128, 16, {1000, 33}, {1, 8}},
    {"gqa5_qwen3_14b", 40, 8, 128, 16, {2000, 5}, {1, 4}},
    {"gqa8_qwen3_32b", 64, 8, 128, 32, {1500, 64}, {1, 8}},
    {"gqa16_d64", 32, 2, 64, 16, {700}, {1, 4}},
    {"d256", 16, 2, 256, 16, {1200, 3}, {1, 8}},
    {"d64_page1", 8, 2, 64, 1, {300, 45}, {1, 5}},
    {"d80_page7", 10, 2, 80, 7, {500}, {1, 2}},
    {"d96_page256", 12, 4, 96, 256, {3000, 1}, {1, 4}},
    {"d72_general_path", 6, 2, 72, 16, {400, 9}, {1, 3}},
    {"long32k", 8, 2, 128, 16, {32768}, {1, 16, 64}},
};

std::string case_name(const testing::TestParamInfo<std::tuple<DecodeCase, DType>>& i) {
  return std::get<0>(i.param).name + "_" + dtype_name(std::get<1>(i.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDecodeAttention,
                         testing::Combine(testing::ValuesIn(kCases),
                                          testing::Values(DType::F32, DType::F16, DType::BF16)),
                         case_name);

}  // namespace
}  // namespace ember::test
