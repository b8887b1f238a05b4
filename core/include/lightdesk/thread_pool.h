// A fixed set of worker threads for the CPU backend's parallel loops.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lightdesk {

class ThreadPool {
 public:
  // More threads than any machine has cores for: a request beyond is a mistake, not a plan.
  static constexpr int kMaxThreads = 4096;

  // threads <= 0: one per hardware thread. Throws Error for more than kMaxThreads or when the
  // system cannot start them (ulimit -u), with no thread left running.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) for every i in [0, count), spread over the workers and the calling thread;
  // returns when all are done. The first exception thrown by fn is rethrown here. Calls from
  // several threads take turns; fn must not call parallel_for itself.
  // Workers poll for the next call for a short while before they sleep, and the caller polls
  // for the last items before it sleeps: a decode step makes dozens of calls microseconds
  // apart, and a sleeping thread's wake-up would cost more than most of them.
  void parallel_for(std::int64_t count, const std::function<void(std::int64_t)>& fn);

 private:
  void worker_loop();
  void stop_workers();
  void run_items();
  // Polls until done() or for about kPollMicroseconds; true if done() became true.
  template <typename Done>
  static bool poll(Done done);
  static constexpr int kPollMicroseconds = 200;

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::int64_t)>* job_ = nullptr;
  std::int64_t job_count_ = 0;
  std::int64_t next_item_ = 0;
  std::int64_t finished_items_ = 0;
  std::uint64_t generation_ = 0;
  // Copies of generation_ and of "all items finished" that the polling threads read without the
  // mutex; every change is made under the mutex, as for the fields they copy.
  std::atomic<std::uint64_t> polled_generation_{0};
  std::atomic<bool> polled_finished_{true};
  std::exception_ptr error_;
  bool stopping_ = false;
};

}  // namespace lightdesk
