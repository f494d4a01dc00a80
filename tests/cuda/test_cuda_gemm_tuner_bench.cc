// Prefill GEMMs of Llama-3-8B (bf16) at the token counts the pipeline feeds: cublasGemmEx's default
// against cuBLASLt's heuristic #0 and the tuner's timed choice, and each M's cost per token
// against M = 8192. Disabled: run with --gtest_also_run_disabled_tests.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iterator>
#include <vector>

#include "cuda_test_util.h"
#include "gemm_tuner.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

constexpr size_t kWorkspace = size_t{32} << 20;  // as the backend's
constexpr float kBatchMs = 4.0f;                 // each timed batch lasts about this long

struct Shape {
  const char* name;
  int64_t N, K;
};

// Median over 5 batches of the time of one call (ms); a batch repeats the call until it lasts
// about kBatchMs.
double time_calls(cudaStream_t s, const std::function<void()>& call) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  auto batch = [&](int reps) {
    cudaEventRecord(a, s);
    for (int r = 0; r < reps; ++r) call();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return static_cast<double>(ms) / reps;
  };
  batch(2);  // warm-up
  const double estimate = std::max(batch(1), 1e-3);
  const int reps = std::clamp(static_cast<int>(kBatchMs / estimate) + 1, 2, 400);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(batch(reps));
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t[t.size() / 2];
}

