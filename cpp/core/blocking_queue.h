// The hand-off between threads (requests -> engine, batches -> stages, results -> engine): a
// mutex-guarded deque that is never held across a forward pass. Optionally, pop() polls for a while
// before it sleeps: waking a sleeping thread costs tens to hundreds of microseconds (more in a VM),
// which a GPU decode step of a few milliseconds pays twice per token.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

namespace ember {

template <typename T>
class BlockingQueue {
 public:
  // How long pop() polls before sleeping; zero (the default) sleeps at once. Set before use.
  void set_spin(std::chrono::microseconds spin) { spin_ = spin; }

  void push(T item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      items_.push_back(std::move(item));
      ready_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
  }
  // Blocks until an item arrives or the queue is closed and empty (then nullopt).
  std::optional<T> pop() {
    if (spin_.count() > 0) poll();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !items_.empty() || closed_; });
    return take_locked();
  }
  template <typename Rep, typename Period>
  std::optional<T> pop_for(std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !items_.empty() || closed_; });
    return take_locked();
  }
  std::optional<T> try_pop() {
    std::lock_guard<std::mutex> lock(mu_);
    return take_locked();
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      ready_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return items_.size();
  }

 private:
  std::optional<T> take_locked() {
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    ready_.store(!items_.empty() || closed_, std::memory_order_release);
    return item;
  }
  // Returns when an item (or close) is visible or the spin time is up.
  void poll() const {
    const auto deadline = std::chrono::steady_clock::now() + spin_;
    for (unsigned n = 1; !ready_.load(std::memory_order_acquire); ++n) {
      if ((n & 255u) == 0 && std::chrono::steady_clock::now() >= deadline) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
  }
  std::chrono::microseconds spin_{0};
  std::atomic<bool> ready_{false};  // items_ non-empty or closed_; a hint read without the lock
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> items_;
  bool closed_ = false;
};

}  // namespace ember
