// The CPU matmul on Q4_0 / Q4_1 / Q8_0 blocks against dequantize-then-multiply in double, within
// the error that quantizing the activations to 16 bits allows; AVX2 == portable bit for bit; outputs
// that do not depend on batching or threads; and the embedding of a block-format table.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "ember/backend.h"
#include "format/gguf_dequant.h"

namespace ember {
namespace {

// Random but realistic blocks: rows of floats quantized the way ggml's reference quantizers do
// (per block of 32: scale from the extreme value, nearest quant), then stored in the file layout.
std::vector<uint8_t> make_blocks(DType t, int64_t rows, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  const int64_t nb = k / 32;
  const size_t bb = dtype_block_bytes(t);
  std::vector<uint8_t> out(static_cast<size_t>(rows * nb) * bb);
  for (int64_t blk = 0; blk < rows * nb; ++blk) {
    float x[32];
    for (float& v : x) v = dist(rng);
    uint8_t* b = out.data() + blk * bb;
    float lo = x[0], hi = x[0], amax = 0.0f, extreme = 0.0f;
    for (float v : x) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      if (std::fabs(v) > amax) { amax = std::fabs(v); extreme = v; }
    }
    if (t == DType::Q8_0) {
      const float d = amax / 127.0f;
      const uint16_t dh = f32_to_f16(d);
      std::memcpy(b, &dh, 2);
      for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(x[j] / d)));
    } else if (t == DType::Q4_0) {
      const float d = extreme / -8.0f;
      const uint16_t dh = f32_to_f16(d);
      std::memcpy(b, &dh, 2);
      for (int j = 0; j < 16; ++j) {
        auto q = [&](float v) { return static_cast<uint8_t>(std::clamp<long>(std::lround(v / d + 8.0f), 0, 15)); };
        b[2 + j] = static_cast<uint8_t>(q(x[j]) | (q(x[j + 16]) << 4));
      }
    } else {
      const float d = (hi - lo) / 15.0f;
      const uint16_t dh = f32_to_f16(d), mh = f32_to_f16(lo);
      std::memcpy(b, &dh, 2);
      std::memcpy(b + 2, &mh, 2);
      for (int j = 0; j < 16; ++j) {
        auto q = [&](float v) { return static_cast<uint8_t>(std::clamp<long>(std::lround((v - lo) / d), 0, 15)); };
        b[4 + j] = static_cast<uint8_t>(q(x[j]) | (q(x[j + 16]) << 4));
      }
    }
  }
  return out;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<float> run(cpu::Isa isa, const std::vector<float>& x, int64_t rows, int64_t k,
                       const std::vector<uint8_t>& w, DType t, int64_t cols, const float* bias, int threads) {
  std::vector<float> out(static_cast<size_t>(rows * cols), -1.0f);
  std::vector<cpu::Q16Block> scratch;
  cpu::matmul_quantized(isa, x.data(), rows, k, w.data(), t, cols, bias, out.data(), &scratch, threads);
  return out;
}

struct Case {
  DType type;
  int64_t rows, k, cols;
};

class QuantMatmul : public ::testing::TestWithParam<Case> {};

// The kernel computes sum_e w_e * xq_e exactly in integers (w the dequantized weight, xq the
// activation rounded to its block's 16-bit grid of step d = max|x| / 32767), so it differs from
// the float product by at most sum_blocks d/2 * sum_e |w_e|, plus float rounding of the per-block
// products and sums: a few roundings per block on each lane's running sum, bounded by
// 4 * blocks * 2^-24 of sum |w_e x_e|.
TEST_P(QuantMatmul, MatchesDequantizedReferenceWithinActivationRounding) {
  const Case c = GetParam();
  const auto w = make_blocks(c.type, c.cols, c.k, 7);
  const auto x = random_floats(static_cast<size_t>(c.rows * c.k), 11);
  const auto bias = random_floats(static_cast<size_t>(c.cols), 13);
  std::vector<float> wf(static_cast<size_t>(c.cols * c.k));
  dequantize_blocks(c.type, w.data(), c.cols * c.k, wf.data());
  const auto got = run(cpu::detect_isa(), x, c.rows, c.k, w, c.type, c.cols, bias.data(), 2);
  for (int64_t t = 0; t < c.rows; ++t) {
    for (int64_t n = 0; n < c.cols; ++n) {
      double ref = bias[n], bound = 0.0, mag = std::fabs(bias[n]);
      for (int64_t b = 0; b < c.k / 32; ++b) {
        double amax = 0.0, wabs = 0.0;
        for (int64_t e = b * 32; e < b * 32 + 32; ++e) {
          const double xv = x[t * c.k + e], wv = wf[n * c.k + e];
          ref += xv * wv;
          mag += std::fabs(xv * wv);
          amax = std::max(amax, std::fabs(xv));
          wabs += std::fabs(wv);
        }
        bound += amax / 32767.0 / 2.0 * wabs;
      }
      const double tol = bound + 4.0 * (c.k / 32) * std::ldexp(1.0, -24) * mag + 1e-7;
      ASSERT_NEAR(got[t * c.cols + n], ref, tol) << dtype_name(c.type) << " row " << t << " col " << n;
    }
  }
  // Overall the result is as good as a float matmul: relative error far below the weights' own.
  double err = 0.0, norm = 0.0;
  for (int64_t t = 0; t < c.rows; ++t) {
    for (int64_t n = 0; n < c.cols; ++n) {
      double ref = bias[n];
      for (int64_t e = 0; e < c.k; ++e) ref += static_cast<double>(x[t * c.k + e]) * wf[n * c.k + e];
      err += (got[t * c.cols + n] - ref) * (got[t * c.cols + n] - ref);
      norm += ref * ref;
    }
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-4) << dtype_name(c.type);
}

