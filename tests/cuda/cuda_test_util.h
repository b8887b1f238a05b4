// Helpers of the CUDA tests: device arrays filled from host floats, NaN poisoning, error bounds
// (test_util.h has the random generator and the error norm).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "lightdesk/cuda_ops.h"
#include "test_util.h"

namespace lightdesk::test {

// Empty when a CUDA device is present, else why the GPU tests skip.
inline std::string missing_gpu_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) return std::string("no usable CUDA device (") + cudaGetErrorString(status) + ")";
  if (count == 0) return "no CUDA device";
  return {};
}

#define LIGHTDESK_SKIP_WITHOUT_GPU()                                                           \
  do {                                                                                         \
    const std::string reason = ::lightdesk::test::missing_gpu_reason();                        \
    if (!reason.empty()) GTEST_SKIP() << "CUDA tests need a GPU: " << reason << "; skipping"; \
  } while (false)

// The base of the GPU test fixtures whose set-up needs nothing else: each test skips, saying
// why, where no GPU is usable.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override { LIGHTDESK_SKIP_WITHOUT_GPU(); }
};

// A device array of T; values go in and out as floats.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t count) : count_(count) {
    cuda::check(cudaMalloc(&data_, std::max<std::size_t>(count, 1) * sizeof(T)), "test cudaMalloc");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(data_); }

  T* get() const { return data_; }
  std::size_t size() const { return count_; }

  // Stores `values` rounded to T and returns them as stored, so a float reference computed
  // from the result sees exactly the kernel's inputs.
  std::vector<float> set(const std::vector<float>& values) {
    EXPECT_EQ(values.size(), count_);
    if constexpr (std::is_same_v<T, float>) {
      cuda::check(cudaMemcpy(data_, values.data(), count_ * sizeof(float), cudaMemcpyHostToDevice), "test upload");
    } else {
      DeviceArray<float> staging(count_);
      staging.set(values);
      cuda::from_float(staging.get(), static_cast<std::int64_t>(count_), data_, nullptr);
    }
    return get_values();
  }

  std::vector<float> get_values() const {
    std::vector<float> out(count_);
    if constexpr (std::is_same_v<T, float>) {
      cuda::check(cudaMemcpy(out.data(), data_, count_ * sizeof(float), cudaMemcpyDeviceToHost), "test download");
    } else {
      DeviceArray<float> staging(count_);
      cuda::to_float(data_, static_cast<std::int64_t>(count_), staging.get(), nullptr);
      out = staging.get_values();
    }
    cuda::check(cudaDeviceSynchronize(), "test synchronize");
    return out;
  }

  // All bytes 0xFF: NaN in float32 and bf16, so an element the kernel misses shows.
  void poison() { cuda::check(cudaMemset(data_, 0xFF, count_ * sizeof(T)), "test poison"); }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

// Error bounds by activation type: float32 arithmetic in a different order, or bf16 operands
// and outputs (8 significant bits: one rounding is up to 2^-9 ≈ 2e-3 relative).
template <typename T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}

// The two activation types of the typed kernel tests, named f32 and bf16 in test names.
using ActivationTypes = ::testing::Types<float, cuda::bf16>;
class ActivationName {
 public:
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "f32" : "bf16";
  }
};

// In a typed test whose fixture has a test::Random `random`: the relative error of out against
// ref under bound, with the seed in the failure message.
#define EXPECT_CLOSE(out, ref, bound)                                                        \
  do {                                                                                       \
    const double error = ::lightdesk::test::relative_error(out, ref);                        \
    EXPECT_LT(error, bound) << "relative error; seed " << this->random.seed();               \
  } while (false)

}  // namespace lightdesk::test
