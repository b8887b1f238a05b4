// The loopback communicator of simulated ranks on one GPU: the host rendezvous of the CPU's
// loopback (LoopbackGroup), the data moved by device copies and summed by a kernel, so that
// tensor-parallel layouts run and are checked on a one-GPU machine.
#include <cuda_runtime.h>

#include "communicator.h"
#include "lightdesk/cuda_device.h"

namespace lightdesk {
namespace {

class DeviceLoopback final : public LoopbackCommunicator {
 public:
  DeviceLoopback(std::shared_ptr<LoopbackGroup> group, int rank, int device, cudaStream_t stream)
      : group_(std::move(group)), rank_(rank), device_(device), stream_(stream) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->posted.size()); }
  void abort() noexcept override { group_->abort(); }
  void recover() noexcept override { group_->recover(); }

  // Post x once it is written, sum every rank's x in rank order into a buffer of this rank,
  // wait until every rank has read, and only then write x.
  void all_reduce_sum(Tensor x, std::int64_t count) override {
    if (x.type == ElementType::I32) throw Error("internal: the device loopback sums float32 and bf16 only");
    check(cudaSetDevice(device_), "cudaSetDevice");
    const auto bytes = static_cast<std::size_t>(count) * element_bytes(x.type);
    if (bytes > sum_.bytes()) sum_ = DeviceBuffer(bytes, "the loopback all-reduce");
    post(x.data);
    check(cudaMemcpyAsync(sum_.as<void>(), group_->posted[0], bytes, cudaMemcpyDeviceToDevice, stream_),
          "loopback all-reduce");
    for (std::size_t r = 1; r < group_->posted.size(); ++r) {
      if (x.type == ElementType::F32)
        add(sum_.as<float>(), static_cast<const float*>(group_->posted[r]), count);
      else
        add(sum_.as<cuda::bf16>(), static_cast<const cuda::bf16*>(group_->posted[r]), count);
    }
    finish_reading();
    check(cudaMemcpyAsync(x.data, sum_.as<void>(), bytes, cudaMemcpyDeviceToDevice, stream_), "loopback all-reduce");
  }

  void all_gather(Tensor send, std::int64_t count, Tensor recv) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    const auto bytes = static_cast<std::size_t>(count) * element_bytes(send.type);
    post(send.data);
    for (std::size_t r = 0; r < group_->posted.size(); ++r)
      if (bytes > 0)
        check(cudaMemcpyAsync(static_cast<char*>(recv.data) + r * bytes, group_->posted[r], bytes,
                              cudaMemcpyDeviceToDevice, stream_),
              "loopback all-gather");
    finish_reading();
  }

 private:
  template <typename T>
  void add(T* sum, const T* part, std::int64_t count) {
    cuda::scaled_sum(sum, 1.0f, part, 1.0f, count, sum, stream_);
  }
  // What the rank queued before the collective is done before the others read it.
  void post(const void* data) {
    check(cudaStreamSynchronize(stream_), "loopback collective");
    group_->posted[static_cast<std::size_t>(rank_)] = data;
    group_->arrive_and_wait();
  }
  // This rank's reads of the others' buffers are done before any of them writes its own again.
  void finish_reading() {
    check(cudaStreamSynchronize(stream_), "loopback collective");
    group_->arrive_and_wait();
  }

  std::shared_ptr<LoopbackGroup> group_;
  int rank_, device_;
  cudaStream_t stream_;
  DeviceBuffer sum_;
};

}  // namespace

std::vector<std::unique_ptr<LoopbackCommunicator>> make_device_loopback_communicators(int device,
                                                                                      const std::vector<void*>& streams) {
  if (streams.empty()) throw Error("internal: a device loopback group without ranks");
  auto group = std::make_shared<LoopbackGroup>(static_cast<int>(streams.size()));
  std::vector<std::unique_ptr<LoopbackCommunicator>> communicators;
  for (std::size_t r = 0; r < streams.size(); ++r)
    communicators.push_back(
        std::make_unique<DeviceLoopback>(group, static_cast<int>(r), device, static_cast<cudaStream_t>(streams[r])));
  return communicators;
}

}  // namespace lightdesk
