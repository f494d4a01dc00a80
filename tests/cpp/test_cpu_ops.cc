// Checks every CPU backend op against a plain double-precision loop written here, the exactness of
// the fp16/bf16 conversions, and that results do not depend on batching, threads or the SIMD path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "ember/backend.h"
#include "ember/error.h"

namespace ember {
namespace {

// ---------------------------------------------------------------- helpers

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A tensor stored as dtype `dt`, plus the exact float values it holds.
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  DType dtype;
  Tensor view(std::vector<int64_t> shape) { return Tensor{bytes.data(), dtype, std::move(shape)}; }
};

Stored store(const std::vector<float>& v, DType dt) {
  Stored s;
  s.dtype = dt;
  s.bytes.resize(v.size() * dtype_size(dt));
  cpu::from_f32(v.data(), s.bytes.data(), dt, static_cast<int64_t>(v.size()));
  s.values.resize(v.size());
  cpu::to_f32(s.bytes.data(), dt, s.values.data(), static_cast<int64_t>(v.size()));
  return s;
}

Tensor f32(std::vector<float>& v, std::vector<int64_t> shape) {
  return Tensor{v.data(), DType::F32, std::move(shape)};
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---------------------------------------------------------------- dtype conversions

// IEEE half decoded by its definition.
double ref_half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  double v;
  if (exp == 0) {
    v = std::ldexp(mant, -24);
  } else if (exp == 31) {
    v = mant ? std::nan("") : INFINITY;
  } else {
    v = std::ldexp(1024 + mant, exp - 25);
  }
  return sign ? -v : v;
}

// Round-to-nearest-even float -> half by arithmetic on exact doubles.
uint16_t ref_f32_to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7e00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;  // halfway between 65504 and 2^16 ties to the even 2^16
  int ex;
  std::frexp(a, &ex);  // a = m * 2^ex, m in [0.5, 1)
  const int e = std::max(ex - 1, -14);
  const double ulp = std::ldexp(1.0, e - 10);
  const double r = std::nearbyint(a / ulp);  // a / ulp is exact; nearbyint ties to even
  const double value = r * ulp;
  if (value < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(r);  // subnormal or zero
  std::frexp(value, &ex);
  const int e2 = ex - 1;
  const int mant = static_cast<int>(value / std::ldexp(1.0, e2) * 1024.0) - 1024;
  return sign | static_cast<uint16_t>(((e2 + 15) << 10) | mant);
}

TEST(DType, HalfDecodeIsExactForAll65536) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    const double ref = ref_half_value(static_cast<uint16_t>(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    } else {
      ASSERT_EQ(static_cast<double>(f), ref) << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    }
  }
}

TEST(DType, HalfRoundTripsForAll65536) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    const uint16_t back = f32_to_f16(f);
    if (std::isnan(f)) {
      ASSERT_EQ(back & 0x7c00, 0x7c00) << h;
      ASSERT_NE(back & 0x3ff, 0) << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << h;
    } else {
      ASSERT_EQ(back, h) << h;
    }
  }
}

TEST(DType, FloatToHalfMatchesReferenceOnSweep) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  std::vector<float> probes;
  // Every float near every rounding boundary: each half, the midpoints to its neighbours, +-1 ulp.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = ref_half_value(static_cast<uint16_t>(h));
    const double hi = h + 1 < 0x7c00 ? ref_half_value(static_cast<uint16_t>(h + 1)) : 65536.0;
    for (double c : {lo, (lo + hi) / 2}) {
      const float fc = static_cast<float>(c);  // exact: halves and their midpoints fit a float
      ASSERT_EQ(static_cast<double>(fc), c);
      for (float p : {fc, std::nextafter(fc, 0.0f), std::nextafter(fc, INFINITY)}) {
        probes.push_back(p);
        probes.push_back(-p);
      }
    }
  }
  // A stride through all 2^32 bit patterns (covers NaNs, infinities and huge values).
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 2654435) {
    uint32_t b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, 4);
    probes.push_back(f);
  }
  for (float extra : {0.0f, -0.0f, INFINITY, -INFINITY, 65504.0f, 65519.996f, 65520.0f, 1e-8f,
                      2.9802322e-08f, 5.9604645e-08f, 6.1035156e-05f}) {
    probes.push_back(extra);
  }
  for (float f : probes) {
    const uint16_t got = f32_to_f16(f), want = ref_f32_to_f16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(got))) << f;
    } else {
      ASSERT_EQ(got, want) << "f=" << f << " (0x" << std::hex << [&] {
        uint32_t b;
        std::memcpy(&b, &f, 4);
        return b;
      }() << ")";
    }
  }
}

