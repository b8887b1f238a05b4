#include "lightdesk/thread_pool.h"

#include <chrono>
#include <string>
#include <system_error>

#include "lightdesk/error.h"

namespace lightdesk {
namespace {

// Clears the upper halves of the AVX registers. Library code before a parallel_for (OpenBLAS's
// AVX-512 GEMM kernels) can leave them dirty; the SSE-encoded code of the ops and of libm that
// runs next then pays for every instruction: prefill in the Qt app's engine thread ran 5× slower
// for it. A no-op on CPUs without AVX.
#if defined(__x86_64__)
__attribute__((target("avx"))) void clear_upper_vector_state_avx() { __builtin_ia32_vzeroupper(); }
void clear_upper_vector_state() {
  static const bool has_avx = __builtin_cpu_supports("avx");
  if (has_avx) clear_upper_vector_state_avx();
}
#else
void clear_upper_vector_state() {}
#endif

void pause_briefly() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

template <typename Done>
bool ThreadPool::poll(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kPollMicroseconds);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      pause_briefly();
    }
    if (std::chrono::steady_clock::now() > deadline) return done();
  }
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (threads > kMaxThreads)
    throw Error("cannot use " + std::to_string(threads) + " threads (at most " + std::to_string(kMaxThreads) + ")");
  try {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    // The destructor does not run for a constructor that throws: the workers already started
    // must be stopped and joined here, or they outlive the pool they wait on.
    stop_workers();
    throw Error("cannot start " + std::to_string(threads) + " threads (" + std::to_string(workers_.size() + 1) +
                " started): " + e.what());
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::run_items() {
  clear_upper_vector_state();
  std::unique_lock lock(mutex_);
  while (job_ && next_item_ < job_count_) {
    const std::int64_t i = next_item_++;
    const auto* job = job_;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*job)(i);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error && !error_) error_ = error;
    if (++finished_items_ == job_count_) {
      polled_finished_.store(true, std::memory_order_release);
      done_.notify_all();
    }
  }
}

void ThreadPool::worker_loop() {
  std::uint64_t seen = 0;
  for (;;) {
    poll([&] { return polled_generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    run_items();
  }
}

void ThreadPool::parallel_for(std::int64_t count, const std::function<void(std::int64_t)>& fn) {
  if (count <= 0) return;
  if (count == 1 || workers_.empty()) {
    clear_upper_vector_state();
    for (std::int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::lock_guard call(call_mutex_);
  {
    std::lock_guard lock(mutex_);
    job_ = &fn;
    job_count_ = count;
    next_item_ = 0;
    finished_items_ = 0;
    error_ = nullptr;
    polled_finished_.store(false, std::memory_order_relaxed);
    polled_generation_.store(++generation_, std::memory_order_release);
  }
  wake_.notify_all();
  run_items();
  poll([&] { return polled_finished_.load(std::memory_order_acquire); });
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return finished_items_ == job_count_; });
  job_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

}  // namespace lightdesk
