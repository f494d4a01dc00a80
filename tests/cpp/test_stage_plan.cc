// Layer splits: even by default, proportional to free memory when given, explicit splits checked.
#include <gtest/gtest.h>

#include <algorithm>

#include "ember/error.h"
#include "pipeline/stage_plan.h"

using ember::plan_stages;

namespace {
std::vector<int64_t> counts(const std::vector<ember::StageRange>& plan) {
  std::vector<int64_t> c;
  int64_t at = 0;
  for (const auto& r : plan) {
    EXPECT_EQ(r.begin, at);
    c.push_back(r.end - r.begin);
    at = r.end;
  }
  return c;
}
}  // namespace

TEST(StagePlan, EvenSplitGivesRemainderToEarlyStages) {
  EXPECT_EQ(counts(plan_stages(30, 1, {})), (std::vector<int64_t>{30}));
  EXPECT_EQ(counts(plan_stages(30, 4, {})), (std::vector<int64_t>{8, 8, 7, 7}));
}

TEST(StagePlan, CapacityProportional) {
  auto c = counts(plan_stages(32, 2, {}, {3.0, 1.0}));
  EXPECT_EQ(c[0] + c[1], 32);
  EXPECT_EQ(c[0], 24);
  auto d = counts(plan_stages(10, 3, {}, {1000.0, 1.0, 1.0}));
  EXPECT_EQ(d[0] + d[1] + d[2], 10);
  EXPECT_GE(d[1], 1);
  EXPECT_GE(d[2], 1);
}

TEST(StagePlan, ExplicitSplitIsChecked) {
  EXPECT_EQ(counts(plan_stages(32, 2, {14, 18})), (std::vector<int64_t>{14, 18}));
  EXPECT_THROW(plan_stages(32, 2, {14, 17}), ember::InvalidArgument);      // wrong total
  EXPECT_THROW(plan_stages(32, 2, {32}), ember::InvalidArgument);          // wrong length
  EXPECT_THROW(plan_stages(32, 2, {0, 32}), ember::InvalidArgument);       // empty stage
  EXPECT_THROW(plan_stages(2, 3, {}), ember::InvalidArgument);             // more stages than layers
}

TEST(StagePlan, InterleaveCutsEachDeviceShareIntoRoundRobinBlocks) {
  using ember::interleave_stages;
  // 14 + 18 layers, 2 rounds: device 0 runs 7 + 7, device 1 runs 9 + 9, in the order d0 d1 d0 d1.
  auto blocks = interleave_stages(plan_stages(32, 2, {14, 18}), 2);
  EXPECT_EQ(counts(blocks), (std::vector<int64_t>{7, 9, 7, 9}));
  // An uneven share gives its remainder to the earlier rounds; every layer is placed once. The
  // first block (device 0: 3 3 2 -> 1 4 3) and the last (device 3: 3 2 2 -> 3 3 1) thin to one layer.
  auto c = counts(interleave_stages(plan_stages(30, 4, {}), 3));  // shares 8 8 7 7
  EXPECT_EQ(c, (std::vector<int64_t>{1, 3, 3, 3, 4, 3, 2, 3, 3, 2, 2, 1}));
  // One round is the plain split.
  EXPECT_EQ(counts(interleave_stages(plan_stages(32, 2, {}), 1)), (std::vector<int64_t>{16, 16}));
}

TEST(StagePlan, InterleaveThinsThePipelinesFirstAndLastBlocks) {
  using ember::interleave_stages;
  // 2 devices, 8 rounds of 2 layers: the first and last blocks hold one layer, the middle block of
  // the same device one more; each device keeps its 16 layers.
  auto c = counts(interleave_stages(plan_stages(32, 2, {}), 8));
  EXPECT_EQ(c, (std::vector<int64_t>{1, 2, 2, 2, 2, 2, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1}));
  // 4 rounds of 4 layers: 1 5 5 5 and 5 5 5 1.
  EXPECT_EQ(counts(interleave_stages(plan_stages(32, 2, {}), 4)), (std::vector<int64_t>{1, 5, 5, 5, 5, 5, 5, 1}));
  // Blocks of one layer stay; so do blocks too large for the others to take the rest.
  EXPECT_EQ(counts(interleave_stages(plan_stages(32, 4, {}), 8)), std::vector<int64_t>(32, 1));
  EXPECT_EQ(counts(interleave_stages(plan_stages(64, 2, {}), 4)), std::vector<int64_t>(8, 8));
  // 80 layers, 4 devices, 8 rounds (blocks 3 3 3 3 2 2 2 2): the spare layers go to the smaller
  // blocks, so that no block grows past the largest (device 0: 1 3 3 3 3 3 2 2; device 3, whose
  // last block had 2 layers: 3 3 3 3 3 2 2 1).
  auto big = counts(interleave_stages(plan_stages(80, 4, {}), 8));
  std::vector<int64_t> first, last;
  for (int j = 0; j < 8; ++j) {
    first.push_back(big[j * 4]);
    last.push_back(big[j * 4 + 3]);
  }
  EXPECT_EQ(first, (std::vector<int64_t>{1, 3, 3, 3, 3, 3, 2, 2}));
  EXPECT_EQ(last, (std::vector<int64_t>{3, 3, 3, 3, 3, 2, 2, 1}));
  EXPECT_EQ(*std::max_element(big.begin(), big.end()), 3);
}

TEST(StagePlan, InterleaveIsChecked) {
  using ember::interleave_stages;
  EXPECT_THROW(interleave_stages(plan_stages(32, 2, {}), 0), ember::InvalidArgument);
  EXPECT_THROW(interleave_stages(plan_stages(32, 2, {3, 29}), 4), ember::InvalidArgument);  // 3 layers, 4 blocks
  EXPECT_NO_THROW(interleave_stages(plan_stages(32, 2, {4, 28}), 4));
}

TEST(StagePlan, DefaultInterleaveIsTheLargestPowerOfTwoThatFits) {
  using ember::default_interleave;
  EXPECT_EQ(default_interleave(plan_stages(32, 2, {}), true, 8), 8);   // blocks of 2 layers
  EXPECT_EQ(default_interleave(plan_stages(32, 4, {}), true, 8), 8);   // blocks of 1 layer
  EXPECT_EQ(default_interleave(plan_stages(32, 2, {}), true, 4), 4);   // capped (host staging)
  EXPECT_EQ(default_interleave(plan_stages(32, 8, {}), true, 8), 4);   // 4 layers a stage
  EXPECT_EQ(default_interleave(plan_stages(30, 4, {}), true, 8), 4);   // shares 8 8 7 7
  EXPECT_EQ(default_interleave(plan_stages(4, 2, {}), true, 8), 2);
  EXPECT_EQ(default_interleave(plan_stages(2, 2, {}), true, 8), 1);
  EXPECT_EQ(default_interleave(plan_stages(32, 1, {}), true, 8), 1);   // one stage: nothing to interleave
  EXPECT_EQ(default_interleave(plan_stages(32, 2, {}), false, 8), 1);  // CPU stages share the cores
}
