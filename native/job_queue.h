// Intrusive containers for jobs (the job type has a `J* next` link):
//   JobQueue        - FIFO of submitted jobs, mutex + condvar, one worker woken per job.
//   CompletionStack - lock-free LIFO of finished jobs; push() reports whether the stack
//                     was empty so the caller signals the JS thread once per batch;
//                     takeAll() empties it and returns the batch in FIFO order.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>

namespace xks {

template <class J>
class JobQueue {
 public:
  void push(J* j) {
    j->next = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (tail_ != nullptr) {
        tail_->next = j;
      } else {
        head_ = j;
      }
      tail_ = j;
    }
    cv_.notify_one();
  }

  // Blocks until a job is available; nullptr once stopped and empty.
  J* pop() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return head_ != nullptr || stopping_; });
    J* j = head_;
    if (j == nullptr) return nullptr;
    head_ = j->next;
    if (head_ == nullptr) tail_ = nullptr;
    j->next = nullptr;
    return j;
  }

  // Unlinks the jobs at the head whose deadline is <= now (FIFO: deadlines are ordered
  // when every job gets the same timeout) and returns them as a list.
  template <class TimePoint>
  J* popExpired(TimePoint now) {
    std::lock_guard<std::mutex> lk(mu_);
    J* first = nullptr;
    J** link = &first;
    while (head_ != nullptr && head_->deadline <= now) {
      J* j = head_;
      head_ = j->next;
      j->next = nullptr;
      *link = j;
      link = &j->next;
    }
    if (head_ == nullptr) tail_ = nullptr;
    return first;
  }

  bool stopping() {
    std::lock_guard<std::mutex> lk(mu_);
    return stopping_;
  }

  // Stops the workers (after their current job) and hands back the queued jobs in order.
  J* stopAndDrain() {
    J* all;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      all = head_;
      head_ = tail_ = nullptr;
    }
    cv_.notify_all();
    return all;
  }

  void restart() {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = false;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  J* head_ = nullptr;
  J* tail_ = nullptr;
  bool stopping_ = false;
};

template <class J>
class CompletionStack {
 public:
  // True when the stack was empty (the caller must wake the consumer).
  bool push(J* j) {
    J* h = head_.load(std::memory_order_relaxed);
    do {
      j->next = h;
    } while (!head_.compare_exchange_weak(h, j, std::memory_order_release, std::memory_order_relaxed));
    return h == nullptr;
  }

  J* takeAll() {
    J* h = head_.exchange(nullptr, std::memory_order_acquire);
    J* fifo = nullptr;
    while (h != nullptr) {
      J* n = h->next;
      h->next = fifo;
      fifo = h;
      h = n;
    }
    return fifo;
  }

 private:
  alignas(64) std::atomic<J*> head_{nullptr};
};

}  // namespace xks
