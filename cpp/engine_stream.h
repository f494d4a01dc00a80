// The per-request event queue: the engine thread pushes token events, the caller's thread waits
// on them. It is the only state shared between the engine and a request's reader.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>

#include "ember/engine.h"

namespace ember {

class RequestStreamImpl : public RequestStream {
 public:
  using RequestStream::RequestStream;

  void push(TokenEvent ev) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      if (ev.finish != FinishReason::None) closed_ = true;
      events_.push_back(std::move(ev));
    }
    cv_.notify_all();
  }
  bool next(TokenEvent* ev, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !events_.empty() || (closed_ && events_.empty()); });
    if (events_.empty()) return false;
    *ev = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  std::vector<TokenEvent> drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<TokenEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }
  bool finished() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_ && events_.empty();
  }
  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
  bool closed_ = false;
};

}  // namespace ember