TEST(DType, Bf16RoundTripsAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) ASSERT_EQ(f32_to_bf16(f), h) << h;
    else ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << h;
  }
  // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
}

// ---------------------------------------------------------------- matmul

struct MatmulCase {
  int64_t t, k, n;
};

std::vector<float> ref_matmul(const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>* bias, int64_t t, int64_t k, int64_t n,
                              std::vector<double>* abs_sum) {
  std::vector<float> out(t * n);
  abs_sum->assign(t * n, 0.0);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double s = bias ? (*bias)[c] : 0.0, a = bias ? std::fabs((*bias)[c]) : 0.0;
      for (int64_t i = 0; i < k; ++i) {
        s += double(x[r * k + i]) * w[c * k + i];
        a += std::fabs(double(x[r * k + i]) * w[c * k + i]);
      }
      out[r * n + c] = static_cast<float>(s);
      (*abs_sum)[r * n + c] = a;
    }
  }
  return out;
}

class MatmulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulTest, MatchesNaiveLoop) {
  const DType dt = GetParam();
  // Per-dtype error of the stored weights relative to the original fp32 values.
  const double storage_tol = dt == DType::F32 ? 0.0 : dt == DType::F16 ? 1.0 / 2048 : 1.0 / 256;
  auto be = make_cpu_backend(2);
  const std::vector<MatmulCase> cases = {{1, 1, 1},    {1, 7, 5},    {1, 576, 1536}, {2, 8, 4},
                                         {3, 33, 17},  {5, 64, 9},   {17, 100, 31},  {64, 576, 96},
                                         {9, 1000, 7}, {1, 4097, 3}};
  uint32_t seed = 1;
  for (const auto& c : cases) {
    for (bool with_bias : {false, true}) {
      auto x = random_floats(c.t * c.k, seed++);
      auto w0 = random_floats(c.n * c.k, seed++);
      auto b = random_floats(c.n, seed++);
      Stored w = store(w0, dt);
      std::vector<float> out(c.t * c.n, NAN);
      Tensor xt = f32(x, {c.t, c.k}), bt = f32(b, {c.n}), ot = f32(out, {c.t, c.n});
      Tensor wt = w.view({c.n, c.k});
      be->matmul(xt, wt, with_bias ? &bt : nullptr, ot);
      std::vector<double> abs_exact, abs_orig;
      auto exact = ref_matmul(x, w.values, with_bias ? &b : nullptr, c.t, c.k, c.n, &abs_exact);
      auto orig = ref_matmul(x, w0, with_bias ? &b : nullptr, c.t, c.k, c.n, &abs_orig);
      for (int64_t i = 0; i < c.t * c.n; ++i) {
        // fp32 accumulation error against the stored weights...
        ASSERT_NEAR(out[i], exact[i], 2e-6 * abs_exact[i] + 1e-7)
            << dtype_name(dt) << " t=" << c.t << " k=" << c.k << " n=" << c.n << " i=" << i;
        // ...and the storage rounding against the original weights.
        ASSERT_NEAR(out[i], orig[i], (storage_tol + 2e-6) * abs_orig[i] + 1e-7)
            << dtype_name(dt) << " t=" << c.t << " k=" << c.k << " n=" << c.n << " i=" << i;
      }
    }
  }
}

