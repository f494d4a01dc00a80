// Layer splits: even by default, proportional to free memory when given, explicit splits checked.
#include <gtest/gtest.h>

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
