// The in-process loopback communicator and the collectives built on any communicator.
#include "communicator.h"

#include <algorithm>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

namespace lightdesk {

void LoopbackGroup::arrive_and_wait() {
  std::unique_lock lock(mutex_);
  if (aborted_) throw RankAborted();
  const std::uint64_t generation = generation_;
  if (++arrived_ == static_cast<int>(posted.size())) {
    arrived_ = 0;
    ++generation_;
    all_arrived_.notify_all();
    return;
  }
  all_arrived_.wait(lock, [&] { return generation_ != generation || aborted_; });
  if (generation_ == generation) throw RankAborted();
}

void LoopbackGroup::abort() noexcept {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  all_arrived_.notify_all();
}

void LoopbackGroup::recover() noexcept {
  std::lock_guard lock(mutex_);
  aborted_ = false;
  arrived_ = 0;
}

namespace {

class Loopback final : public LoopbackCommunicator {
 public:
  Loopback(std::shared_ptr<LoopbackGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->posted.size()); }
  void abort() noexcept override { group_->abort(); }
  void recover() noexcept override { group_->recover(); }

  // Post, wait for every rank's post, read them all, wait until every rank has read, and only
  // then write: a rank's buffer is read by the others between the two waits only.
  void all_reduce_sum(Tensor x, std::int64_t count) override {
    if (x.type != ElementType::F32) throw Error("internal: the loopback communicator sums float32 only");
    post(x.data);
    sum_.assign(static_cast<std::size_t>(count), 0.0f);
    for (const void* part : group_->posted) {
      const float* values = static_cast<const float*>(part);
      for (std::int64_t i = 0; i < count; ++i) sum_[static_cast<std::size_t>(i)] += values[i];
    }
    group_->arrive_and_wait();
    std::copy(sum_.begin(), sum_.end(), x.as<float>());
  }

  void all_gather(Tensor send, std::int64_t count, Tensor recv) override {
    post(send.data);
    const std::size_t bytes = static_cast<std::size_t>(count) * element_bytes(send.type);
    for (std::size_t r = 0; r < group_->posted.size(); ++r)
      if (count > 0) std::memmove(static_cast<char*>(recv.data) + r * bytes, group_->posted[r], bytes);
    group_->arrive_and_wait();
  }

 private:
  void post(const void* data) {
    group_->posted[static_cast<std::size_t>(rank_)] = data;
    group_->arrive_and_wait();
  }

  std::shared_ptr<LoopbackGroup> group_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<LoopbackCommunicator>> make_loopback_communicators(int ranks) {
  if (ranks < 1) throw Error("internal: a communicator group of " + std::to_string(ranks) + " ranks");
  auto group = std::make_shared<LoopbackGroup>(ranks);
  std::vector<std::unique_ptr<LoopbackCommunicator>> communicators;
  for (int r = 0; r < ranks; ++r) communicators.push_back(std::make_unique<Loopback>(group, r));
  return communicators;
}

void on_every_rank(std::size_t ranks, const std::function<void(std::size_t)>& fn,
                   const std::function<void(std::size_t)>& abort, const std::function<void()>& recover) {
  if (ranks == 1) return fn(0);
  std::mutex failure_mutex;
  std::exception_ptr first_failure;
  {
    std::vector<std::jthread> threads;
    for (std::size_t r = 0; r < ranks; ++r)
      threads.emplace_back([&, r] {
        try {
          fn(r);
        } catch (const RankAborted&) {
        } catch (...) {
          abort(r);
          std::lock_guard lock(failure_mutex);
          if (!first_failure) first_failure = std::current_exception();
        }
      });
  }
  if (!first_failure) return;
  recover();
  std::rethrow_exception(first_failure);
}

TokenId distributed_argmax(Communicator& comm, ModelOps& ops, Tensor scratch, float value, TokenId id) {
  const int ranks = comm.size();
  // The candidate as two 4-byte words (the value's bits, the id), gathered behind it.
  const std::int32_t mine[2] = {std::bit_cast<std::int32_t>(value), id};
  const Tensor candidates = scratch.at(2);
  ops.upload(mine, 2, scratch);
  comm.all_gather(scratch, 2, candidates);
  std::vector<std::int32_t> all(static_cast<std::size_t>(2 * ranks));
  ops.download(candidates, 2 * ranks, all.data());
  float best = std::bit_cast<float>(all[0]);
  TokenId best_id = all[1];
  for (int r = 1; r < ranks; ++r) {
    const float v = std::bit_cast<float>(all[2 * r]);
    const TokenId i = all[2 * r + 1];
    if (v > best || (v == best && i < best_id)) best = v, best_id = i;
  }
  return best_id;
}

}  // namespace lightdesk