TEST_P(MatmulTest, RowIsBitwiseTheSameAloneInABatchAndWithAnyThreadCount) {
  const DType dt = GetParam();
  const int64_t t = 37, k = 203, n = 45;  // odd sizes: every tile shape and tail is exercised
  auto x = random_floats(t * k, 11);
  Stored w = store(random_floats(n * k, 12), dt);
  auto b = random_floats(n, 13);
  Tensor wt = w.view({n, k}), bt = f32(b, {n});
  auto run = [&](int threads, std::vector<float> rows_x, int64_t rows) {
    auto be = make_cpu_backend(threads);
    std::vector<float> out(rows * n);
    Tensor xt = f32(rows_x, {rows, k}), ot = f32(out, {rows, n});
    be->matmul(xt, wt, &bt, ot);
    return out;
  };
  const auto batch1 = run(1, x, t);
  const auto batch2 = run(2, x, t);
  ASSERT_TRUE(bitwise_equal(batch1, batch2));
  for (int64_t r = 0; r < t; ++r) {
    std::vector<float> row(x.begin() + r * k, x.begin() + (r + 1) * k);
    const auto alone = run(2, row, 1);
    ASSERT_TRUE(std::equal(alone.begin(), alone.end(), batch1.begin() + r * n,
                           [](float a, float b) { return std::memcmp(&a, &b, 4) == 0; }))
        << "row " << r;
  }
  // Rows 5..9 batched on their own (another tile alignment) give the same bits too.
  std::vector<float> sub(x.begin() + 5 * k, x.begin() + 10 * k);
  const auto part = run(2, sub, 5);
  ASSERT_EQ(std::memcmp(part.data(), batch1.data() + 5 * n, part.size() * 4), 0);
}

