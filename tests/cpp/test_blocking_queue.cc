// The thread hand-off queue: FIFO order, blocking pop wakes on push, close releases waiters.
#include <gtest/gtest.h>

#include <thread>

#include "core/blocking_queue.h"

using ember::BlockingQueue;

TEST(BlockingQueue, FifoOrder) {
  BlockingQueue<int> q;
  for (int i = 0; i < 5; ++i) q.push(i);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(*q.pop(), i);
  EXPECT_FALSE(q.try_pop().has_value());
}

TEST(BlockingQueue, PopWaitsForProducer) {
  BlockingQueue<int> q;
  std::thread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    q.push(42);
  });
  EXPECT_EQ(*q.pop(), 42);
  producer.join();
}

TEST(BlockingQueue, CloseReleasesWaiters) {
  BlockingQueue<int> q;
  std::thread waiter([&] { EXPECT_FALSE(q.pop().has_value()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.close();
  waiter.join();
  EXPECT_TRUE(q.closed());
}

TEST(BlockingQueue, PopForTimesOut) {
  BlockingQueue<int> q;
  EXPECT_FALSE(q.pop_for(std::chrono::milliseconds(5)).has_value());
}

TEST(BlockingQueue, ManyProducersDeliverEverything) {
  BlockingQueue<int> q;
  std::vector<std::thread> ps;
  for (int t = 0; t < 4; ++t)
    ps.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) q.push(t * 1000 + i);
    });
  long sum = 0;
  for (int i = 0; i < 4000; ++i) sum += *q.pop();
  for (auto& p : ps) p.join();
  EXPECT_EQ(sum, 4000L * 3999 / 2);
}
