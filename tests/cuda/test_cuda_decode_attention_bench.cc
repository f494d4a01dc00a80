// Bandwidth of decode attention for one sequence at long context (Llama-3-8B heads: 32 q, 8 kv,
// D = 128) per split count, with each split count checked against the unsplit result.
// Disabled: run with --gtest_also_run_disabled_tests.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

std::vector<float> bf16_to_host(const void* dev, size_t n) {
  std::vector<uint16_t> h(n);
  cudaMemcpy(h.data(), dev, n * 2, cudaMemcpyDeviceToHost);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  return v;
}

TEST(CudaDecodeAttentionBench, DISABLED_OneSeqLongContext) {
  EMBER_REQUIRE_GPU();
  const int Hq = 32, Hk = 8, D = 128, bs = 16, copies = 8;
  const DType dt = DType::BF16;
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int L : {512, 4096, 16384}) {
    const int blocks = L / bs;
    const size_t cache_elems = static_cast<size_t>(L) * Hk * D;  // one copy: every slot in use
    void *k = nullptr, *v = nullptr, *q = nullptr, *out = nullptr, *ref = nullptr, *meta = nullptr, *part = nullptr;
    CHECK_CUDA(cudaMalloc(&k, cache_elems * 2 * copies));
    CHECK_CUDA(cudaMalloc(&v, cache_elems * 2 * copies));
    CHECK_CUDA(cudaMalloc(&q, Hq * D * 2));
    CHECK_CUDA(cudaMalloc(&out, Hq * D * 2));
    CHECK_CUDA(cudaMalloc(&ref, Hq * D * 2));
    CHECK_CUDA(cudaMalloc(&part, size_t{Hq} * 64 * (D + 2) * 4));
    CHECK_CUDA(cuda::launch_fill_random(k, cache_elems * copies, 31, 1.0f, 0.0f, dt, s));
    CHECK_CUDA(cuda::launch_fill_random(v, cache_elems * copies, 32, 1.0f, 0.0f, dt, s));
    CHECK_CUDA(cuda::launch_fill_random(q, Hq * D, 33, 1.0f, 0.0f, dt, s));
    // metadata: query_start {0, 1}, seq_lens {L}, a shuffled block table
    std::vector<int32_t> h = {0, 1, L};
    for (int b = 0; b < blocks; ++b) h.push_back((b * 37) % blocks);
    ASSERT_EQ(std::gcd(37, blocks), 1);
    CHECK_CUDA(cudaMalloc(&meta, h.size() * 4));
    CHECK_CUDA(cudaMemcpy(meta, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    const int32_t* m = static_cast<const int32_t*>(meta);
    auto args = [&](int splits, int copy, void* o) {
      cuda::DecodeAttentionArgs a{};
      a.q = q;
      a.k_cache = static_cast<char*>(k) + cache_elems * 2 * copy;
      a.v_cache = static_cast<char*>(v) + cache_elems * 2 * copy;
      a.out = o;
      a.query_start = m;
      a.seq_lens = m + 2;
      a.block_tables = m + 3;
      a.part_acc = static_cast<float*>(part);
      a.part_ml = static_cast<float*>(part) + size_t{Hq} * 64 * D;
      a.num_seqs = 1;
      a.num_heads = Hq;
      a.num_kv_heads = Hk;
      a.head_dim = D;
      a.max_blocks_per_seq = blocks;
      a.block_size = bs;
      a.num_splits = splits;
      a.scale = 0.088f;
      return a;
    };
    CHECK_CUDA(cuda::launch_paged_attention_decode(args(1, 0, ref), dt, s));
    CHECK_CUDA(cudaStreamSynchronize(s));
    const auto want = bf16_to_host(ref, Hq * D);
    const double bytes = 2.0 * cache_elems * 2;
    std::printf("L=%5d (%.1f MB of K+V):", L, bytes / 1e6);
    for (int splits : {1, 4, 8, 16, 32, 64}) {
      CHECK_CUDA(cudaMemset(out, 0xff, Hq * D * 2));
      CHECK_CUDA(cuda::launch_paged_attention_decode(args(splits, 0, out), dt, s));
      CHECK_CUDA(cudaStreamSynchronize(s));
      EXPECT_LT(rel_error(bf16_to_host(out, Hq * D), want), 1e-2) << "L=" << L << " splits=" << splits;
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      const int launches = 4 * copies;
      CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < launches; ++i) cuda::launch_paged_attention_decode(args(splits, i % copies, out), dt, s);
      CHECK_CUDA(cudaStreamEndCapture(s, &graph));
      CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      CHECK_CUDA(cudaGraphLaunch(exec, s));
      cudaEvent_t e0, e1;
      CHECK_CUDA(cudaEventCreate(&e0));
      CHECK_CUDA(cudaEventCreate(&e1));
      std::vector<float> t;
      for (int r = 0; r < 7; ++r) {
        CHECK_CUDA(cudaEventRecord(e0, s));
        CHECK_CUDA(cudaGraphLaunch(exec, s));
        CHECK_CUDA(cudaEventRecord(e1, s));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms / launches);
      }
      std::sort(t.begin(), t.end());
      std::printf("  s%d %.1fus %.0fGB/s", splits, t[3] * 1e3, bytes / (t[3] * 1e6));
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
    std::printf("\n");
    for (void* p : {k, v, q, out, ref, meta, part}) cudaFree(p);
  }
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace ember::test
