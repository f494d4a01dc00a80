// The small-T matmul kernel (cuda/kernels/gemv.cu): the backend's matmul against a float64 host
// reference, each block shape against cuBLAS, graph capture, and which calls it declines.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call
#define CHECK_CUBLAS(call) ASSERT_EQ((call), CUBLAS_STATUS_SUCCESS) << #call

// Reference out[t, n] = sum_k x[t, k] w[n, k] (+ bias[n]) in float64 over the dtype-exact inputs.
std::vector<float> host_matmul(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* b,
                               int64_t T, int64_t N, int64_t K) {
  std::vector<float> out(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = b ? (*b)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[t * K + k]) * w[n * K + k];
      out[t * N + n] = static_cast<float>(s);
    }
  return out;
}

class CudaGemv : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
  Backend& gpu() { return cuda_backend(); }
  DType dt() const { return GetParam(); }
};

std::string dt_name(const testing::TestParamInfo<DType>& i) { return dtype_name(i.param); }

// Through Backend::matmul: every T up to the kernel's limit and one past it (the backend switches to
// cuBLAS above kGemvCutoffTokens), odd N, K a multiple of 8 but not of 32 (a partial last chunk), and
// K = 129 (always cuBLAS), with and without bias.
TEST_P(CudaGemv, BackendMatchesHostReference) {
  struct Case { int64_t N, K; };
  uint32_t seed = 100;
  for (Case c : {Case{67, 64}, Case{1000, 136}, Case{5, 4104}, Case{300, 129}}) {
    for (int64_t T = 1; T <= cuda::kGemvMaxTokens + 1; ++T) {
      const bool with_bias = (T % 2) == 1;
      auto x = random_values(T * c.K, dt(), ++seed);
      auto w = random_values(c.N * c.K, dt(), ++seed, -0.2f, 0.2f);
      auto b = random_values(c.N, DType::F32, ++seed);
      auto gx = upload(gpu(), x, dt(), {T, c.K});
      auto gw = upload(gpu(), w, dt(), {c.N, c.K});
      auto gb = upload(gpu(), b, DType::F32, {c.N});
      auto go = empty(gpu(), dt(), {T, c.N});
      gpu().matmul(gx.t, gw.t, with_bias ? &gb.t : nullptr, go.t);
      auto want = host_matmul(x, w, with_bias ? &b : nullptr, T, c.N, c.K);
      EXPECT_LT(rel_error(download(gpu(), go.t), want), tolerance(dt()))
          << "T=" << T << " N=" << c.N << " K=" << c.K << " bias=" << with_bias;
    }
  }
}

