// Decode's fused matmuls (norm before, residual add or SwiGLU after): the backend ops against a
// float64 host reference, every fused kernel shape against the unfused GPU ops, and what they decline.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/launchers.h"

namespace ember::test {
namespace {

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

constexpr float kEps = 1e-5f;

// rms_norm(x) * nw in float64, rounded to the activation dtype as the unfused norm stores it.
std::vector<float> host_norm(const std::vector<float>& x, const std::vector<float>& nw, int64_t T, int64_t K,
                             DType dt) {
  std::vector<float> out(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int64_t k = 0; k < K; ++k) ss += static_cast<double>(x[t * K + k]) * x[t * K + k];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(K) + kEps);
    for (int64_t k = 0; k < K; ++k) out[t * K + k] = round_to(dt, static_cast<float>(x[t * K + k] * inv * nw[k]));
  }
  return out;
}

// out[t, n] = sum_k x[t, k] w[n, k] (+ bias[n]) in float64.
std::vector<double> host_product(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* b,
                                 int64_t T, int64_t N, int64_t K) {
  std::vector<double> out(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = b ? (*b)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[t * K + k]) * w[n * K + k];
      out[t * N + n] = s;
    }
  return out;
}

class CudaGemvFused : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
  Backend& gpu() { return cuda_backend(); }
  DType dt() const { return GetParam(); }
};

std::string dt_name(const testing::TestParamInfo<DType>& i) { return dtype_name(i.param); }

struct Case {
  int64_t N, K;
};
// Odd N, K with a partial last 32-k chunk, K past one 4096 row, and K = 129 (no fused kernel: the
// backend composes the plain ops). T runs one past the fused cut-off, where the ops compose as well.
const Case kCases[] = {{67, 64}, {1000, 136}, {24, 4104}, {40, 129}};

TEST_P(CudaGemvFused, NormMatmulMatchesHost) {
  uint32_t seed = 300;
  for (Case c : kCases) {
    for (int64_t T = 1; T <= cuda::kGemvCutoffTokens + 1; ++T) {
      const bool with_bias = T % 2 == 0;
      auto x = random_values(T * c.K, dt(), ++seed, -2.0f, 2.0f);
      auto nw = random_values(c.K, DType::F32, ++seed, 0.5f, 1.5f);
      auto w = random_values(c.N * c.K, dt(), ++seed, -0.2f, 0.2f);
      auto b = random_values(c.N, DType::F32, ++seed);
      auto gx = upload(gpu(), x, dt(), {T, c.K});
      auto gnw = upload(gpu(), nw, DType::F32, {c.K});
      auto gw = upload(gpu(), w, dt(), {c.N, c.K});
      auto gb = upload(gpu(), b, DType::F32, {c.N});
      auto go = empty(gpu(), dt(), {T, c.N});
      auto scratch = empty(gpu(), dt(), {T, c.K});
      gpu().norm_matmul(gx.t, gnw.t, kEps, gw.t, with_bias ? &gb.t : nullptr, go.t, scratch.t);
      auto p = host_product(host_norm(x, nw, T, c.K, dt()), w, with_bias ? &b : nullptr, T, c.N, c.K);
      EXPECT_LT(rel_error(download(gpu(), go.t), std::vector<float>(p.begin(), p.end())), tolerance(dt()))
          << "T=" << T << " N=" << c.N << " K=" << c.K << " bias=" << with_bias;
    }
  }
}

TEST_P(CudaGemvFused, NormMatmulSwigluMatchesHost) {
  uint32_t seed = 500;
  for (Case c : kCases) {
    for (int64_t T = 1; T <= cuda::kGemvCutoffTokens + 1; ++T) {
      const int64_t F = c.N;
      auto x = random_values(T * c.K, dt(), ++seed, -2.0f, 2.0f);
      auto nw = random_values(c.K, DType::F32, ++seed, 0.5f, 1.5f);
      auto w = random_values(2 * F * c.K, dt(), ++seed, -0.2f, 0.2f);
      auto gx = upload(gpu(), x, dt(), {T, c.K});
      auto gnw = upload(gpu(), nw, DType::F32, {c.K});
      auto gw = upload(gpu(), w, dt(), {2 * F, c.K});
      auto go = empty(gpu(), dt(), {T, F});
      auto normed = empty(gpu(), dt(), {T, c.K});
      auto gate_up = empty(gpu(), dt(), {T, 2 * F});
      gpu().norm_matmul_swiglu(gx.t, gnw.t, kEps, gw.t, go.t, normed.t, gate_up.t);
      auto gu = host_product(host_norm(x, nw, T, c.K, dt()), w, nullptr, T, 2 * F, c.K);
      std::vector<float> want(static_cast<size_t>(T * F));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t f = 0; f < F; ++f) {
          const double g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
          want[t * F + f] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
        }
      EXPECT_LT(rel_error(download(gpu(), go.t), want), tolerance(dt())) << "T=" << T << " F=" << F << " K=" << c.K;
    }
  }
}

