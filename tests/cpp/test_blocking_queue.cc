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

// Polling pop (GPU stages): items pushed during the poll, after it gave up and slept, and a close
// while polling all come through; the ready hint follows the contents.
TEST(BlockingQueue, SpinningPopSeesItemsAndClose) {
  BlockingQueue<int> q;
  q.set_spin(std::chrono::microseconds(50000));
  std::thread fast([&] { q.push(1); });
  EXPECT_EQ(*q.pop(), 1);
  fast.join();

  q.set_spin(std::chrono::microseconds(100));  // gives up polling long before the push
  std::thread slow([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    q.push(2);
    q.push(3);
  });
  EXPECT_EQ(*q.pop(), 2);
  slow.join();
  EXPECT_EQ(*q.pop(), 3);  // the hint stayed set while an item was left
  EXPECT_FALSE(q.try_pop().has_value());

  q.set_spin(std::chrono::microseconds(200000));
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    q.close();
  });
  EXPECT_FALSE(q.pop().has_value());
  closer.join();
}
