// The NCCL communicator on this machine's GPUs (one rank per GPU, each on a thread of its own):
// its collectives against their definitions, and the distributed argmax through the CUDA ops.
// World size 1 on a one-GPU machine; every GPU where there are more.
#include <gtest/gtest.h>

#include <thread>

#include "cuda_test_util.h"
#include "src/communicator.h"
#include "src/cuda_backend.h"

namespace lightdesk {
namespace {

class NcclTest : public test::GpuTest {};

TEST_F(NcclTest, CollectivesOfEveryGpu) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  std::vector<int> devices;
  std::vector<cudaStream_t> streams(static_cast<std::size_t>(count));
  std::vector<void*> stream_handles;
  for (int d = 0; d < count; ++d) {
    devices.push_back(d);
    ASSERT_EQ(cudaSetDevice(d), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&streams[d]), cudaSuccess);
    stream_handles.push_back(streams[d]);
  }
  auto comms = make_nccl_communicators(devices, stream_handles);
  ASSERT_EQ(static_cast<int>(comms.size()), count);
  std::vector<std::vector<float>> sums(count), gathered(count);
  std::vector<TokenId> argmax(count);
  std::vector<std::string> failures(count);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < count; ++r)
      threads.emplace_back([&, r] {
        try {
          cudaSetDevice(r);
          float *x = nullptr, *g = nullptr;
          std::int32_t* scratch = nullptr;
          cudaMalloc(&x, 2 * sizeof(float));
          cudaMalloc(&g, 2 * count * sizeof(float));
          cudaMalloc(&scratch, 2 * (count + 1) * sizeof(std::int32_t));
          const float mine[2] = {static_cast<float>(r), static_cast<float>(10 * r + 1)};
          cudaMemcpy(x, mine, sizeof(mine), cudaMemcpyHostToDevice);
          comms[r]->all_reduce_sum({x, ElementType::F32}, 2);
          comms[r]->all_gather({x, ElementType::F32}, 2, {g, ElementType::F32});
          cudaStreamSynchronize(streams[r]);
          sums[r].resize(2);
          gathered[r].resize(2 * count);
          cudaMemcpy(sums[r].data(), x, 2 * sizeof(float), cudaMemcpyDeviceToHost);
          cudaMemcpy(gathered[r].data(), g, 2 * count * sizeof(float), cudaMemcpyDeviceToHost);
          // Every rank ties at 5 but rank 0; the lowest id (the last rank's) wins.
          auto ops = cuda_ops_backends().front().make();
          argmax[r] = distributed_argmax(*comms[r], *ops, {scratch, ElementType::I32}, r == 0 && count > 1 ? 1.0f : 5.0f,
                                         100 - r);
          cudaFree(x);
          cudaFree(g);
          cudaFree(scratch);
        } catch (const std::exception& e) {
          failures[r] = e.what();
        }
      });
  }
  float total0 = 0, total1 = 0;
  for (int r = 0; r < count; ++r) total0 += static_cast<float>(r), total1 += static_cast<float>(10 * r + 1);
  for (int r = 0; r < count; ++r) {
    EXPECT_EQ(failures[r], "");
    EXPECT_EQ(sums[r], (std::vector<float>{total0, total1})) << "rank " << r;
    for (int q = 0; q < count; ++q) {
      EXPECT_EQ(gathered[r][2 * q], total0) << "rank " << r;
      EXPECT_EQ(gathered[r][2 * q + 1], total1) << "rank " << r;
    }
    EXPECT_EQ(argmax[r], 100 - (count - 1)) << "rank " << r;
  }
  comms.clear();
  for (int d = 0; d < count; ++d) cudaStreamDestroy(streams[d]);
}

}  // namespace
}  // namespace lightdesk