TEST_P(MatmulTest, PortablePathIsBitwiseEqualToAvx2) {
  if (cpu::detect_isa() != cpu::Isa::kAvx2) GTEST_SKIP() << "no AVX2 on this CPU";
  const DType dt = GetParam();
  for (const auto& c : std::vector<MatmulCase>{{1, 576, 64}, {7, 77, 13}, {4, 9, 6}}) {
    auto x = random_floats(c.t * c.k, 21);
    Stored w = store(random_floats(c.n * c.k, 22), dt);
    std::vector<float> a(c.t * c.n), p(c.t * c.n);
    cpu::matmul(cpu::Isa::kAvx2, x.data(), c.t, c.k, w.bytes.data(), dt, c.n, nullptr, a.data(), 2);
    cpu::matmul(cpu::Isa::kPortable, x.data(), c.t, c.k, w.bytes.data(), dt, c.n, nullptr, p.data(), 2);
    ASSERT_TRUE(bitwise_equal(a, p)) << c.t << "x" << c.k << "x" << c.n;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MatmulTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(CpuOps, MatmulRejectsMismatchedShapes) {
  auto be = make_cpu_backend(1);
  std::vector<float> x(2 * 8), w(4 * 9), out(2 * 4);
  Tensor xt = f32(x, {2, 8}), wt = f32(w, {4, 9}), ot = f32(out, {2, 4});
  EXPECT_THROW(be->matmul(xt, wt, nullptr, ot), EngineError);
}

// ---------------------------------------------------------------- attention

struct SeqSpec {
  int32_t past, chunk;
  uint32_t id = 0;  // seeds the sequence's q/k/v, so the same sequence can run in other batches
};

struct AttnSetup {
  int64_t hq, hk, d, block_size, num_pages;
  DType cache_dtype;
  std::vector<SeqSpec> seqs;
};

// Builds caches holding every sequence's past, writes the chunk through kv_write, runs attention
// and compares with a naive softmax over the keys (as stored in the cache's dtype).
struct AttnRun {
  std::vector<float> out, ref;
};

AttnRun run_attention(Backend& be, const AttnSetup& s, uint32_t seed, bool with_ref = true) {
  std::mt19937 rng(seed);
  const int64_t nseq = static_cast<int64_t>(s.seqs.size());
  const int64_t row = s.hk * s.d;
  // Pages handed out in scrambled order.
  std::vector<int32_t> pages(s.num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  int32_t max_blocks = 0;
  for (const auto& q : s.seqs) {
    max_blocks = std::max<int32_t>(max_blocks, (q.past + q.chunk + s.block_size - 1) / s.block_size);
  }
  StepMeta meta;
  meta.block_size = static_cast<int32_t>(s.block_size);
  meta.max_blocks_per_seq = max_blocks + 1;  // one spare -1 column
  meta.block_tables.assign(nseq * meta.max_blocks_per_seq, -1);
  meta.query_start.push_back(0);
  size_t next_page = 0;
  std::vector<std::vector<float>> keys(nseq), vals(nseq);
  const int64_t slots = s.num_pages * s.block_size;
  Stored kc = store(std::vector<float>(slots * row, 0.0f), s.cache_dtype);
  Stored vc = store(std::vector<float>(slots * row, 0.0f), s.cache_dtype);
  std::vector<float> q_all, k_chunk, v_chunk;
  auto slot_of = [&](int64_t si, int64_t p) {
    return meta.block_tables[si * meta.max_blocks_per_seq + p / s.block_size] * s.block_size +
           p % s.block_size;
  };
  for (int64_t si = 0; si < nseq; ++si) {
    const int32_t len = s.seqs[si].past + s.seqs[si].chunk;
    for (int32_t b = 0; b * s.block_size < len; ++b) {
      meta.block_tables[si * meta.max_blocks_per_seq + b] = pages.at(next_page++);
    }
    const uint32_t id = s.seqs[si].id;
    keys[si] = random_floats(len * row, seed * 7 + id);
    vals[si] = random_floats(len * row, seed * 13 + id);
    const auto q = random_floats(s.seqs[si].chunk * s.hq * s.d, seed * 31 + id);
    q_all.insert(q_all.end(), q.begin(), q.end());
    // Past positions straight into the cache; chunk positions through kv_write below.
    for (int32_t p = 0; p < s.seqs[si].past; ++p) {
      const size_t es = dtype_size(s.cache_dtype);
      cpu::from_f32(keys[si].data() + p * row, kc.bytes.data() + slot_of(si, p) * row * es, s.cache_dtype, row);
      cpu::from_f32(vals[si].data() + p * row, vc.bytes.data() + slot_of(si, p) * row * es, s.cache_dtype, row);
    }
    for (int32_t j = 0; j < s.seqs[si].chunk; ++j) {
      const int32_t p = s.seqs[si].past + j;
      meta.positions.push_back(p);
      meta.token_ids.push_back(0);
      meta.slot_mapping.push_back(static_cast<int32_t>(slot_of(si, p)));
      k_chunk.insert(k_chunk.end(), keys[si].begin() + p * row, keys[si].begin() + (p + 1) * row);
      v_chunk.insert(v_chunk.end(), vals[si].begin() + p * row, vals[si].begin() + (p + 1) * row);
    }
    meta.query_start.push_back(meta.query_start.back() + s.seqs[si].chunk);
    meta.seq_lens.push_back(len);
  }
  const int64_t t = meta.query_start.back();
  Tensor kt = f32(k_chunk, {t, s.hk, s.d}), vt = f32(v_chunk, {t, s.hk, s.d});
  Tensor kct = kc.view({slots, s.hk, s.d}), vct = vc.view({slots, s.hk, s.d});
  be.kv_write(kt, vt, meta.slot_mapping.data(), kct, vct);
  const DeviceStep step = be.upload_step(meta);
  AttnRun r;
  r.out.assign(t * s.hq * s.d, NAN);
  Tensor qt = f32(q_all, {t, s.hq, s.d}), ot = f32(r.out, {t, s.hq, s.d});
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  be.attention(qt, kct, vct, step, scale, ot);
  if (!with_ref) return r;

  r.ref.assign(t * s.hq * s.d, 0.0f);
  const int64_t group = s.hq / s.hk;
  for (int64_t si = 0; si < nseq; ++si) {
    // What the cache holds: the keys rounded to its dtype.
    const Stored ks = store(keys[si], s.cache_dtype), vs = store(vals[si], s.cache_dtype);
    for (int32_t j = 0; j < s.seqs[si].chunk; ++j) {
      const int64_t tok = meta.query_start[si] + j;
      const int64_t pos = s.seqs[si].past + j;
      for (int64_t h = 0; h < s.hq; ++h) {
        const float* q = q_all.data() + (tok * s.hq + h) * s.d;
        const int64_t kvh = h / group;
        std::vector<double> sc(pos + 1);
        double m = -INFINITY;
        for (int64_t p = 0; p <= pos; ++p) {
          double dot = 0;
          for (int64_t i = 0; i < s.d; ++i) dot += double(q[i]) * ks.values[(p * s.hk + kvh) * s.d + i];
          sc[p] = dot * scale;
          m = std::max(m, sc[p]);
        }
        double z = 0;
        for (double& x : sc) z += (x = std::exp(x - m));
        for (int64_t i = 0; i < s.d; ++i) {
          double acc = 0;
          for (int64_t p = 0; p <= pos; ++p) acc += sc[p] * vs.values[(p * s.hk + kvh) * s.d + i];
          r.ref[(tok * s.hq + h) * s.d + i] = static_cast<float>(acc / z);
        }
      }
    }
  }
  return r;
}

TEST(CpuOps, AttentionMatchesNaiveLoop) {
  auto be = make_cpu_backend(2);
  const std::vector<SeqSpec> mixed = {{0, 5, 1}, {37, 1, 2}, {20, 13, 3}, {0, 1, 4}, {64, 3, 5}};
  std::vector<AttnSetup> setups = {
      {9, 3, 64, 16, 40, DType::F32, mixed},           // GQA 3 (SmolLM2 shape)
      {4, 4, 12, 16, 40, DType::F32, mixed},           // MHA, head dim not a multiple of 8
      {8, 2, 8, 3, 80, DType::F32, mixed},             // GQA 4, odd block size, many pages
      {6, 2, 20, 1, 200, DType::F32, {{10, 30, 1}}},      // one token per page, long chunk
      {4, 1, 16, 16, 30, DType::F16, mixed},           // reduced-precision caches
      {4, 1, 16, 5, 60, DType::BF16, mixed},
  };
  uint32_t seed = 3;
  for (const auto& s : setups) {
    const AttnRun r = run_attention(*be, s, seed++);
    for (size_t i = 0; i < r.out.size(); ++i) {
      ASSERT_NEAR(r.out[i], r.ref[i], 2e-5) << "hq=" << s.hq << " hk=" << s.hk << " d=" << s.d
                                            << " bs=" << s.block_size << " i=" << i;
    }
  }
}

TEST(CpuOps, AttentionIsBitwiseTheSameAloneInABatchAndWithAnyThreadCount) {
  auto be1 = make_cpu_backend(1);
  auto be2 = make_cpu_backend(2);
  const std::vector<SeqSpec> seqs = {{0, 7, 1}, {33, 1, 2}, {15, 9, 3}, {50, 2, 4}};
  const AttnSetup batch{9, 3, 64, 16, 40, DType::F32, seqs};
  const AttnRun a1 = run_attention(*be1, batch, 5, false);
  const AttnRun a2 = run_attention(*be2, batch, 5, false);
  ASSERT_TRUE(bitwise_equal(a1.out, a2.out));
  // Each sequence alone (other pages, other batch neighbours) gives the same bits.
  const int64_t per_tok = 9 * 64;
  int64_t tok = 0;
  for (const SeqSpec& q : seqs) {
    const AttnRun alone = run_attention(*be2, AttnSetup{9, 3, 64, 16, 40, DType::F32, {q}}, 5, false);
    ASSERT_EQ(alone.out.size(), static_cast<size_t>(q.chunk * per_tok));
    ASSERT_EQ(std::memcmp(alone.out.data(), a1.out.data() + tok * per_tok, alone.out.size() * 4), 0)
        << "sequence " << q.id;
    tok += q.chunk;
  }
}

TEST(CpuOps, AttentionPortablePathIsBitwiseEqualToAvx2) {
  if (cpu::detect_isa() != cpu::Isa::kAvx2) GTEST_SKIP() << "no AVX2 on this CPU";
  const int64_t hq = 6, hk = 2, d = 20, bs = 4, pages = 8, slots = pages * bs;
  auto q = random_floats(3 * hq * d, 41);
  auto kc = random_floats(slots * hk * d, 42), vc = random_floats(slots * hk * d, 43);
  std::vector<int32_t> qs = {0, 3}, lens = {29}, table = {7, 2, 5, 0, 1, 3, 6, 4};
  cpu::AttentionArgs a{q.data(), kc.data(), vc.data(), DType::F32, slots, hq, hk, d,
                       qs.data(), lens.data(), table.data(), 1, 8, static_cast<int32_t>(bs),
                       0.3f, nullptr};
  std::vector<float> o1(q.size()), o2(q.size());
  a.out = o1.data();
  cpu::attention(cpu::Isa::kAvx2, a, 2);
  a.out = o2.data();
  cpu::attention(cpu::Isa::kPortable, a, 2);
  ASSERT_TRUE(bitwise_equal(o1, o2));
}

TEST(CpuOps, AttentionRejectsBadBlockTable) {
  auto be = make_cpu_backend(1);
  StepMeta meta;
  meta.block_size = 4;
  meta.max_blocks_per_seq = 2;
  meta.query_start = {0, 1};
  meta.seq_lens = {6};
  meta.block_tables = {0, -1};  // position 4 has no page
  const DeviceStep step = be->upload_step(meta);
  std::vector<float> q(2 * 4), kc(8 * 1 * 4), vc(8 * 1 * 4), out(2 * 4);
  Tensor qt = f32(q, {1, 2, 4}), kt = f32(kc, {8, 1, 4}), vt = f32(vc, {8, 1, 4}), ot = f32(out, {1, 2, 4});
  EXPECT_THROW(be->attention(qt, kt, vt, step, 0.5f, ot), EngineError);
}

TEST(CpuOps, KvWriteSkipsPaddingSlotsAndConverts) {
  auto be = make_cpu_backend(1);
  const int64_t slots = 6, hk = 2, d = 3;
  auto k = random_floats(3 * hk * d, 51), v = random_floats(3 * hk * d, 52);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Stored kc = store(std::vector<float>(slots * hk * d, 7.0f), dt);
    Stored vc = store(std::vector<float>(slots * hk * d, 7.0f), dt);
    Tensor kct = kc.view({slots, hk, d}), vct = vc.view({slots, hk, d});
    std::vector<int32_t> slot_mapping = {4, -1, 1};
    Tensor kt = f32(k, {3, hk, d}), vt = f32(v, {3, hk, d});
    be->kv_write(kt, vt, slot_mapping.data(), kct, vct);
    std::vector<float> kf(slots * hk * d), vf(slots * hk * d);
    cpu::to_f32(kc.bytes.data(), dt, kf.data(), slots * hk * d);
    cpu::to_f32(vc.bytes.data(), dt, vf.data(), slots * hk * d);
    const Stored kr = store(k, dt), vr = store(v, dt);
    for (int64_t s = 0; s < slots; ++s) {
      for (int64_t i = 0; i < hk * d; ++i) {
        const int64_t src = s == 4 ? 0 : s == 1 ? 2 : -1;
        EXPECT_EQ(kf[s * hk * d + i], src < 0 ? 7.0f : kr.values[src * hk * d + i]) << s;
        EXPECT_EQ(vf[s * hk * d + i], src < 0 ? 7.0f : vr.values[src * hk * d + i]) << s;
      }
    }
    std::vector<int32_t> bad = {6, 0, 0};
    EXPECT_THROW(be->kv_write(kt, vt, bad.data(), kct, vct), EngineError);
  }
}

// ---------------------------------------------------------------- norms and element-wise ops

TEST(CpuOps, RmsNormAndAddRmsNormMatchNaiveLoop) {
  auto be = make_cpu_backend(2);
  for (int64_t d : {1, 7, 64, 576, 1001}) {
    for (int64_t t : {1, 5, 130}) {
      auto x = random_floats(t * d, 61 + d, -3, 3), w = random_floats(d, 62 + d);
      auto delta = random_floats(t * d, 63 + d);
      const float eps = 1e-5f;
      auto ref_norm = [&](const std::vector<float>& in) {
        std::vector<float> r(t * d);
        for (int64_t i = 0; i < t; ++i) {
          double ss = 0;
          for (int64_t j = 0; j < d; ++j) ss += double(in[i * d + j]) * in[i * d + j];
          const double inv = 1.0 / std::sqrt(ss / d + eps);
          for (int64_t j = 0; j < d; ++j) r[i * d + j] = static_cast<float>(in[i * d + j] * inv * w[j]);
        }
        return r;
      };
      std::vector<float> out(t * d);
      Tensor xt = f32(x, {t, d}), wt = f32(w, {d}), ot = f32(out, {t, d}), dt = f32(delta, {t, d});
      be->rms_norm(xt, wt, eps, ot);
      auto ref = ref_norm(x);
      for (int64_t i = 0; i < t * d; ++i) ASSERT_NEAR(out[i], ref[i], 1e-5 * (1 + std::fabs(ref[i])));

      std::vector<float> summed(t * d);
      for (int64_t i = 0; i < t * d; ++i) summed[i] = x[i] + delta[i];
      be->add_rms_norm(xt, dt, wt, eps, ot);
      ASSERT_TRUE(bitwise_equal(x, summed));  // residual updated in place
      ref = ref_norm(summed);
      for (int64_t i = 0; i < t * d; ++i) ASSERT_NEAR(out[i], ref[i], 1e-5 * (1 + std::fabs(ref[i])));
    }
  }
}

TEST(CpuOps, RmsNormRowIsBitwiseTheSameAloneAndInABatch) {
  auto be = make_cpu_backend(2);
  const int64_t t = 300, d = 576;  // big enough to go parallel
  auto x = random_floats(t * d, 71), w = random_floats(d, 72);
  std::vector<float> out(t * d), one(d);
  Tensor xt = f32(x, {t, d}), wt = f32(w, {d}), ot = f32(out, {t, d});
  be->rms_norm(xt, wt, 1e-6f, ot);
  for (int64_t r : {0L, 77L, 299L}) {
    Tensor xr = xt.rows(r, r + 1), orow = f32(one, {1, d});
    be->rms_norm(xr, wt, 1e-6f, orow);
    ASSERT_EQ(std::memcmp(one.data(), out.data() + r * d, d * 4), 0) << r;
  }
}

void ref_rope(std::vector<float>& x, int64_t t, int64_t h, int64_t d, const std::vector<int32_t>& pos,
              const std::vector<float>& inv_freq, bool neox) {
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < h; ++j) {
      float* v = x.data() + (i * h + j) * d;
      for (int64_t f = 0; f < d / 2; ++f) {
        const double ang = static_cast<float>(pos[i]) * inv_freq[f];
        const int64_t a = neox ? f : 2 * f, b = neox ? f + d / 2 : 2 * f + 1;
        const double x1 = v[a], x2 = v[b];
        v[a] = static_cast<float>(x1 * std::cos(ang) - x2 * std::sin(ang));
        v[b] = static_cast<float>(x2 * std::cos(ang) + x1 * std::sin(ang));
      }
    }
  }
}

