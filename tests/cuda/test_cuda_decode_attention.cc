// Decode attention's launcher against a double-precision host reference, split count by split
// count: GQA groups 1 to 16, head sizes 64 to 256 (and two that are not multiples of 16), page
// sizes 1 to 256, contexts up to 32k, empty splits, and a non-decode sequence that must be skipped.
// The splits are merged by the last split block to finish, which leaves its arrival counters at
// zero for the next launch: checked after every launch, across graph replays and back to back.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
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

// One batch of decode sequences (the case's, plus a two-token query after the first, which the
// kernel must leave alone), its paged K/V on the device and the reference output.
struct DecodeProblem {
  DecodeCase c;
  DType dt = DType::F32;
  int n = 0, T = 0, max_blocks = 0, max_splits = 1;
  std::vector<int> lens, qlen;
  std::vector<int32_t> query_start, tables;
  std::vector<float> want;
  size_t out_elems = 0, per = 0, arrival_count = 0;
  DeviceArray dq, dk, dv, dmeta, dpart, darrive;

  void build(const DecodeCase& dc, DType dtype) {
    c = dc;
    dt = dtype;
    const int Hq = c.Hq, Hk = c.Hk, D = c.D, bs = c.block_size, G = Hq / Hk;
    n = static_cast<int>(c.lens.size()) + 1;
    lens = c.lens;
    qlen.assign(n, 1);
    lens.insert(lens.begin() + 1, 50);
    qlen[1] = 2;
    query_start = {0};
    for (int s = 0; s < n; ++s) query_start.push_back(query_start.back() + qlen[s]);
    T = query_start.back();
    int pages = 3;  // three pages nobody owns
    for (int L : lens) {
      max_blocks = std::max(max_blocks, (L + bs - 1) / bs);
      pages += (L + bs - 1) / bs;
    }
    std::vector<int32_t> perm(pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
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
    want.assign(static_cast<size_t>(T) * Hq * D, 0.0f);
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

    to_device(dq, q, dt);
    to_device(dk, k, dt);
    to_device(dv, v, dt);
    std::vector<int32_t> meta = query_start;
    meta.insert(meta.end(), lens.begin(), lens.end());
    meta.insert(meta.end(), tables.begin(), tables.end());
    CHECK_CUDA(cudaMalloc(&dmeta.p, meta.size() * 4));
    CHECK_CUDA(cudaMemcpy(dmeta.p, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice));
    for (int sp : c.splits) max_splits = std::max(max_splits, sp);
    per = static_cast<size_t>(n) * Hq * max_splits;
    CHECK_CUDA(cudaMalloc(&dpart.p, per * (D + 2) * 4));
    // The launcher's contract: num_seqs * Hq counters, zero once; every launch leaves them zero.
    arrival_count = static_cast<size_t>(n) * Hq;
    CHECK_CUDA(cudaMalloc(&darrive.p, arrival_count * 4));
    CHECK_CUDA(cudaMemset(darrive.p, 0, arrival_count * 4));
    out_elems = static_cast<size_t>(T) * Hq * D;
  }

  cuda::DecodeAttentionArgs args(int splits, void* out) const {
    const int32_t* m = static_cast<const int32_t*>(dmeta.p);
    cuda::DecodeAttentionArgs a{};
    a.q = dq.p;
    a.k_cache = dk.p;
    a.v_cache = dv.p;
    a.out = out;
    a.query_start = m;
    a.seq_lens = m + n + 1;
    a.block_tables = m + 2 * n + 1;
    a.part_acc = static_cast<float*>(dpart.p);
    a.part_ml = static_cast<float*>(dpart.p) + per * c.D;
    a.arrivals = static_cast<uint32_t*>(darrive.p);
    a.num_seqs = n;
    a.num_heads = c.Hq;
    a.num_kv_heads = c.Hk;
    a.head_dim = c.D;
    a.max_blocks_per_seq = max_blocks + 1;
    a.block_size = c.block_size;
    a.num_splits = splits;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.D));
    return a;
  }

  size_t out_bytes() const { return out_elems * dtype_size(dt); }
  double tol() const { return dt == DType::F32 ? 1e-4 : dt == DType::F16 ? 2e-3 : 1.2e-2; }

  // Compares a device output with the reference; the skipped sequence's rows must still be the
  // NaN poison the caller wrote.
  void check(const void* out, const std::string& what) const {
    auto got = to_host(out, out_elems, dt);
    const size_t row = static_cast<size_t>(c.Hq) * c.D;
    for (size_t i = query_start[1] * row; i < query_start[2] * row; ++i) {
      ASSERT_TRUE(std::isnan(got[i])) << what << ": the non-decode sequence's output was written";
      got[i] = 0.0f;
    }
    EXPECT_LT(rel_error(got, want), tol()) << what;
    for (int s = 0; s < n; ++s) {  // every decode sequence on its own, so that a short one is not drowned
      if (qlen[s] != 1) continue;
      const size_t b = query_start[s] * row;
      std::vector<float> gs(got.begin() + b, got.begin() + b + row), ws(want.begin() + b, want.begin() + b + row);
      EXPECT_LT(rel_error(gs, ws), tol()) << what << " seq " << s << " L=" << lens[s];
    }
  }

  // Every arrival counter is back at zero (the state the next launch relies on).
  void expect_arrivals_zero(const std::string& what) const {
    std::vector<uint32_t> h(arrival_count);
    ASSERT_EQ(cudaMemcpy(h.data(), darrive.p, h.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < h.size(); ++i) ASSERT_EQ(h[i], 0u) << what << ": arrival counter " << i << " left set";
  }
};

