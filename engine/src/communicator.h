// Collectives among the ranks of a tensor-parallel model: one Communicator per rank, each used
// by its rank's thread only. Tensors are in the rank's ModelOps memory (host for the CPU, the
// rank's GPU for NCCL); a collective is queued in order with the rank's ops and every rank must
// call the same collectives in the same order.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "lightdesk/engine.h"
#include "ops.h"

namespace lightdesk {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x = the sum of every rank's x, in place (float32 or bf16). Every rank gets the same values.
  virtual void all_reduce_sum(Tensor x, std::int64_t count) = 0;
  // recv = every rank's `count` values of send, in rank order: [size, count] of send's type.
  virtual void all_gather(Tensor send, std::int64_t count, Tensor recv) = 0;
};

// What a rank's collective throws when another rank of its group has failed: the caller reports
// that rank's error, not this one.
class RankAborted : public Error {
 public:
  RankAborted() : Error("a collective was abandoned because another rank failed") {}
};

// A communicator over threads of this process. A rank that fails partway through a pass calls
// abort(): the ranks waiting in a collective, and those that enter one later, throw RankAborted
// instead of waiting for it forever. Once every rank's thread has left, recover() makes the
// group usable for the next pass.
class LoopbackCommunicator : public Communicator {
 public:
  virtual void abort() noexcept = 0;
  virtual void recover() noexcept = 0;
};

// What the ranks of one loopback group share: each rank's posted buffer and a barrier that an
// aborting rank breaks (std::barrier cannot be broken: a failed rank would leave the others
// waiting in it for ever).
class LoopbackGroup {
 public:
  explicit LoopbackGroup(int ranks) : posted(static_cast<std::size_t>(ranks)) {}
  std::vector<const void*> posted;

  // Throws RankAborted where the group is aborted before or while waiting.
  void arrive_and_wait();
  void abort() noexcept;
  // Only while no rank is inside a collective: the count of a broken barrier restarts.
  void recover() noexcept;

 private:
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  bool aborted_ = false;
};

// `ranks` communicators over threads of this process, for the CPU backend: rank r's is
// element r, each to be used by a thread of its own. The sum adds the ranks in rank order, so
// every rank gets the same bits.
std::vector<std::unique_ptr<LoopbackCommunicator>> make_loopback_communicators(int ranks);

// `ranks` communicators over threads of this process whose tensors are on one GPU, `device`:
// rank r's collectives are ordered on streams[r] (a cudaStream_t) and run by device copies and
// kernels, every rank summing in rank order (the same bits on every rank). N simulated ranks of
// one GPU, as the CPU's loopback simulates them on the host. Each collective waits for its
// rank's stream and for the other ranks, so it cannot be captured in a CUDA graph. Built with
// the CUDA code only (device_loopback_communicator.cpp).
std::vector<std::unique_ptr<LoopbackCommunicator>> make_device_loopback_communicators(int device,
                                                                                      const std::vector<void*>& streams);

// One NCCL communicator per GPU of `devices`, rank r on devices[r], its collectives queued on
// streams[r] (a cudaStream_t). Throws Error naming the cause where NCCL fails. Built with the
// CUDA code only (nccl_communicator.cpp): a build without it has no caller.
std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams);

// What a rank's collectives moved, counted as they are issued (a replayed CUDA graph issues
// none: count a pass that runs without one).
struct CollectiveCounts {
  std::uint64_t all_reduces = 0, all_reduce_bytes = 0;  // bytes: each rank's buffer
  std::uint64_t all_gathers = 0, all_gather_bytes = 0;  // bytes: each rank's part
};

// A communicator counting the collectives that go through it to `inner`.
class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void all_reduce_sum(Tensor x, std::int64_t count) override {
    ++counts_.all_reduces;
    counts_.all_reduce_bytes += static_cast<std::uint64_t>(count) * element_bytes(x.type);
    inner_.all_reduce_sum(x, count);
  }
  void all_gather(Tensor send, std::int64_t count, Tensor recv) override {
    ++counts_.all_gathers;
    counts_.all_gather_bytes += static_cast<std::uint64_t>(count) * element_bytes(send.type);
    inner_.all_gather(send, count, recv);
  }
  const CollectiveCounts& counts() const { return counts_; }
  void reset_counts() { counts_ = {}; }

 private:
  Communicator& inner_;
  CollectiveCounts counts_;
};

// Runs fn(rank) for ranks 0.. ranks - 1, each on a thread of its own (inline for one rank), and
// rethrows the error of the first rank that failed. A failing rank calls abort(rank) so that the
// others leave their collectives (RankAborted, swallowed here) rather than wait for it; once
// every rank's thread has left, recover() readies the group for the next pass.
void on_every_rank(std::size_t ranks, const std::function<void(std::size_t)>& fn,
                   const std::function<void(std::size_t)>& abort, const std::function<void()>& recover);

// The greedy token of logits split by vocabulary rows: each rank passes its own rows' best
// (value, global id; the lowest id among equal values); every rank gets the best of all, the
// lowest id among equal maxima, as a single-rank argmax would. Only 8 bytes per rank travel.
// `scratch`: I32 [2 * (size + 1)] in the rank's memory; `ops` moves the candidates through it.
TokenId distributed_argmax(Communicator& comm, ModelOps& ops, Tensor scratch, float value, TokenId id);

}  // namespace lightdesk