TEST(CpuOps, RopeMatchesNaiveLoopInBothLayouts) {
  auto be = make_cpu_backend(2);
  for (bool neox : {true, false}) {
    for (int64_t d : {2, 8, 64, 128}) {
      const int64_t t = 9, hq = 6, hk = 2;
      std::vector<float> inv_freq(d / 2);
      for (int64_t i = 0; i < d / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / d));
      std::vector<int32_t> pos = {0, 1, 2, 7, 100, 1000, 4095, 30000, 5};
      auto q = random_floats(t * hq * d, 81), k = random_floats(t * hk * d, 82);
      auto qr = q, kr = k;
      Tensor qt = f32(q, {t, hq, d}), kt = f32(k, {t, hk, d});
      be->rope(qt, kt, pos.data(), inv_freq.data(), neox);
      ref_rope(qr, t, hq, d, pos, inv_freq, neox);
      ref_rope(kr, t, hk, d, pos, inv_freq, neox);
      for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(q[i], qr[i], 2e-6) << neox << " d=" << d;
      for (size_t i = 0; i < k.size(); ++i) ASSERT_NEAR(k[i], kr[i], 2e-6) << neox << " d=" << d;
    }
  }
  // The layouts really differ: position 1 rotates different pairs.
  std::vector<float> inv = {1.0f, 0.5f}, a = {1, 2, 3, 4}, b = a, ka(4), kb(4);
  std::vector<int32_t> p = {1};
  Tensor at = f32(a, {1, 1, 4}), bt = f32(b, {1, 1, 4}), kat = f32(ka, {1, 1, 4}), kbt = f32(kb, {1, 1, 4});
  be->rope(at, kat, p.data(), inv.data(), true);
  be->rope(bt, kbt, p.data(), inv.data(), false);
  EXPECT_NE(a, b);
}

