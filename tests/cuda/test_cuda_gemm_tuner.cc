// The timed cuBLASLt GEMM (cuda/gemm_tuner.cu) against the CPU backend's fp32-accumulating matmul
// on odd shapes; a shape's choice reused within its bucket; no timing during graph capture;
// EMBER_GEMM_TUNE=0; and the backend's matmul, which now goes through it above the GEMV cutoff.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "gemm_tuner.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

using cuda::LtGemm;

constexpr size_t kWorkspace = size_t{32} << 20;  // as the backend's

cudaDataType_t cuda_dtype(DType dt) { return dt == DType::F16 ? CUDA_R_16F : CUDA_R_16BF; }

// A stream and a workspace for a tuner of the test's own.
struct TunerStream {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  TunerStream() {
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    cudaMalloc(&workspace, kWorkspace);
  }
  ~TunerStream() {
    cudaFree(workspace);
    cudaStreamDestroy(stream);
  }
  TunerStream(const TunerStream&) = delete;
  TunerStream& operator=(const TunerStream&) = delete;
};

// Sets an environment variable for a scope and puts the old value back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_.c_str(), old_->c_str(), 1);
    else unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// x [M, K] and w [N, K] on the GPU, a NaN-poisoned out [M, N], and the CPU backend's out.
struct Problem {
  int64_t M, N, K;
  Owned x, w, out;
  std::vector<float> want;
};

Problem make_problem(DType dt, int64_t M, int64_t N, int64_t K, uint32_t seed) {
  Problem p{M, N, K, {}, {}, {}, {}};
  auto x = random_values(M * K, dt, seed);
  auto w = random_values(N * K, dt, seed + 1, -0.2f, 0.2f);
  p.x = upload(cuda_backend(), x, dt, {M, K});
  p.w = upload(cuda_backend(), w, dt, {N, K});
  p.out = empty(cuda_backend(), dt, {M, N});
  Backend& cpu = cpu_backend();
  auto cx = upload(cpu, x, DType::F32, {M, K});  // x is dtype-exact, so F32 holds it exactly
  auto cw = upload(cpu, w, dt, {N, K});
  auto co = empty(cpu, DType::F32, {M, N});
  cpu.matmul(cx.t, cw.t, nullptr, co.t);
  p.want = download(cpu, co.t);
  return p;
}

std::vector<float> result(cudaStream_t s, const Tensor& t) {
  cudaStreamSynchronize(s);
  return download(cuda_backend(), t);
}

std::string label(const Problem& p) {
  return "M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " K=" + std::to_string(p.K);
}

class CudaGemmTuner : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
  DType dt() const { return GetParam(); }
  cudaDataType_t cdt() const { return cuda_dtype(GetParam()); }
  bool run(LtGemm& g, Problem& p, int64_t M = 0) {
    return g.run(p.x.t.data, p.w.t.data, p.out.t.data, M ? M : p.M, p.N, p.K, cdt());
  }
};

std::string dt_name(const testing::TestParamInfo<DType>& i) { return dtype_name(i.param); }

TEST(CudaGemmTunerBuckets, GroupOctavesInEighths) {
  EXPECT_EQ(LtGemm::bucket_of(1), 1);
  EXPECT_EQ(LtGemm::bucket_of(7), 7);
  EXPECT_EQ(LtGemm::bucket_of(128), 128);
  EXPECT_EQ(LtGemm::bucket_of(129), 160);
  EXPECT_EQ(LtGemm::bucket_of(256), 256);
  EXPECT_EQ(LtGemm::bucket_of(500), 512);
  EXPECT_EQ(LtGemm::bucket_of(512), 512);
  EXPECT_EQ(LtGemm::bucket_of(513), 640);
  EXPECT_EQ(LtGemm::bucket_of(1000), 1024);
  EXPECT_EQ(LtGemm::bucket_of(1024), 1024);
  EXPECT_EQ(LtGemm::bucket_of(8192), 8192);
  EXPECT_EQ(LtGemm::bucket_of(8193), 10240);
}

