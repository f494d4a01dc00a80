// Page bookkeeping: all-or-nothing growth, release returns every page, double free is caught.
#include <gtest/gtest.h>

#include <set>

#include "ember/error.h"
#include "kv/block_manager.h"

using ember::BlockManager;

TEST(BlockManager, GrowsInWholePagesAndReleasesAll) {
  BlockManager bm(8, 4);
  std::vector<int32_t> table;
  EXPECT_TRUE(bm.grow(table, 1));
  EXPECT_EQ(table.size(), 1u);
  EXPECT_TRUE(bm.grow(table, 4));
  EXPECT_EQ(table.size(), 1u);
  EXPECT_TRUE(bm.grow(table, 5));
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(bm.num_free(), 6);
  bm.release(table);
  EXPECT_TRUE(table.empty());
  EXPECT_EQ(bm.num_free(), 8);
}

TEST(BlockManager, GrowIsAllOrNothing) {
  BlockManager bm(3, 2);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(bm.grow(a, 4));
  EXPECT_FALSE(bm.grow(b, 4));  // needs 2 pages, 1 free
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(bm.num_free(), 1);
  EXPECT_TRUE(bm.can_grow(b, 2));
  EXPECT_FALSE(bm.can_grow(b, 3));
}

TEST(BlockManager, PagesAreDistinct) {
  BlockManager bm(16, 1);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(bm.grow(a, 7));
  ASSERT_TRUE(bm.grow(b, 9));
  std::set<int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 16u);
  EXPECT_EQ(bm.num_free(), 0);
}

TEST(BlockManager, DoubleFreeThrows) {
  BlockManager bm(4, 1);
  std::vector<int32_t> a;
  ASSERT_TRUE(bm.grow(a, 2));
  std::vector<int32_t> copy = a;
  bm.release(a);
  EXPECT_THROW(bm.release(copy), ember::EngineError);
}

TEST(BlockManager, RejectsEmptyPool) {
  EXPECT_THROW(BlockManager(0, 16), ember::InvalidArgument);
  EXPECT_THROW(BlockManager(4, 0), ember::InvalidArgument);
}