TEST(CpuOps, SiluMulAddEmbedGatherMatchNaiveLoops) {
  auto be = make_cpu_backend(2);
  const int64_t t = 70, f = 1000;  // big enough to go parallel
  auto x = random_floats(t * 2 * f, 91, -6, 6);
  std::vector<float> out(t * f);
  Tensor xt = f32(x, {t, 2 * f}), ot = f32(out, {t, f});
  be->silu_mul(xt, ot);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < f; ++j) {
      const double g = x[i * 2 * f + j], u = x[i * 2 * f + f + j];
      ASSERT_NEAR(out[i * f + j], g / (1 + std::exp(-g)) * u, 1e-5 * (1 + std::fabs(g * u)));
    }
  }

  auto a = random_floats(t * f, 92), b = random_floats(t * f, 93), a0 = a;
  Tensor at = f32(a, {t, f}), bt = f32(b, {t, f});
  be->add(at, bt);
  for (int64_t i = 0; i < t * f; ++i) ASSERT_EQ(a[i], a0[i] + b[i]);

  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const int64_t vocab = 50, h = 13;
    Stored table = store(random_floats(vocab * h, 94), dt);
    std::vector<int32_t> ids = {3, 0, 49, 3, 17};
    std::vector<float> e(ids.size() * h);
    Tensor tt = table.view({vocab, h}), et = f32(e, {static_cast<int64_t>(ids.size()), h});
    be->embed(tt, ids.data(), static_cast<int64_t>(ids.size()), et);
    for (size_t i = 0; i < ids.size(); ++i) {
      for (int64_t j = 0; j < h; ++j) ASSERT_EQ(e[i * h + j], table.values[ids[i] * h + j]);
    }
    std::vector<int32_t> bad = {1, 50};
    Tensor two = et.rows(0, 2);
    EXPECT_THROW(be->embed(tt, bad.data(), 2, two), InvalidArgument);
  }

  std::vector<float> rows = random_floats(6 * 4, 95), g(3 * 4);
  std::vector<int32_t> idx = {5, 0, 5};
  Tensor rt = f32(rows, {6, 4}), gt = f32(g, {3, 4});
  be->gather_rows(rt, idx.data(), 3, gt);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 4; ++j) ASSERT_EQ(g[i * 4 + j], rows[idx[i] * 4 + j]);
  }
}

