// A fixed set of worker threads for the CPU backend's parallel loops.
#pragma once

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
  void parallel_for(std::int64_t count, const std::function<void(std::int64_t)>& fn);

 private:
  void worker_loop();
  void stop_workers();
  void run_items();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::int64_t)>* job_ = nullptr;
  std::int64_t job_count_ = 0;
  std::int64_t next_item_ = 0;
  std::int64_t finished_items_ = 0;
  std::uint64_t generation_ = 0;
  std::exception_ptr error_;
  bool stopping_ = false;
};

}  // namespace lightdesk