// Every combination of the odd shapes; each is a new shape, so each is timed and then checked.
// N = 5 leaves rows of out 10 bytes apart, which cuBLASLt may decline (the backend then uses
// cublasGemmEx); every shape with 16-byte aligned rows must be taken.
TEST_P(CudaGemmTuner, MatchesCpuReferenceOnOddShapes) {
  TunerStream ts;
  LtGemm g(ts.stream, ts.workspace, kWorkspace, LtGemm::Options{true, 8});
  uint32_t seed = 10;
  int declined = 0;
  for (int64_t M : {1, 7, 33, 512})
    for (int64_t N : {5, 64, 1000})
      for (int64_t K : {8, 72, 4096}) {
        Problem p = make_problem(dt(), M, N, K, seed += 2);
        const bool taken = run(g, p);
        if (!taken) {
          ++declined;
          EXPECT_NE(N % 8, 0) << "cuBLASLt declined an aligned shape: " << label(p);
          continue;
        }
        EXPECT_LT(rel_error(result(ts.stream, p.out.t), p.want), tolerance(dt())) << label(p);
      }
  const auto& s = g.stats();
  std::printf("[ %s ] %d shapes: %d timed, %d declined (cublasGemmEx), %lld cuBLASLt calls\n", dtype_name(dt()),
              s.plans, s.tunings, declined, static_cast<long long>(s.calls));
  EXPECT_EQ(s.plans, 36);
  EXPECT_EQ(s.unsupported, declined);
}

// A shape's second call reuses the choice (nothing timed again) and gives the same bits as the
// call that timed it, which left the chosen algorithm's result in out. A smaller M of the same
// bucket reuses the choice too.
TEST_P(CudaGemmTuner, CachedShapeReused) {
  TunerStream ts;
  LtGemm g(ts.stream, ts.workspace, kWorkspace, LtGemm::Options{true, 8});
  Problem p = make_problem(dt(), 512, 1000, 4096, 50);
  ASSERT_TRUE(run(g, p));
  const std::vector<float> first = result(ts.stream, p.out.t);
  EXPECT_LT(rel_error(first, p.want), tolerance(dt()));
  EXPECT_EQ(g.stats().tunings, 1);
  EXPECT_EQ(g.stats().plans, 1);
  const int chosen = g.chosen_candidate(512, 1000, 4096, cdt());
  EXPECT_GE(chosen, 0);
  std::printf("[ %s ] 512 x 1000 x 4096: candidate %d chosen\n", dtype_name(dt()), chosen);

  CHECK_CUDA(cudaMemsetAsync(p.out.t.data, 0xff, p.out.t.nbytes(), ts.stream));
  ASSERT_TRUE(run(g, p));
  const std::vector<float> second = result(ts.stream, p.out.t);
  EXPECT_EQ(g.stats().tunings, 1);
  EXPECT_EQ(g.stats().plans, 1);
  EXPECT_EQ(g.stats().calls, 2);
  ASSERT_EQ(first.size(), second.size());
  size_t differ = 0;
  for (size_t i = 0; i < first.size(); ++i) differ += first[i] != second[i];
  EXPECT_EQ(differ, 0u) << "the cached algorithm gave other values than the tuning call";

  // M = 500: the first 500 rows of the same operands, bucket 512.
  CHECK_CUDA(cudaMemsetAsync(p.out.t.data, 0xff, p.out.t.nbytes(), ts.stream));
  ASSERT_TRUE(run(g, p, 500));
  std::vector<float> part = result(ts.stream, p.out.t);
  part.resize(500 * 1000);
  const std::vector<float> want(p.want.begin(), p.want.begin() + 500 * 1000);
  EXPECT_LT(rel_error(part, want), tolerance(dt()));
  EXPECT_EQ(g.stats().tunings, 1) << "M=500 should reuse the choice of bucket 512";
  EXPECT_EQ(g.stats().plans, 2);
}

// During capture nothing is timed (that would synchronise the stream): heuristic #0 is recorded,
// the graph gives the right values, and the next eager call of the shape times it.
TEST_P(CudaGemmTuner, CaptureUsesHeuristicWithoutTiming) {
  TunerStream ts;
  LtGemm g(ts.stream, ts.workspace, kWorkspace, LtGemm::Options{true, 8});
  Problem p = make_problem(dt(), 33, 1000, 4096, 60);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CHECK_CUDA(cudaStreamBeginCapture(ts.stream, cudaStreamCaptureModeThreadLocal));
  bool taken = false;
  try {
    taken = run(g, p);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "run during capture threw: " << e.what();
  }
  CHECK_CUDA(cudaStreamEndCapture(ts.stream, &graph));
  ASSERT_TRUE(taken);
  EXPECT_EQ(g.stats().tunings, 0);
  EXPECT_EQ(g.stats().heuristic_only, 1);
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, ts.stream));
  EXPECT_LT(rel_error(result(ts.stream, p.out.t), p.want), tolerance(dt()));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  CHECK_CUDA(cudaMemsetAsync(p.out.t.data, 0xff, p.out.t.nbytes(), ts.stream));
  ASSERT_TRUE(run(g, p));
  EXPECT_EQ(g.stats().tunings, 1);
  EXPECT_EQ(g.stats().plans, 1);
  EXPECT_LT(rel_error(result(ts.stream, p.out.t), p.want), tolerance(dt()));
}

