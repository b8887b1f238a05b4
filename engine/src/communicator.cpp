// The in-process loopback communicator and the collectives built on any communicator.
#include "communicator.h"

#include <algorithm>
#include <barrier>
#include <bit>
#include <cstring>

namespace lightdesk {
namespace {

// What the ranks of one loopback group share: each rank's posted buffer and a barrier.
struct LoopbackGroup {
  explicit LoopbackGroup(int ranks) : posted(static_cast<std::size_t>(ranks)), barrier(ranks) {}
  std::vector<const void*> posted;
  std::barrier<> barrier;
};

class LoopbackCommunicator final : public Communicator {
 public:
  LoopbackCommunicator(std::shared_ptr<LoopbackGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->posted.size()); }

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
    group_->barrier.arrive_and_wait();
    std::copy(sum_.begin(), sum_.end(), x.as<float>());
  }

  void all_gather(Tensor send, std::int64_t count, Tensor recv) override {
    post(send.data);
    const std::size_t bytes = static_cast<std::size_t>(count) * element_bytes(send.type);
    for (std::size_t r = 0; r < group_->posted.size(); ++r)
      if (count > 0) std::memmove(static_cast<char*>(recv.data) + r * bytes, group_->posted[r], bytes);
    group_->barrier.arrive_and_wait();
  }

 private:
  void post(const void* data) {
    group_->posted[static_cast<std::size_t>(rank_)] = data;
    group_->barrier.arrive_and_wait();
  }

  std::shared_ptr<LoopbackGroup> group_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_loopback_communicators(int ranks) {
  if (ranks < 1) throw Error("internal: a communicator group of " + std::to_string(ranks) + " ranks");
  auto group = std::make_shared<LoopbackGroup>(ranks);
  std::vector<std::unique_ptr<Communicator>> communicators;
  for (int r = 0; r < ranks; ++r) communicators.push_back(std::make_unique<LoopbackCommunicator>(group, r));
  return communicators;
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
