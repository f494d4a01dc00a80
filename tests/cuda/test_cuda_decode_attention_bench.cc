// Speed of decode attention on Llama-3-8B heads (32 q, 8 kv, D = 128, BF16), timed as whole
// launch_paged_attention_decode calls, split merge included (whether a separate kernel or, as now,
// the last split block), so that figures stay comparable across merge schemes: one sequence from
// depth 32 to 32k per split count, other GQA groups at depth 4096, and batches of 64 and 256
// sequences at depth ~600. Prints microseconds and the K+V bytes read per second;
// each split count is checked against the unsplit result. Disabled: run with
// --gtest_also_run_disabled_tests --gtest_filter='*Bench*'.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

constexpr int kMaxSplits = 64;

std::vector<float> bf16_to_host(const void* dev, size_t n) {
  std::vector<uint16_t> h(n);
  cudaMemcpy(h.data(), dev, n * 2, cudaMemcpyDeviceToHost);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  return v;
}

// One decode step's worth of attention inputs, repeated `copies` times (each copy its own K/V and
// page table) so that back-to-back launches do not find the previous one's K/V in L2.
class DecodeBench {
 public:
  DecodeBench(int Hq, int Hk, int D, int bs, std::vector<int> lens, int copies)
      : Hq_(Hq), Hk_(Hk), D_(D), bs_(bs), lens_(std::move(lens)), copies_(copies) {}
  ~DecodeBench() {
    for (void* p : {k_, v_, q_, out_, ref_, meta_, part_, arrivals_}) cudaFree(p);
    if (s_) cudaStreamDestroy(s_);
  }

