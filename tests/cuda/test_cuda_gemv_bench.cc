// Bandwidth of the small-T matmul against cuBLAS on the Llama-3-8B shapes (bf16), timed as CUDA-graph
// replays over weight copies that outgrow L2. Disabled: run with --gtest_also_run_disabled_tests.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

struct Shape {
  const char* name;
  int64_t N, K;
  int per_step;  // matmuls of this shape per decode step of Llama-3-8B as the engine calls them
};

constexpr size_t kRotateBytes = size_t{512} << 20;  // weight copies cycled per graph: 10x the L2

// Median time of one launch (ms): `launches` calls of launch(i) captured into one graph, replayed.
void time_graph(cudaStream_t s, int launches, const std::function<void(int)>& launch, double* ms) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < launches; ++i) launch(i);
  CHECK_CUDA(cudaStreamEndCapture(s, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaGraphLaunch(exec, s));  // warm-up
  std::vector<float> times;
  for (int r = 0; r < 9; ++r) {
    CHECK_CUDA(cudaEventRecord(a, s));
    CHECK_CUDA(cudaGraphLaunch(exec, s));
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    times.push_back(t);
  }
  std::sort(times.begin(), times.end());
  *ms = times[times.size() / 2] / launches;
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST(CudaGemvBench, DISABLED_Llama3_8B_Bf16) {
  EMBER_REQUIRE_GPU();
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, size_t{32} << 20));
  ASSERT_EQ(cublasSetWorkspace(h, ws, size_t{32} << 20), CUBLAS_STATUS_SUCCESS);

  {  // the copy ceiling: bytes read plus bytes written
    const size_t bytes = size_t{1} << 30;
    void *src = nullptr, *dst = nullptr;
    CHECK_CUDA(cudaMalloc(&src, bytes));
    CHECK_CUDA(cudaMalloc(&dst, bytes));
    CHECK_CUDA(cudaMemsetAsync(src, 1, bytes, s));
    double ms = 0;
    for (int rep = 0; rep < 2; ++rep)  // the first pass also brings the clocks up
      time_graph(s, 16, [&](int) { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s); }, &ms);
    std::printf("device-to-device copy: %.0f GB/s (read + write)\n", 2.0 * bytes / (ms * 1e6));
    cudaFree(src);
    cudaFree(dst);
  }

  const Shape shapes[] = {{"qkv_fused", 6144, 4096, 32}, {"o", 4096, 4096, 32},    {"gate_up", 28672, 4096, 32},
                          {"down", 4096, 14336, 32},     {"lm_head", 128256, 4096, 1}};
  // auto, then row groups x warps x unroll
  const cuda::GemvShape variants[] = {{}, {1, 4, 8}, {1, 8, 4}, {1, 8, 8}, {1, 12, 8},
                                      {1, 16, 4}, {1, 16, 8}, {2, 4, 4}, {2, 8, 4}};
  const int Ts[] = {1, 8, 16};
  const DType dt = DType::BF16;
  double step_ours[17] = {}, step_cublas[17] = {};

  std::printf("\nGB/s = (weights + x + out bytes) / median time; auto = the shape launch_gemv picks\n");
  std::printf("%-10s %3s %8s %9s |", "shape", "T", "auto us", "auto GB/s");
  for (size_t v = 1; v < std::size(variants); ++v)
    std::printf(" %d/%d/%d", variants[v].row_groups, variants[v].warps, variants[v].unroll);
  std::printf(" | %7s %9s\n", "cublas", "cublas us");
  for (const Shape& sh : shapes) {
    const size_t wbytes = static_cast<size_t>(sh.N * sh.K) * 2;
    const int copies = static_cast<int>(std::max<size_t>(1, (kRotateBytes + wbytes - 1) / wbytes));
    void *w = nullptr, *x = nullptr, *out = nullptr;
    CHECK_CUDA(cudaMalloc(&w, wbytes * copies));
    CHECK_CUDA(cudaMalloc(&x, 16 * sh.K * 2));
    CHECK_CUDA(cudaMalloc(&out, 16 * sh.N * 2));
    CHECK_CUDA(cuda::launch_fill_random(w, sh.N * sh.K * copies, 1, 0.05f, 0.0f, dt, s));
    CHECK_CUDA(cuda::launch_fill_random(x, 16 * sh.K, 2, 1.0f, 0.0f, dt, s));
    const int launches = std::max(copies, 8);
    auto wcopy = [&](int i) { return static_cast<const char*>(w) + static_cast<size_t>(i % copies) * wbytes; };
    for (int T : Ts) {
      const double bytes = static_cast<double>(wbytes) + 2.0 * T * (sh.K + sh.N);
      std::vector<double> gbs;
      double auto_ms = 0;
      for (const cuda::GemvShape& v : variants) {
        double ms = 0;
        time_graph(
            s, launches,
            [&](int i) { cuda::launch_gemv(x, wcopy(i), nullptr, out, T, sh.N, sh.K, dt, s, v); }, &ms);
        CHECK_CUDA(cudaGetLastError());
        if (v.row_groups == 0) auto_ms = ms;
        gbs.push_back(bytes / (ms * 1e6));
      }
      const float alpha = 1.0f, beta = 0.0f;
      const int n = static_cast<int>(sh.N), k = static_cast<int>(sh.K);
      double cublas_ms = 0;
      time_graph(
          s, launches,
          [&](int i) {
            cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, T, k, &alpha, wcopy(i), CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                         &beta, out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          },
          &cublas_ms);
      CHECK_CUDA(cudaGetLastError());
      step_ours[T] += sh.per_step * auto_ms;
      step_cublas[T] += sh.per_step * cublas_ms;
      std::printf("%-10s %3d %8.1f %9.0f |", sh.name, T, auto_ms * 1e3, gbs[0]);
      for (size_t v = 1; v < gbs.size(); ++v) std::printf(" %5.0f", gbs[v]);
      std::printf(" | %7.0f %9.1f\n", bytes / (cublas_ms * 1e6), cublas_ms * 1e3);
    }
    cudaFree(w);
    cudaFree(x);
    cudaFree(out);
  }
  std::printf("\nLlama-3-8B matmuls per decode step (qkv, o, gate_up, down x 32 layers + lm_head):\n");
  for (int T : Ts)
    std::printf("  T=%2d: gemv %.3f ms, cuBLAS %.3f ms\n", T, step_ours[T], step_cublas[T]);
  cudaFree(ws);
  cublasDestroy(h);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace ember::test
