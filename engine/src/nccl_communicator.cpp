// The NCCL communicator: one process, one communicator per GPU.
//
// The communicators are made together by ncclCommInitAll (one call, no unique id to pass
// around, as all ranks live in this process), and each rank's collectives are then issued by
// that rank's own host thread, as the CPU backend's loopback ranks are. One thread per GPU
// rather than one thread driving every GPU: the model graph is written once for a rank, and a
// single driving thread would have to interleave every rank's ops and wrap each collective of
// all ranks in ncclGroupStart/End, so the graph could no longer be run (or captured as a CUDA
// graph, which capture does per stream on the capturing thread) rank by rank.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>

#include "communicator.h"

namespace lightdesk {
namespace {

void check(ncclResult_t result, const char* what) {
  if (result != ncclSuccess) throw Error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(result));
}

ncclDataType_t nccl_type(ElementType type) {
  switch (type) {
    case ElementType::F32: return ncclFloat32;
    case ElementType::BF16: return ncclBfloat16;
    case ElementType::I32: return ncclInt32;
  }
  throw Error("internal: no NCCL type for this element type");
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, cudaStream_t stream)
      : comm_(comm), rank_(rank), size_(size), stream_(stream) {}
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(Tensor x, std::int64_t count) override {
    check(ncclAllReduce(x.data, x.data, static_cast<std::size_t>(count), nccl_type(x.type), ncclSum, comm_, stream_),
          "all-reduce");
  }
  void all_gather(Tensor send, std::int64_t count, Tensor recv) override {
    check(ncclAllGather(send.data, recv.data, static_cast<std::size_t>(count), nccl_type(send.type), comm_, stream_),
          "all-gather");
  }

 private:
  ncclComm_t comm_;
  int rank_, size_;
  cudaStream_t stream_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams) {
  if (devices.empty() || devices.size() != streams.size())
    throw Error("internal: NCCL communicators need one stream per device");
  // NVLink SHARP (multicast objects) can put a shared multi-GPU machine out of service: forced
  // off, whatever the environment says, before NCCL reads it at its first init.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  const int ranks = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size());
  check(ncclCommInitAll(comms.data(), ranks, devices.data()), "init");
  std::vector<std::unique_ptr<Communicator>> communicators;
  for (int r = 0; r < ranks; ++r)
    communicators.push_back(
        std::make_unique<NcclCommunicator>(comms[r], r, ranks, static_cast<cudaStream_t>(streams[r])));
  return communicators;
}

}  // namespace lightdesk