  void setup() {
    const int n = static_cast<int>(lens_.size());
    for (int L : lens_) max_blocks_ = std::max(max_blocks_, (L + bs_ - 1) / bs_);
    for (int L : lens_) pages_ += (L + bs_ - 1) / bs_;
    for (int L : lens_) kv_bytes_ += 2.0 * L * Hk_ * D_ * 2;
    const size_t slot_elems = static_cast<size_t>(Hk_) * D_;
    cache_elems_ = static_cast<size_t>(pages_) * bs_ * slot_elems;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
    CHECK_CUDA(cudaMalloc(&k_, cache_elems_ * 2 * copies_));
    CHECK_CUDA(cudaMalloc(&v_, cache_elems_ * 2 * copies_));
    CHECK_CUDA(cudaMalloc(&q_, size_t{2} * n * Hq_ * D_));
    CHECK_CUDA(cudaMalloc(&out_, size_t{2} * n * Hq_ * D_));
    CHECK_CUDA(cudaMalloc(&ref_, size_t{2} * n * Hq_ * D_));
    CHECK_CUDA(cudaMalloc(&part_, size_t{4} * n * Hq_ * kMaxSplits * (D_ + 2)));
    CHECK_CUDA(cudaMalloc(&arrivals_, size_t{4} * n * Hq_));
    CHECK_CUDA(cudaMemset(arrivals_, 0, size_t{4} * n * Hq_));
    CHECK_CUDA(cuda::launch_fill_random(k_, cache_elems_ * copies_, 31, 1.0f, 0.0f, DType::BF16, s_));
    CHECK_CUDA(cuda::launch_fill_random(v_, cache_elems_ * copies_, 32, 1.0f, 0.0f, DType::BF16, s_));
    CHECK_CUDA(cuda::launch_fill_random(q_, size_t{1} * n * Hq_ * D_, 33, 1.0f, 0.0f, DType::BF16, s_));
    // query_start 0..n, seq_lens, then one shuffled page table per copy.
    std::vector<int32_t> h;
    for (int i = 0; i <= n; ++i) h.push_back(i);
    for (int L : lens_) h.push_back(L);
    meta_tables_ = h.size();
    std::mt19937 rng(7);
    for (int c = 0; c < copies_; ++c) {
      std::vector<int32_t> perm(pages_);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      int next = 0;
      for (int L : lens_) {
        const int blocks = (L + bs_ - 1) / bs_;
        for (int b = 0; b < max_blocks_; ++b) h.push_back(b < blocks ? perm[next + b] : -1);
        next += blocks;
      }
    }
    CHECK_CUDA(cudaMalloc(&meta_, h.size() * 4));
    CHECK_CUDA(cudaMemcpy(meta_, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    ready_ = true;
  }

  cuda::DecodeAttentionArgs args(int splits, int copy, void* o) const {
    const int n = static_cast<int>(lens_.size());
    const int32_t* m = static_cast<const int32_t*>(meta_);
    cuda::DecodeAttentionArgs a{};
    a.q = q_;
    a.k_cache = static_cast<char*>(k_) + cache_elems_ * 2 * copy;
    a.v_cache = static_cast<char*>(v_) + cache_elems_ * 2 * copy;
    a.out = o;
    a.query_start = m;
    a.seq_lens = m + n + 1;
    a.block_tables = m + meta_tables_ + static_cast<size_t>(copy) * n * max_blocks_;
    a.part_acc = static_cast<float*>(part_);
    a.part_ml = static_cast<float*>(part_) + size_t{1} * n * Hq_ * kMaxSplits * D_;
    a.arrivals = static_cast<uint32_t*>(arrivals_);
    a.num_seqs = n;
    a.num_heads = Hq_;
    a.num_kv_heads = Hk_;
    a.head_dim = D_;
    a.max_blocks_per_seq = max_blocks_;
    a.block_size = bs_;
    a.num_splits = splits;
    a.scale = 0.088f;
    return a;
  }

  // Median microseconds per launch_paged_attention_decode call (all the kernels it launches, split
  // merge included) over graph replays of back-to-back calls; checks the output against the
  // unsplit one first.
  float time(int splits) {
    const size_t out_elems = lens_.size() * Hq_ * D_;
    if (want_.empty()) {
      EXPECT_EQ(cuda::launch_paged_attention_decode(args(1, 0, ref_), DType::BF16, s_), cudaSuccess);
      cudaStreamSynchronize(s_);
      want_ = bf16_to_host(ref_, out_elems);
    }
    cudaMemset(out_, 0xff, out_elems * 2);
    EXPECT_EQ(cuda::launch_paged_attention_decode(args(splits, 0, out_), DType::BF16, s_), cudaSuccess);
    cudaStreamSynchronize(s_);
    EXPECT_LT(rel_error(bf16_to_host(out_, out_elems), want_), 1e-2) << "splits=" << splits;
    const int launches = std::max(2 * copies_, 16);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal);
    for (int i = 0; i < launches; ++i) cuda::launch_paged_attention_decode(args(splits, i % copies_, out_), DType::BF16, s_);
    cudaStreamEndCapture(s_, &graph);
    if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) return -1.0f;
    cudaGraphLaunch(exec, s_);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> t;
    for (int r = 0; r < 7; ++r) {
      cudaEventRecord(e0, s_);
      cudaGraphLaunch(exec, s_);
      cudaEventRecord(e1, s_);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      t.push_back(ms * 1e3f / launches);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    std::sort(t.begin(), t.end());
    return t[3];
  }

  void print_row(const char* label, std::vector<int> splits) {
    if (!ready_) return;
    std::printf("%-34s %7.1f MB:", label, kv_bytes_ / 1e6);
    for (int sp : splits) {
      const float us = time(sp);
      std::printf("  s%-2d %6.1fus %5.2fTB/s", sp, us, kv_bytes_ / (us * 1e6));
    }
    std::printf("\n");
    std::fflush(stdout);
  }

 private:
  int Hq_, Hk_, D_, bs_;
  std::vector<int> lens_;
  int copies_;
  int max_blocks_ = 0, pages_ = 0;
  double kv_bytes_ = 0.0;
  size_t cache_elems_ = 0, meta_tables_ = 0;
  bool ready_ = false;
  cudaStream_t s_ = nullptr;
  void *k_ = nullptr, *v_ = nullptr, *q_ = nullptr, *out_ = nullptr, *ref_ = nullptr, *meta_ = nullptr,
       *part_ = nullptr, *arrivals_ = nullptr;
  std::vector<float> want_;
};

// Enough copies that one graph's launches read ~256 MB (well past L2), at most 256.
int copies_for(double bytes) { return std::clamp(static_cast<int>(256e6 / bytes), 2, 256); }

TEST(CudaDecodeAttentionBench, DISABLED_OneSeqByDepth) {
  EMBER_REQUIRE_GPU();
  for (int L : {32, 128, 512, 1024, 4096, 16384, 32768}) {
    DecodeBench b(32, 8, 128, 16, {L}, copies_for(2.0 * L * 8 * 128 * 2));
    b.setup();
    std::vector<int> splits;
    for (int sp : {1, 2, 4, 8, 16, 32, 64})
      if (sp == 1 || sp * 32 <= L) splits.push_back(sp);
    char label[64];
    std::snprintf(label, sizeof(label), "1 seq L=%d Hq32 Hk8 D128", L);
    b.print_row(label, splits);
  }
}

TEST(CudaDecodeAttentionBench, DISABLED_GroupSizesAtDepth4096) {
  EMBER_REQUIRE_GPU();
  struct Shape { int Hq, Hk, D; };
  for (Shape sh : {Shape{40, 8, 128}, Shape{64, 8, 128}, Shape{8, 8, 128}, Shape{16, 4, 256}, Shape{32, 8, 64}}) {
    DecodeBench b(sh.Hq, sh.Hk, sh.D, 16, {4096}, copies_for(2.0 * 4096 * sh.Hk * sh.D * 2));
    b.setup();
    char label[64];
    std::snprintf(label, sizeof(label), "1 seq L=4096 Hq%d Hk%d D%d", sh.Hq, sh.Hk, sh.D);
    b.print_row(label, {1, 8, 16, 32});
  }
}

TEST(CudaDecodeAttentionBench, DISABLED_Batches) {
  EMBER_REQUIRE_GPU();
  for (int n : {64, 256}) {
    std::mt19937 rng(n);
    std::vector<int> lens(n);
    for (int& L : lens) L = 512 + static_cast<int>(rng() % 129);  // 512-token prompts, up to 128 generated
    DecodeBench b(32, 8, 128, 16, lens, 2);
    b.setup();
    char label[64];
    std::snprintf(label, sizeof(label), "%d seqs L=512..640 Hq32 Hk8 D128", n);
    b.print_row(label, {1, 2, 4});
  }
}

}  // namespace
}  // namespace ember::test