TEST(CudaGemmTunerBench, DISABLED_Llama3_8B_Bf16_Prefill) {
  EMBER_REQUIRE_GPU();
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cublasHandle_t h = nullptr;
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, kWorkspace));
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetWorkspace(h, ws, kWorkspace), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
  {
    cuda::LtGemm tuned(s, ws, kWorkspace, cuda::LtGemm::Options{true, 8});
    cuda::LtGemm plain(s, ws, kWorkspace, cuda::LtGemm::Options{false, 8});

    const Shape shapes[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336}};
    const int64_t Ms[] = {256, 512, 1024, 2048, 8192};
    constexpr int kRef = 4;  // index of M = 8192
    const DType dt = DType::BF16;
    const int64_t maxM = 8192, maxN = 28672, maxK = 14336;
    void *x = nullptr, *w = nullptr, *out = nullptr;
    CHECK_CUDA(cudaMalloc(&x, static_cast<size_t>(maxM * maxK) * 2));
    CHECK_CUDA(cudaMalloc(&w, static_cast<size_t>(maxN * 4096) * 2));  // N * K is largest for gate_up
    CHECK_CUDA(cudaMalloc(&out, static_cast<size_t>(maxM * maxN) * 2));
    CHECK_CUDA(cuda::launch_fill_random(x, maxM * maxK, 1, 1.0f, 0.0f, dt, s));
    CHECK_CUDA(cuda::launch_fill_random(w, maxN * 4096, 2, 0.05f, 0.0f, dt, s));

    const float alpha = 1.0f, beta = 0.0f;
    auto gemm_ex = [&](int64_t M, const Shape& sh) {
      cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(sh.N), static_cast<int>(M), static_cast<int>(sh.K),
                   &alpha, w, CUDA_R_16BF, static_cast<int>(sh.K), x, CUDA_R_16BF, static_cast<int>(sh.K), &beta, out,
                   CUDA_R_16BF, static_cast<int>(sh.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    // Bring the clocks up before anything is timed.
    time_calls(s, [&] { gemm_ex(8192, shapes[2]); });

    double ms[4][5][3] = {};  // [shape][M][cublas, lt #0, tuned]
    std::printf("\nTFLOP/s = 2 M N K / median time; cand = the tuner's pick (0 = heuristic #0); tune = its first call\n");
    std::printf("%-8s %5s | %9s %7s | %9s %7s | %9s %7s %4s %8s | %7s\n", "shape", "M", "cublas ms", "TFLOP/s",
                "lt#0 ms", "TFLOP/s", "tuned ms", "TFLOP/s", "cand", "tune ms", "speedup");
    for (int si = 0; si < 4; ++si) {
      const Shape& sh = shapes[si];
      for (int mi = 0; mi < 5; ++mi) {
        const int64_t M = Ms[mi];
        const auto t0 = std::chrono::steady_clock::now();
        ASSERT_TRUE(tuned.run(x, w, out, M, sh.N, sh.K, CUDA_R_16BF));
        CHECK_CUDA(cudaStreamSynchronize(s));
        const double tune_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        ASSERT_TRUE(plain.run(x, w, out, M, sh.N, sh.K, CUDA_R_16BF));
        ms[si][mi][0] = time_calls(s, [&] { gemm_ex(M, sh); });
        ms[si][mi][1] = time_calls(s, [&] { plain.run(x, w, out, M, sh.N, sh.K, CUDA_R_16BF); });
        ms[si][mi][2] = time_calls(s, [&] { tuned.run(x, w, out, M, sh.N, sh.K, CUDA_R_16BF); });
        CHECK_CUDA(cudaGetLastError());
        const double flop = 2.0 * static_cast<double>(M) * sh.N * sh.K;
        auto tflops = [&](double t) { return flop / (t * 1e9); };
        std::printf("%-8s %5lld | %9.3f %7.0f | %9.3f %7.0f | %9.3f %7.0f %4d %8.1f | %6.3fx\n", sh.name,
                    static_cast<long long>(M), ms[si][mi][0], tflops(ms[si][mi][0]), ms[si][mi][1],
                    tflops(ms[si][mi][1]), ms[si][mi][2], tflops(ms[si][mi][2]),
                    tuned.chosen_candidate(M, sh.N, sh.K, CUDA_R_16BF), tune_ms, ms[si][mi][0] / ms[si][mi][2]);
      }
    }

    std::printf("\nper-token cost against M = 8192 ((ms / M) / (ms_8192 / 8192); 1.00 = as efficient)\n");
    std::printf("%-8s %5s | %7s %7s %7s\n", "shape", "M", "cublas", "lt#0", "tuned");
    auto ratio = [&](double t, int mi, double ref) { return (t / Ms[mi]) / (ref / Ms[kRef]); };
    for (int si = 0; si < 4; ++si)
      for (int mi = 0; mi < 5; ++mi)
        std::printf("%-8s %5lld | %7.3f %7.3f %7.3f\n", shapes[si].name, static_cast<long long>(Ms[mi]),
                    ratio(ms[si][mi][0], mi, ms[si][kRef][0]), ratio(ms[si][mi][1], mi, ms[si][kRef][1]),
                    ratio(ms[si][mi][2], mi, ms[si][kRef][2]));

    std::printf("\none layer's matmuls (qkv + o + gate_up + down); per-token ratios against cuBLAS at M = 8192\n");
    std::printf("%5s | %9s %9s %9s | %7s %7s %7s\n", "M", "cublas ms", "lt#0 ms", "tuned ms", "cublas", "lt#0",
                "tuned");
    double layer[5][3] = {};
    for (int mi = 0; mi < 5; ++mi)
      for (int si = 0; si < 4; ++si)
        for (int v = 0; v < 3; ++v) layer[mi][v] += ms[si][mi][v];
    for (int mi = 0; mi < 5; ++mi)
      std::printf("%5lld | %9.3f %9.3f %9.3f | %7.3f %7.3f %7.3f\n", static_cast<long long>(Ms[mi]), layer[mi][0],
                  layer[mi][1], layer[mi][2], ratio(layer[mi][0], mi, layer[kRef][0]),
                  ratio(layer[mi][1], mi, layer[kRef][0]), ratio(layer[mi][2], mi, layer[kRef][0]));
    const auto& st = tuned.stats();
    std::printf("\ntuner: %d shapes timed, %d heuristic-only, %d declined\n", st.tunings, st.heuristic_only,
                st.unsupported);
    cudaFree(x);
    cudaFree(w);
    cudaFree(out);
  }
  cublasDestroy(h);
  cudaFree(ws);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace ember::test