TEST_P(QuantMatmul, Avx2AndPortableAgreeBitwise) {
  if (cpu::detect_isa() != cpu::Isa::kAvx2) GTEST_SKIP() << "this CPU has no AVX2";
  const Case c = GetParam();
  const auto w = make_blocks(c.type, c.cols, c.k, 17);
  const auto x = random_floats(static_cast<size_t>(c.rows * c.k), 19);
  const auto bias = random_floats(static_cast<size_t>(c.cols), 23);
  for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
    const auto avx = run(cpu::Isa::kAvx2, x, c.rows, c.k, w, c.type, c.cols, b, 2);
    const auto portable = run(cpu::Isa::kPortable, x, c.rows, c.k, w, c.type, c.cols, b, 1);
    EXPECT_TRUE(bitwise_equal(avx, portable)) << dtype_name(c.type);
  }
}

TEST_P(QuantMatmul, RowAloneEqualsRowInBatchWhateverTheThreads) {
  const Case c = GetParam();
  const auto w = make_blocks(c.type, c.cols, c.k, 29);
  const auto x = random_floats(static_cast<size_t>(c.rows * c.k), 31);
  for (cpu::Isa isa : {cpu::Isa::kPortable, cpu::detect_isa()}) {
    const auto batched = run(isa, x, c.rows, c.k, w, c.type, c.cols, nullptr, 2);
    EXPECT_TRUE(bitwise_equal(batched, run(isa, x, c.rows, c.k, w, c.type, c.cols, nullptr, 1)));
    for (int64_t t = 0; t < c.rows; ++t) {
      std::vector<float> row(x.begin() + t * c.k, x.begin() + (t + 1) * c.k);
      const auto alone = run(isa, row, 1, c.k, w, c.type, c.cols, nullptr, 2);
      std::vector<float> from_batch(batched.begin() + t * c.cols, batched.begin() + (t + 1) * c.cols);
      ASSERT_TRUE(bitwise_equal(alone, from_batch)) << dtype_name(c.type) << " row " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, QuantMatmul,
    ::testing::Values(Case{DType::Q4_0, 7, 96, 37}, Case{DType::Q4_1, 7, 96, 37}, Case{DType::Q8_0, 7, 96, 37},
                      Case{DType::Q4_0, 70, 576, 130}, Case{DType::Q4_1, 70, 576, 130},
                      Case{DType::Q8_0, 5, 1536, 67}),
    [](const ::testing::TestParamInfo<Case>& i) {
      return std::string(dtype_name(i.param.type)) + "_" + std::to_string(i.param.rows) + "x" +
             std::to_string(i.param.k) + "x" + std::to_string(i.param.cols);
    });

TEST(QuantMatmul, NonFiniteActivationGivesNaNOnlyInItsRow) {
  const auto w = make_blocks(DType::Q4_1, 9, 64, 37);
  auto x = random_floats(3 * 64, 41);
  x[64 + 5] = INFINITY;
  for (cpu::Isa isa : {cpu::Isa::kPortable, cpu::detect_isa()}) {
    const auto out = run(isa, x, 3, 64, w, DType::Q4_1, 9, nullptr, 2);
    for (int n = 0; n < 9; ++n) {
      EXPECT_TRUE(std::isfinite(out[n]));
      EXPECT_TRUE(std::isnan(out[9 + n]));
      EXPECT_TRUE(std::isfinite(out[18 + n]));
    }
  }
}

TEST(QuantMatmul, BackendMatmulAndEmbedReadBlocks) {
  auto be = make_cpu_backend(2);
  EXPECT_EQ(be->weight_storage_dtype(DType::Q4_1), DType::Q4_1);
  const int64_t vocab = 10, h = 64;
  auto table = make_blocks(DType::Q8_0, vocab, h, 43);
  Tensor tw{table.data(), DType::Q8_0, {vocab, h}};
  EXPECT_EQ(tw.nbytes(), static_cast<size_t>(vocab * 2 * 34));
  EXPECT_EQ(tw.rows(3, 5).data, table.data() + 3 * 2 * 34);
  const int32_t ids[3] = {4, 0, 9};
  std::vector<float> emb(3 * h);
  Tensor te{emb.data(), DType::F32, {3, h}};
  be->embed(tw, ids, 3, te);
  std::vector<float> all(static_cast<size_t>(vocab * h));
  dequantize_blocks(DType::Q8_0, table.data(), vocab * h, all.data());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(0, std::memcmp(emb.data() + i * h, all.data() + ids[i] * h, h * sizeof(float)));
  }
  // The LM head on the same table: logits of the embedded rows equal the kernel's own result.
  std::vector<float> logits(3 * vocab);
  Tensor tl{logits.data(), DType::F32, {3, vocab}};
  be->matmul(te, tw, nullptr, tl);
  EXPECT_TRUE(bitwise_equal(logits, run(cpu::detect_isa(), emb, 3, h, table, DType::Q8_0, vocab, nullptr, 1)));
  // A weight row that is not whole blocks is refused with the dtype in the message.
  Tensor bad{table.data(), DType::Q8_0, {vocab, 48}};
  std::vector<float> x48(48), o(vocab);
  Tensor tx{x48.data(), DType::F32, {1, 48}}, to{o.data(), DType::F32, {1, vocab}};
  try {
    be->matmul(tx, bad, nullptr, to);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("Q8_0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ember
