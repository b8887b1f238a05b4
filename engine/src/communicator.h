// Collectives among the ranks of a tensor-parallel model: one Communicator per rank, each used
// by its rank's thread only. Tensors are in the rank's ModelOps memory (host for the CPU, the
// rank's GPU for NCCL); a collective is queued in order with the rank's ops and every rank must
// call the same collectives in the same order.
#pragma once

#include <cstdint>
#include <memory>
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

// `ranks` communicators over threads of this process, for the CPU backend: rank r's is
// element r, each to be used by a thread of its own. The sum adds the ranks in rank order, so
// every rank gets the same bits.
std::vector<std::unique_ptr<LoopbackCommunicator>> make_loopback_communicators(int ranks);

// One NCCL communicator per GPU of `devices`, rank r on devices[r], its collectives queued on
// streams[r] (a cudaStream_t). Throws Error naming the cause where NCCL fails. Built with the
// CUDA code only (nccl_communicator.cpp): a build without it has no caller.
std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams);

// The greedy token of logits split by vocabulary rows: each rank passes its own rows' best
// (value, global id; the lowest id among equal values); every rank gets the best of all, the
// lowest id among equal maxima, as a single-rank argmax would. Only 8 bytes per rank travel.
// `scratch`: I32 [2 * (size + 1)] in the rank's memory; `ops` moves the candidates through it.
TokenId distributed_argmax(Communicator& comm, ModelOps& ops, Tensor scratch, float value, TokenId id);

}  // namespace lightdesk
