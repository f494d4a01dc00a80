// The CPU's fused qkv_rope_kv_write against slice_columns x3 + rope + kv_write: results must be
// bitwise equal, since the engine's equivalence tests rely on the CPU path being deterministic.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "ember/backend.h"
#include "ember/error.h"

namespace ember {
namespace {

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Cache bytes of `slots` rows of `row` elements, filled with a recognisable pattern in dtype `dt`.
std::vector<uint8_t> cache_bytes(int64_t slots, int64_t row, DType dt, uint32_t seed) {
  const auto vals = random_floats(static_cast<size_t>(slots * row), seed);
  std::vector<uint8_t> b(static_cast<size_t>(slots * row) * dtype_size(dt));
  cpu::from_f32(vals.data(), b.data(), dt, slots * row);
  return b;
}

struct Case {
  int64_t T, Hq, Hk, D;
};

void check_case(Backend& be, const Case& c, bool neox, DType cache_dt) {
  const int64_t T = c.T, Hq = c.Hq, Hk = c.Hk, D = c.D, slots = 4 * T + 5;
  const int64_t qw = Hq * D, kw = Hk * D, cols = qw + 2 * kw;
  auto qkv = random_floats(static_cast<size_t>(T * cols), 1 + static_cast<uint32_t>(T * Hq));
  std::vector<float> inv(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(D));
  std::mt19937 rng(7);
  std::vector<int32_t> positions(static_cast<size_t>(T));
  for (auto& p : positions) p = static_cast<int32_t>(rng() % 30000);
  std::vector<int32_t> perm(static_cast<size_t>(slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> slot_mapping(perm.begin(), perm.begin() + T);
  if (T > 1) slot_mapping[static_cast<size_t>(T / 2)] = -1;  // a padding token

  // Unfused reference.
  Tensor x{qkv.data(), DType::F32, {T, cols}};
  std::vector<float> q_ref(static_cast<size_t>(T * qw)), k(static_cast<size_t>(T * kw)), v(k.size());
  Tensor qt{q_ref.data(), DType::F32, {T, qw}}, kt{k.data(), DType::F32, {T, kw}}, vt{v.data(), DType::F32, {T, kw}};
  be.slice_columns(x, 0, qt);
  be.slice_columns(x, qw, kt);
  be.slice_columns(x, qw + kw, vt);
  Tensor q3 = qt.reshaped({T, Hq, D}), k3 = kt.reshaped({T, Hk, D});
  be.rope(q3, k3, positions.data(), inv.data(), neox);
  auto kc_ref = cache_bytes(slots, kw, cache_dt, 11), vc_ref = cache_bytes(slots, kw, cache_dt, 12);
  Tensor kct{kc_ref.data(), cache_dt, {slots, Hk, D}}, vct{vc_ref.data(), cache_dt, {slots, Hk, D}};
  be.kv_write(k3, vt.reshaped({T, Hk, D}), slot_mapping.data(), kct, vct);

  // Fused.
  std::vector<float> q(q_ref.size(), NAN);
  Tensor qf{q.data(), DType::F32, {T, Hq, D}};
  auto kc = cache_bytes(slots, kw, cache_dt, 11), vc = cache_bytes(slots, kw, cache_dt, 12);
  Tensor kcf{kc.data(), cache_dt, {slots, Hk, D}}, vcf{vc.data(), cache_dt, {slots, Hk, D}};
  be.qkv_rope_kv_write(x, Hq, Hk, D, positions.data(), inv.data(), neox, slot_mapping.data(), qf, kcf, vcf);

  const std::string where = "T=" + std::to_string(T) + " Hq=" + std::to_string(Hq) + " Hk=" + std::to_string(Hk) +
                            " D=" + std::to_string(D) + " neox=" + std::to_string(neox) + " cache " + dtype_name(cache_dt);
  EXPECT_EQ(std::memcmp(q.data(), q_ref.data(), q.size() * sizeof(float)), 0) << "q " << where;
  EXPECT_EQ(kc, kc_ref) << "k cache " << where;
  EXPECT_EQ(vc, vc_ref) << "v cache " << where;
  // The rotation did something: q differs from the raw q columns somewhere.
  bool rotated = false;
  for (int64_t t = 0; t < T && !rotated; ++t)
    rotated = std::memcmp(q.data() + t * qw, qkv.data() + t * cols, static_cast<size_t>(qw) * sizeof(float)) != 0;
  EXPECT_TRUE(rotated || T == 1) << where;
}

TEST(CpuFusedQkv, BitwiseEqualsUnfusedOps) {
  for (int threads : {1, 3}) {
    auto be = make_cpu_backend(threads);
    for (Case c : {Case{1, 4, 4, 16}, Case{13, 6, 2, 64}, Case{1, 8, 2, 128}, Case{13, 12, 3, 128}, Case{13, 3, 1, 20}}) {
      for (bool neox : {true, false}) {
        for (DType dt : {DType::F32, DType::F16, DType::BF16}) check_case(*be, c, neox, dt);
      }
    }
  }
}

TEST(CpuFusedQkv, RejectsMismatchedShapes) {
  auto be = make_cpu_backend(1);
  const int64_t T = 2, Hq = 4, Hk = 2, D = 8;
  std::vector<float> qkv(T * (Hq + 2 * Hk) * D, 0.5f), q(T * Hq * D), kc(4 * Hk * D), vc(kc.size());
  std::vector<float> inv(D / 2, 1.0f);
  std::vector<int32_t> pos = {0, 1}, slots = {0, 7};
  Tensor x{qkv.data(), DType::F32, {T, (Hq + 2 * Hk) * D}}, qt{q.data(), DType::F32, {T, Hq, D}};
  Tensor kct{kc.data(), DType::F32, {4, Hk, D}}, vct{vc.data(), DType::F32, {4, Hk, D}};
  // Slot 7 is outside the 4-slot cache.
  EXPECT_THROW(be->qkv_rope_kv_write(x, Hq, Hk, D, pos.data(), inv.data(), true, slots.data(), qt, kct, vct), EngineError);
  // Heads that do not add up to qkv's width.
  slots = {0, 1};
  EXPECT_THROW(be->qkv_rope_kv_write(x, Hq, Hk + 1, D, pos.data(), inv.data(), true, slots.data(), qt, kct, vct),
               EngineError);
  EXPECT_NO_THROW(be->qkv_rope_kv_write(x, Hq, Hk, D, pos.data(), inv.data(), true, slots.data(), qt, kct, vct));
}

}  // namespace
}  // namespace ember
