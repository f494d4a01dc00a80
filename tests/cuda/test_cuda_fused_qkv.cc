// The CUDA qkv_rope_kv_write against the CUDA slice_columns + rope + kv_write (bitwise) and against
// the CPU backend's fused op (within the rope tolerance), for the three float dtypes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <tuple>

#include "cuda_test_util.h"

namespace ember::test {
namespace {

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};

std::string dt_name(const testing::TestParamInfo<DType>& i) { return dtype_name(i.param); }

class CudaFusedQkv : public testing::TestWithParam<DType> {
 protected:
  void SetUp() override { EMBER_REQUIRE_GPU(); }
  Backend& gpu() { return cuda_backend(); }
  Backend& cpu() { return cpu_backend(); }
  DType dt() const { return GetParam(); }
};

struct Case {
  int64_t T, Hq, Hk, D;
};

TEST_P(CudaFusedQkv, MatchesUnfusedOpsAndCpu) {
  for (bool neox : {true, false}) {
    for (Case c : {Case{1, 4, 4, 64}, Case{13, 6, 2, 128}, Case{1, 32, 8, 128}, Case{13, 12, 3, 80}, Case{7, 3, 1, 20}}) {
      const int64_t T = c.T, Hq = c.Hq, Hk = c.Hk, D = c.D, slots = 4 * T + 5;
      const int64_t qw = Hq * D, kw = Hk * D, cols = qw + 2 * kw;
      auto qkv = random_values(T * cols, dt(), 21 + static_cast<uint32_t>(T));
      std::vector<float> inv(D / 2);
      for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(500000.0f, -2.0f * i / D);
      std::mt19937 rng(22);
      StepMeta m;
      for (int64_t t = 0; t < T; ++t) m.positions.push_back(static_cast<int32_t>(rng() % 40000));
      std::vector<int32_t> perm(slots);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      m.slot_mapping.assign(perm.begin(), perm.begin() + T);
      if (T > 1) m.slot_mapping[T / 2] = -1;  // a padding token: its slot must stay untouched
      m.token_ids = m.positions;
      const DeviceStep gs = gpu().upload_step(m);
      const DeviceStep cs = cpu().upload_step(m);
      auto base = random_values(slots * kw, dt(), 23);
      auto gi = upload(gpu(), inv, DType::F32, {D / 2}), ci = upload(cpu(), inv, DType::F32, {D / 2});
      auto gx = upload(gpu(), qkv, dt(), {T, cols}), cx = upload(cpu(), qkv, DType::F32, {T, cols});

      // GPU unfused.
      auto uq = empty(gpu(), dt(), {T, qw}), uk = empty(gpu(), dt(), {T, kw}), uv = empty(gpu(), dt(), {T, kw});
      auto ukc = upload(gpu(), base, dt(), {slots, Hk, D}), uvc = upload(gpu(), base, dt(), {slots, Hk, D});
      gpu().slice_columns(gx.t, 0, uq.t);
      gpu().slice_columns(gx.t, qw, uk.t);
      gpu().slice_columns(gx.t, qw + kw, uv.t);
      Tensor uq3 = uq.t.reshaped({T, Hq, D}), uk3 = uk.t.reshaped({T, Hk, D});
      gpu().rope(uq3, uk3, gs.positions, gi.t.as<float>(), neox);
      gpu().kv_write(uk3, uv.t.reshaped({T, Hk, D}), gs.slot_mapping, ukc.t, uvc.t);

      // GPU fused.
      auto fq = empty(gpu(), dt(), {T, Hq, D});
      auto fkc = upload(gpu(), base, dt(), {slots, Hk, D}), fvc = upload(gpu(), base, dt(), {slots, Hk, D});
      gpu().qkv_rope_kv_write(gx.t, Hq, Hk, D, gs.positions, gi.t.as<float>(), neox, gs.slot_mapping, fq.t, fkc.t,
                              fvc.t);

      // CPU fused (F32 activations and caches).
      auto cq = empty(cpu(), DType::F32, {T, Hq, D});
      auto ckc = upload(cpu(), base, DType::F32, {slots, Hk, D}), cvc = upload(cpu(), base, DType::F32, {slots, Hk, D});
      cpu().qkv_rope_kv_write(cx.t, Hq, Hk, D, cs.positions, ci.t.as<float>(), neox, cs.slot_mapping, cq.t, ckc.t,
                              cvc.t);

      const std::string where = "T=" + std::to_string(T) + " Hq=" + std::to_string(Hq) + " Hk=" + std::to_string(Hk) +
                                " D=" + std::to_string(D) + " neox=" + std::to_string(neox);
      const auto fq_h = download(gpu(), fq.t), fk_h = download(gpu(), fkc.t), fv_h = download(gpu(), fvc.t);
      // Bitwise: each value converts to float exactly, and NaN (an unwritten q) would fail ==.
      EXPECT_TRUE(fq_h == download(gpu(), uq.t)) << "q vs unfused " << where;
      EXPECT_TRUE(fk_h == download(gpu(), ukc.t)) << "k cache vs unfused " << where;
      EXPECT_TRUE(fv_h == download(gpu(), uvc.t)) << "v cache vs unfused " << where;
      const double tol = std::max(tolerance(dt()), 1e-4);  // sin/cos of angles up to 4e4 rad
      EXPECT_LT(rel_error(fq_h, download(cpu(), cq.t)), tol) << "q vs cpu " << where;
      EXPECT_LT(rel_error(fk_h, download(cpu(), ckc.t)), tol) << "k cache vs cpu " << where;
      EXPECT_EQ(rel_error(fv_h, download(cpu(), cvc.t)), 0.0) << "v cache vs cpu " << where;
    }
  }
}

TEST_P(CudaFusedQkv, RejectsMismatchedShapes) {
  const int64_t T = 2, Hq = 4, Hk = 2, D = 8;
  auto x = empty(gpu(), dt(), {T, (Hq + 2 * Hk) * D});
  auto q = empty(gpu(), dt(), {T, Hq, D});
  auto kc = empty(gpu(), dt(), {4, Hk, D}), vc = empty(gpu(), dt(), {4, Hk, D});
  auto f32_q = empty(gpu(), DType::F32, {T, Hq, D});
  StepMeta m;
  m.positions = m.slot_mapping = m.token_ids = {0, 1};
  const DeviceStep s = gpu().upload_step(m);
  auto inv = upload(gpu(), std::vector<float>(D / 2, 1.0f), DType::F32, {D / 2});
  EXPECT_THROW(gpu().qkv_rope_kv_write(x.t, Hq, Hk + 1, D, s.positions, inv.t.as<float>(), true, s.slot_mapping, q.t,
                                       kc.t, vc.t),
               InvalidArgument);
  if (dt() != DType::F32) {
    EXPECT_THROW(gpu().qkv_rope_kv_write(x.t, Hq, Hk, D, s.positions, inv.t.as<float>(), true, s.slot_mapping,
                                         f32_q.t, kc.t, vc.t),
                 InvalidArgument);
  }
  EXPECT_NO_THROW(gpu().qkv_rope_kv_write(x.t, Hq, Hk, D, s.positions, inv.t.as<float>(), true, s.slot_mapping, q.t,
                                          kc.t, vc.t));
  gpu().synchronize();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaFusedQkv, testing::ValuesIn(kDtypes), dt_name);

}  // namespace
}  // namespace ember::test