TEST_P(CudaGemvFused, MatmulAddMatchesHost) {
  uint32_t seed = 700;
  for (Case c : kCases) {
    for (int64_t T = 1; T <= cuda::kGemvCutoffTokens + 1; ++T) {
      auto x = random_values(T * c.K, dt(), ++seed);
      auto w = random_values(c.N * c.K, dt(), ++seed, -0.2f, 0.2f);
      auto r = random_values(T * c.N, dt(), ++seed, -0.1f, 0.1f);  // small: the product dominates the sum
      auto gx = upload(gpu(), x, dt(), {T, c.K});
      auto gw = upload(gpu(), w, dt(), {c.N, c.K});
      auto gr = upload(gpu(), r, dt(), {T, c.N});
      auto scratch = empty(gpu(), dt(), {T, c.N});
      gpu().matmul_add(gx.t, gw.t, gr.t, scratch.t);
      auto p = host_product(x, w, nullptr, T, c.N, c.K);
      std::vector<float> want(r.size());
      for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>(r[i] + p[i]);
      EXPECT_LT(rel_error(download(gpu(), gr.t), want), tolerance(dt())) << "T=" << T << " N=" << c.N << " K=" << c.K;
    }
  }
}

TEST_P(CudaGemvFused, RejectsMismatchedShapes) {
  auto x = empty(gpu(), dt(), {2, 64});
  auto nw = empty(gpu(), DType::F32, {32});
  auto w = empty(gpu(), dt(), {16, 64});
  auto out = empty(gpu(), dt(), {2, 16});
  auto half = empty(gpu(), dt(), {2, 8});
  auto scratch = empty(gpu(), dt(), {2, 64});
  auto gu = empty(gpu(), dt(), {2, 16});
  EXPECT_THROW(gpu().norm_matmul(x.t, nw.t, kEps, w.t, nullptr, out.t, scratch.t), InvalidArgument);  // norm of 32
  EXPECT_THROW(gpu().norm_matmul_swiglu(x.t, nw.t, kEps, w.t, out.t, scratch.t, gu.t), InvalidArgument);
  auto nw64 = empty(gpu(), DType::F32, {64});
  EXPECT_THROW(gpu().norm_matmul_swiglu(x.t, nw64.t, kEps, w.t, out.t, scratch.t, gu.t), InvalidArgument);  // out [T, 16]
  EXPECT_NO_THROW(gpu().norm_matmul_swiglu(x.t, nw64.t, kEps, w.t, half.t, scratch.t, gu.t));
  EXPECT_THROW(gpu().matmul_add(x.t, w.t, half.t, scratch.t), InvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGemvFused, testing::Values(DType::F32, DType::F16, DType::BF16), dt_name);

// Device memory owned by a test.
struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { cudaMalloc(&p, bytes); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

std::vector<float> to_host(const void* dev, size_t n) {
  std::vector<uint16_t> h(n);
  cudaMemcpy(h.data(), dev, n * 2, cudaMemcpyDeviceToHost);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  return v;
}

// Each fused mode, called directly with every block shape it takes, against the unfused kernels
// (rms_norm, plain GEMV, silu_mul, add) on the same bf16 device data at model-like K.
TEST(CudaGemvFusedShapes, EveryShapeMatchesUnfusedKernels) {
  EMBER_REQUIRE_GPU();
  const DType dt = DType::BF16;
  const int64_t N = 3001, K = 4096, Tmax = cuda::kGemvCutoffTokens;
  DeviceMem x(Tmax * K * 2), normed(Tmax * K * 2), w(2 * N * K * 2), nw(K * 4), ref(Tmax * 2 * N * 2),
      ref2(Tmax * N * 2), ours(Tmax * N * 2);
  CHECK_CUDA(cuda::launch_fill_random(x.p, Tmax * K, 31, 2.0f, 0.0f, dt, nullptr));
  CHECK_CUDA(cuda::launch_fill_random(w.p, 2 * N * K, 32, 0.05f, 0.0f, dt, nullptr));
  CHECK_CUDA(cuda::launch_fill_random(nw.p, K, 33, 0.5f, 1.0f, DType::F32, nullptr));
  const float* nwf = static_cast<const float*>(nw.p);
  using cuda::GemvMode;
  using cuda::GemvShape;
  for (int64_t T : {1, 3, 8}) {
    CHECK_CUDA(cuda::launch_rms_norm(x.p, nwf, normed.p, T, K, kEps, dt, nullptr));
    // kNorm against rms_norm + GEMV.
    CHECK_CUDA(cuda::launch_gemv(normed.p, w.p, nullptr, ref.p, T, N, K, dt, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    auto want = to_host(ref.p, T * N);
    for (GemvShape s : {GemvShape{}, {1, 8, 4}, {1, 3, 8}, {1, 16, 8}, {2, 4, 4}, {2, 8, 4}}) {
      CHECK_CUDA(cudaMemset(ours.p, 0xff, Tmax * N * 2));
      CHECK_CUDA(cuda::launch_gemv_fused(x.p, w.p, nullptr, ours.p, T, N, K, dt, {GemvMode::kNorm, nwf, kEps},
                                         nullptr, s));
      CHECK_CUDA(cudaDeviceSynchronize());
      EXPECT_LT(rel_error(to_host(ours.p, T * N), want), tolerance(dt))
          << "norm T=" << T << " shape " << s.row_groups << "/" << s.warps << "/" << s.unroll;
    }
    // kNormSwiGLU against rms_norm + GEMV over [gate; up] + silu_mul.
    CHECK_CUDA(cuda::launch_gemv(normed.p, w.p, nullptr, ref.p, T, 2 * N, K, dt, nullptr));
    CHECK_CUDA(cuda::launch_silu_mul(ref.p, ref2.p, T, N, dt, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    want = to_host(ref2.p, T * N);
    for (GemvShape s : {GemvShape{}, {2, 1, 4}, {2, 8, 4}}) {
      CHECK_CUDA(cudaMemset(ours.p, 0xff, Tmax * N * 2));
      CHECK_CUDA(cuda::launch_gemv_fused(x.p, w.p, nullptr, ours.p, T, N, K, dt, {GemvMode::kNormSwiGLU, nwf, kEps},
                                         nullptr, s));
      CHECK_CUDA(cudaDeviceSynchronize());
      EXPECT_LT(rel_error(to_host(ours.p, T * N), want), tolerance(dt))
          << "swiglu T=" << T << " shape " << s.row_groups << "/" << s.warps << "/" << s.unroll;
    }
    // kAdd against GEMV + add: both start from the same residual (the first T*N of x).
    CHECK_CUDA(cuda::launch_gemv(normed.p, w.p, nullptr, ref.p, T, N, K, dt, nullptr));
    CHECK_CUDA(cudaMemcpy(ref2.p, x.p, T * N * 2, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cuda::launch_add(ref2.p, ref.p, T * N, dt, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    want = to_host(ref2.p, T * N);
    for (GemvShape s : {GemvShape{}, {1, 8, 4}, {1, 16, 8}, {2, 4, 4}}) {
      CHECK_CUDA(cudaMemcpy(ours.p, x.p, T * N * 2, cudaMemcpyDeviceToDevice));
      CHECK_CUDA(cuda::launch_gemv_fused(normed.p, w.p, nullptr, ours.p, T, N, K, dt, {GemvMode::kAdd, nullptr, 0.0f},
                                         nullptr, s));
      CHECK_CUDA(cudaDeviceSynchronize());
      // Same products rounded the same way: only the summation order inside a block may differ.
      EXPECT_LT(rel_error(to_host(ours.p, T * N), want), tolerance(dt) * 0.5)
          << "add T=" << T << " shape " << s.row_groups << "/" << s.warps << "/" << s.unroll;
    }
  }
}

TEST(CudaGemvFusedApplies, DeclinesWhatItCannotDo) {
  alignas(16) static const uint16_t buf[64] = {};
  alignas(16) static const float norm[16] = {};
  const void* p = buf;
  using cuda::GemvMode;
  const cuda::GemvFusion with_norm{GemvMode::kNorm, norm, kEps};
  const cuda::GemvFusion swiglu{GemvMode::kNormSwiGLU, norm, kEps};
  const cuda::GemvFusion add{GemvMode::kAdd, nullptr, 0.0f};
  EXPECT_TRUE(cuda::gemv_fused_supports(p, p, cuda::kGemvCutoffTokens, 7, 64, DType::BF16, with_norm));
  EXPECT_FALSE(cuda::gemv_fused_supports(p, p, cuda::kGemvCutoffTokens + 1, 7, 64, DType::BF16, with_norm));
  EXPECT_FALSE(cuda::gemv_fused_supports(p, p, 1, 7, 64, DType::BF16, {GemvMode::kNorm, nullptr, kEps}));
  EXPECT_FALSE(cuda::gemv_fused_supports(p, p, 1, 7, 64, DType::BF16, {GemvMode::kNorm, norm + 1, kEps}));
  EXPECT_FALSE(cuda::gemv_fused_supports(p, p, 1, 7, 64, DType::F32, add));
  EXPECT_FALSE(cuda::gemv_fused_supports(p, p, 1, 7, 129, DType::BF16, add));
  EXPECT_EQ(cuda::launch_gemv_fused(p, p, norm, nullptr, 1, 7, 64, DType::BF16, swiglu, nullptr),
            cudaErrorInvalidValue);  // SwiGLU takes no bias
  EXPECT_EQ(cuda::launch_gemv_fused(p, p, nullptr, nullptr, 1, 7, 64, DType::BF16, swiglu, nullptr, {1, 8, 4}),
            cudaErrorInvalidValue);  // SwiGLU needs two row groups
  EXPECT_EQ(cuda::launch_gemv_fused(p, p, nullptr, nullptr, 1, 7, 64, DType::BF16, add, nullptr, {1, 8, 2}),
            cudaErrorInvalidValue);  // the fused modes keep the auto-picked unrolls only
}

}  // namespace
}  // namespace ember::test