// EMBER_GEMM_TUNE=0: heuristic #0 for every shape, nothing timed, the same values.
TEST_P(CudaGemmTuner, EnvZeroDisablesTuning) {
  TunerStream ts;
  {
    ScopedEnv env("EMBER_GEMM_TUNE", "1");
    EXPECT_TRUE(LtGemm(ts.stream, ts.workspace, kWorkspace).tuning_enabled());
  }
  ScopedEnv env("EMBER_GEMM_TUNE", "0");
  LtGemm g(ts.stream, ts.workspace, kWorkspace);
  EXPECT_FALSE(g.tuning_enabled());
  uint32_t seed = 70;
  for (int64_t M : {33, 512}) {
    Problem p = make_problem(dt(), M, 1000, 4096, seed += 2);
    ASSERT_TRUE(run(g, p));
    EXPECT_LT(rel_error(result(ts.stream, p.out.t), p.want), tolerance(dt())) << label(p);
    ASSERT_TRUE(run(g, p));  // a second call stays on heuristic #0
    EXPECT_EQ(g.chosen_candidate(M, 1000, 4096, cdt()), -1);
  }
  EXPECT_EQ(g.stats().tunings, 0);
  EXPECT_EQ(g.stats().plans, 2);
  EXPECT_EQ(g.stats().heuristic_only, 2);
  EXPECT_EQ(g.stats().calls, 4);
}

// The backend's matmul above the GEMV cutoff (T > 8), with and without bias; T = 300 then 290
// (one bucket) so that the reused choice is checked through the backend as well.
TEST_P(CudaGemmTuner, BackendMatmulMatchesCpu) {
  Backend& gpu = cuda_backend();
  Backend& cpu = cpu_backend();
  uint32_t seed = 90;
  for (int64_t T : {9, 33, 300, 290, 512, 300})
    for (bool bias : {false, true}) {
      const int64_t N = 1000, K = 4096;
      auto x = random_values(T * K, dt(), ++seed);
      auto w = random_values(N * K, dt(), ++seed, -0.2f, 0.2f);
      auto b = random_values(N, DType::F32, ++seed);
      auto gx = upload(gpu, x, dt(), {T, K}), cx = upload(cpu, x, DType::F32, {T, K});
      auto gw = upload(gpu, w, dt(), {N, K}), cw = upload(cpu, w, dt(), {N, K});
      auto gb = upload(gpu, b, DType::F32, {N}), cb = upload(cpu, b, DType::F32, {N});
      auto go = empty(gpu, dt(), {T, N}), co = empty(cpu, DType::F32, {T, N});
      gpu.matmul(gx.t, gw.t, bias ? &gb.t : nullptr, go.t);
      cpu.matmul(cx.t, cw.t, bias ? &cb.t : nullptr, co.t);
      EXPECT_LT(rel_error(download(gpu, go.t), download(cpu, co.t)), tolerance(dt())) << "T=" << T << " bias=" << bias;
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGemmTuner, testing::Values(DType::BF16, DType::F16), dt_name);

// F32 stays on cublasGemmEx (no TF32, bit-for-bit as before): the tuner declines it.
TEST(CudaGemmTunerF32, LeftToCublas) {
  EMBER_REQUIRE_GPU();
  TunerStream ts;
  LtGemm g(ts.stream, ts.workspace, kWorkspace);
  auto x = upload(cuda_backend(), random_values(16 * 64, DType::F32, 1), DType::F32, {16, 64});
  auto w = upload(cuda_backend(), random_values(32 * 64, DType::F32, 2), DType::F32, {32, 64});
  auto out = empty(cuda_backend(), DType::F32, {16, 32});
  EXPECT_FALSE(g.run(x.t.data, w.t.data, out.t.data, 16, 32, 64, CUDA_R_32F));
  EXPECT_EQ(g.stats().calls, 0);
  EXPECT_EQ(g.stats().plans, 0);
}

}  // namespace
}  // namespace ember::test