std::vector<uint8_t> bytes_of(const void* dev, size_t bytes) {
  std::vector<uint8_t> h(bytes);
  cudaMemcpy(h.data(), dev, bytes, cudaMemcpyDeviceToHost);
  return h;
}

class CudaDecodeAttention : public testing::TestWithParam<std::tuple<DecodeCase, DType>> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
};

TEST_P(CudaDecodeAttention, MatchesHostReference) {
  const auto& [c, dt] = GetParam();
  DecodeProblem p;
  ASSERT_NO_FATAL_FAILURE(p.build(c, dt));
  DeviceArray dout;
  CHECK_CUDA(cudaMalloc(&dout.p, p.out_bytes()));
  for (int splits : c.splits) {
    const std::string what = "splits=" + std::to_string(splits);
    CHECK_CUDA(cudaMemset(dout.p, 0xff, p.out_bytes()));  // NaN poison
    CHECK_CUDA(cuda::launch_paged_attention_decode(p.args(splits, dout.p), dt, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    ASSERT_NO_FATAL_FAILURE(p.check(dout.p, what));
    ASSERT_NO_FATAL_FAILURE(p.expect_arrivals_zero(what));
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
    // Two head groups per kv head (8 heads a block) and several sequences of odd lengths, each with
    // its own arrival counters; 33 splits leave some empty for the short sequence.
    {"gqa16_multi_seq", 32, 2, 128, 16, {1001, 77, 2533, 5}, {2, 7, 33}},
    // General path: two head groups per kv head (4 heads a block), a head size that is not a
    // multiple of 4 (the merge's scalar loads).
    {"d70_gqa8_general_path", 16, 2, 70, 16, {999, 5, 260}, {1, 6, 13}},
};

std::string case_name(const testing::TestParamInfo<std::tuple<DecodeCase, DType>>& i) {
  return std::get<0>(i.param).name + "_" + dtype_name(std::get<1>(i.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDecodeAttention,
                         testing::Combine(testing::ValuesIn(kCases),
                                          testing::Values(DType::F32, DType::F16, DType::BF16)),
                         case_name);

// The split merge keeps state between launches (the arrival counters), so runs must not depend on
// what the previous one left: a graph of two launches with different split counts replayed three
// times, and eager launches queued back to back without a sync, all give the reference output and
// bit-identical results, and leave the counters at zero. F32 takes the general kernel, BF16 the
// tensor-core one (launched chained, so the second launch of a pair overlaps the first's tail).
struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};

class CudaDecodeAttentionSplitState : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    EMBER_REQUIRE_GPU();
    ASSERT_NO_FATAL_FAILURE(p.build(case_, GetParam()));
    CHECK_CUDA(cudaStreamCreateWithFlags(&st.s, cudaStreamNonBlocking));
  }
  const DecodeCase case_{"state", 32, 2, 128, 16, {1001, 77, 2533}, {16, 5}};
  DecodeProblem p;  // the case's problem on the device
  Stream st;        // a non-blocking stream of its own
};

TEST_P(CudaDecodeAttentionSplitState, GraphReplayedThreeTimes) {
  const DType dt = GetParam();
  DeviceArray out_a, out_b;
  CHECK_CUDA(cudaMalloc(&out_a.p, p.out_bytes()));
  CHECK_CUDA(cudaMalloc(&out_b.p, p.out_bytes()));

  // Eager results first: what every replay must reproduce bit for bit.
  CHECK_CUDA(cudaMemset(out_a.p, 0xff, p.out_bytes()));
  CHECK_CUDA(cudaMemset(out_b.p, 0xff, p.out_bytes()));
  CHECK_CUDA(cuda::launch_paged_attention_decode(p.args(16, out_a.p), dt, st.s));
  CHECK_CUDA(cuda::launch_paged_attention_decode(p.args(5, out_b.p), dt, st.s));
  CHECK_CUDA(cudaStreamSynchronize(st.s));
  ASSERT_NO_FATAL_FAILURE(p.check(out_a.p, "eager splits=16"));
  ASSERT_NO_FATAL_FAILURE(p.check(out_b.p, "eager splits=5"));
  ASSERT_NO_FATAL_FAILURE(p.expect_arrivals_zero("eager"));
  const auto first_a = bytes_of(out_a.p, p.out_bytes()), first_b = bytes_of(out_b.p, p.out_bytes());

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CHECK_CUDA(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
  const cudaError_t e1 = cuda::launch_paged_attention_decode(p.args(16, out_a.p), dt, st.s);
  const cudaError_t e2 = cuda::launch_paged_attention_decode(p.args(5, out_b.p), dt, st.s);
  CHECK_CUDA(cudaStreamEndCapture(st.s, &graph));
  CHECK_CUDA(e1);
  CHECK_CUDA(e2);
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < 3; ++r) {
    const std::string what = "replay " + std::to_string(r);
    CHECK_CUDA(cudaMemsetAsync(out_a.p, 0xff, p.out_bytes(), st.s));
    CHECK_CUDA(cudaMemsetAsync(out_b.p, 0xff, p.out_bytes(), st.s));
    CHECK_CUDA(cudaGraphLaunch(exec, st.s));
    CHECK_CUDA(cudaStreamSynchronize(st.s));
    ASSERT_NO_FATAL_FAILURE(p.check(out_a.p, what + " splits=16"));
    ASSERT_NO_FATAL_FAILURE(p.check(out_b.p, what + " splits=5"));
    EXPECT_TRUE(bytes_of(out_a.p, p.out_bytes()) == first_a) << what << ": splits=16 differs from the eager run";
    EXPECT_TRUE(bytes_of(out_b.p, p.out_bytes()) == first_b) << what << ": splits=5 differs from the eager run";
    ASSERT_NO_FATAL_FAILURE(p.expect_arrivals_zero(what));
  }
  // Replays queued back to back: each starts on the counters the one before left.
  for (int r = 0; r < 3; ++r) CHECK_CUDA(cudaGraphLaunch(exec, st.s));
  CHECK_CUDA(cudaStreamSynchronize(st.s));
  EXPECT_TRUE(bytes_of(out_a.p, p.out_bytes()) == first_a) << "queued replays: splits=16 differs";
  EXPECT_TRUE(bytes_of(out_b.p, p.out_bytes()) == first_b) << "queued replays: splits=5 differs";
  ASSERT_NO_FATAL_FAILURE(p.expect_arrivals_zero("queued replays"));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_P(CudaDecodeAttentionSplitState, BackToBackSplitCounts) {
  const DType dt = GetParam();
  const int splits[] = {16, 3, 16, 1, 5, 2};
  DeviceArray outs[6];
  for (DeviceArray& o : outs) {
    CHECK_CUDA(cudaMalloc(&o.p, p.out_bytes()));
    CHECK_CUDA(cudaMemset(o.p, 0xff, p.out_bytes()));
  }
  for (int i = 0; i < 6; ++i) CHECK_CUDA(cuda::launch_paged_attention_decode(p.args(splits[i], outs[i].p), dt, st.s));
  CHECK_CUDA(cudaStreamSynchronize(st.s));
  for (int i = 0; i < 6; ++i)
    ASSERT_NO_FATAL_FAILURE(p.check(outs[i].p, "launch " + std::to_string(i) + " splits=" + std::to_string(splits[i])));
  EXPECT_TRUE(bytes_of(outs[0].p, p.out_bytes()) == bytes_of(outs[2].p, p.out_bytes()))
      << "two splits=16 launches differ";
  ASSERT_NO_FATAL_FAILURE(p.expect_arrivals_zero("back to back"));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaDecodeAttentionSplitState, testing::Values(DType::F32, DType::BF16),
                         [](const testing::TestParamInfo<DType>& i) { return std::string(dtype_name(i.param)); });

}  // namespace
}  // namespace ember::test