// Device memory owned by a test.
struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { cudaMalloc(&p, bytes); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

std::vector<float> to_host(const void* dev, size_t n, DType dt) {
  std::vector<uint16_t> h(n);
  cudaMemcpy(h.data(), dev, n * 2, cudaMemcpyDeviceToHost);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = dt == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  return v;
}

// The kernel called directly with every block shape, against cublasGemmEx on the same device data
// (the call the backend makes for larger T), at model-like K.
TEST_P(CudaGemv, EveryShapeMatchesCublas) {
  if (dt() == DType::F32) GTEST_SKIP() << "the kernel takes F16/BF16 only; F32 stays on cuBLAS";
  const int64_t N = 3001, K = 4096, Tmax = cuda::kGemvMaxTokens;
  DeviceMem x(Tmax * K * 2), w(N * K * 2), ours(Tmax * N * 2), ref(Tmax * N * 2);
  ASSERT_NE(x.p, nullptr);
  ASSERT_NE(w.p, nullptr);
  ASSERT_NE(ours.p, nullptr);
  ASSERT_NE(ref.p, nullptr);
  CHECK_CUDA(cuda::launch_fill_random(x.p, Tmax * K, 11, 1.0f, 0.0f, dt(), nullptr));
  CHECK_CUDA(cuda::launch_fill_random(w.p, N * K, 12, 0.05f, 0.0f, dt(), nullptr));
  cublasHandle_t h = nullptr;
  CHECK_CUBLAS(cublasCreate(&h));
  const cudaDataType_t cdt = dt() == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f, beta = 0.0f;
  for (int64_t T : {1, 2, 3, 5, 8, 9, 16}) {
    const int n = static_cast<int>(N), t = static_cast<int>(T), k = static_cast<int>(K);
    ASSERT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, t, k, &alpha, w.p, cdt, k, x.p, cdt, k, &beta, ref.p, cdt,
                           n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    auto want = to_host(ref.p, T * N, dt());
    for (cuda::GemvShape s : {cuda::GemvShape{}, {1, 1, 4}, {1, 8, 4}, {1, 16, 2}, {1, 16, 4}, {1, 3, 8}, {1, 16, 8},
                              {2, 2, 4}, {2, 4, 2}, {2, 8, 4}}) {
      CHECK_CUDA(cudaMemset(ours.p, 0xff, Tmax * N * 2));  // NaN where nothing is written
      CHECK_CUDA(cuda::launch_gemv(x.p, w.p, nullptr, ours.p, T, N, K, dt(), nullptr, s));
      CHECK_CUDA(cudaDeviceSynchronize());
      EXPECT_LT(rel_error(to_host(ours.p, T * N, dt()), want), tolerance(dt()) * 0.5)
          << "T=" << T << " row_groups=" << s.row_groups << " warps=" << s.warps << " unroll=" << s.unroll;
    }
  }
  cublasDestroy(h);
}

// Captured into a CUDA graph and replayed, the kernel gives bit-identical results to a plain launch.
TEST_P(CudaGemv, CapturesInGraph) {
  if (dt() == DType::F32) GTEST_SKIP() << "the kernel takes F16/BF16 only";
  const int64_t T = 4, N = 2048, K = 1024;
  DeviceMem x(T * K * 2), w(N * K * 2), a(T * N * 2), b(T * N * 2), bias(N * 4);
  CHECK_CUDA(cuda::launch_fill_random(x.p, T * K, 21, 1.0f, 0.0f, dt(), nullptr));
  CHECK_CUDA(cuda::launch_fill_random(w.p, N * K, 22, 0.05f, 0.0f, dt(), nullptr));
  CHECK_CUDA(cuda::launch_fill_random(bias.p, N, 23, 0.5f, 0.0f, DType::F32, nullptr));
  CHECK_CUDA(cuda::launch_gemv(x.p, w.p, static_cast<float*>(bias.p), a.p, T, N, K, dt(), nullptr));
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CHECK_CUDA(cudaMemset(b.p, 0xff, T * N * 2));
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  CHECK_CUDA(cuda::launch_gemv(x.p, w.p, static_cast<float*>(bias.p), b.p, T, N, K, dt(), s));
  CHECK_CUDA(cudaStreamEndCapture(s, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  EXPECT_EQ(rel_error(to_host(b.p, T * N, dt()), to_host(a.p, T * N, dt())), 0.0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGemv, testing::Values(DType::F32, DType::F16, DType::BF16), dt_name);

TEST(CudaGemvApplies, DeclinesWhatItCannotDo) {
  alignas(16) static const uint16_t buf[64] = {};
  const void* p = buf;
  const void* off = buf + 1;  // 2 bytes past a 16-byte boundary
  EXPECT_TRUE(cuda::gemv_supports(p, p, 1, 1, 8, DType::BF16));
  EXPECT_TRUE(cuda::gemv_supports(p, p, cuda::kGemvMaxTokens, 7, 4096, DType::F16));
  EXPECT_FALSE(cuda::gemv_supports(p, p, 0, 7, 64, DType::BF16));
  EXPECT_FALSE(cuda::gemv_supports(p, p, cuda::kGemvMaxTokens + 1, 7, 64, DType::BF16));
  EXPECT_FALSE(cuda::gemv_supports(p, p, 1, 7, 129, DType::BF16));
  EXPECT_FALSE(cuda::gemv_supports(p, p, 1, 7, 64, DType::F32));
  EXPECT_FALSE(cuda::gemv_supports(off, p, 1, 7, 64, DType::BF16));
  EXPECT_FALSE(cuda::gemv_supports(p, off, 1, 7, 64, DType::BF16));
  EXPECT_EQ(cuda::launch_gemv(p, p, nullptr, nullptr, 1, 7, 129, DType::BF16, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::launch_gemv(p, p, nullptr, nullptr, 1, 7, 64, DType::BF16, nullptr, {2, 16, 4}),
            cudaErrorInvalidValue);  // two row groups allow at most 8 warps
  EXPECT_EQ(cuda::launch_gemv(p, p, nullptr, nullptr, 1, 7, 64, DType::BF16, nullptr, {1, 8, 3}),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace ember::test