// ---------------------------------------------------------------- memory and step metadata

TEST(CpuOps, MemoryAndStepMetadata) {
  auto be = make_cpu_backend(0);
  EXPECT_EQ(be->name(), "cpu");
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) EXPECT_EQ(be->activation_dtype(dt), DType::F32);
  EXPECT_EQ(be->weight_storage_dtype(DType::BF16), DType::BF16);
  EXPECT_EQ(be->weight_storage_dtype(DType::F32), DType::F32);
  Buffer buf = be->allocate(1000, "test");
  ASSERT_NE(buf.get(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.get()) % 64, 0u);
  EXPECT_EQ(buf.bytes(), 1000u);
  std::vector<uint8_t> src(1000), dst(1000);
  std::iota(src.begin(), src.end(), 0);
  be->copy_to_device(buf.get(), src.data(), 1000);
  be->synchronize();
  be->copy_to_host(dst.data(), buf.get(), 1000);
  EXPECT_EQ(src, dst);

  StepMeta meta;
  meta.token_ids = {1, 2, 3, 4, 5};
  meta.positions = {0, 1, 2, 9, 4};
  meta.slot_mapping = {0, 1, 2, 40, 20};
  meta.query_start = {0, 3, 4, 5};
  meta.seq_lens = {3, 10, 5};
  meta.block_tables = {0, -1, 2, -1, 1, -1};
  meta.logits_indices = {2, 3, 4};
  meta.max_blocks_per_seq = 2;
  meta.block_size = 16;
  const DeviceStep s = be->upload_step(meta);
  meta.token_ids.assign(5, 0);  // the step keeps its own copy
  EXPECT_EQ(s.num_tokens, 5);
  EXPECT_EQ(s.num_seqs, 3);
  EXPECT_EQ(s.num_logits, 3);
  EXPECT_EQ(s.max_query_len, 3);
  EXPECT_EQ(s.max_seq_len, 10);
  EXPECT_EQ(s.max_blocks_per_seq, 2);
  EXPECT_EQ(s.block_size, 16);
  EXPECT_EQ(s.token_ids[4], 5);
  EXPECT_EQ(s.positions[3], 9);
  EXPECT_EQ(s.block_tables[4], 1);
  EXPECT_EQ(s.logits_indices[2], 4);
}

}  // namespace
}  // namespace ember
