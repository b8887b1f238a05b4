// The vision tower on a CUDA device (builds with CUDA only): the device-resident entry point and
// the randomly initialised full-size tower, for the benchmark and the tests.
#pragma once

#include <cstdint>
#include <memory>

#include "lightdesk/cuda_device.h"
#include "vision_tower.h"

namespace lightdesk::vision {

class CudaVisionTower : public VisionTower {
 public:
  // forward() with pixels and features in device memory, enqueued on device()'s stream: no
  // transfers, no synchronisation.
  virtual void forward_on_device(const float* pixels, std::int64_t tiles, float* features) = 0;
  virtual const DeviceContext& device() const = 0;
};

// bf16 weights drawn uniformly (linear weights within ±1/√fan-in, norms near 1, biases and
// embeddings small, none zero) from `seed`, made on the device: the benchmark's model.
std::unique_ptr<CudaVisionTower> make_random_cuda_vision_tower(const VisionConfig& config, std::uint64_t seed);

}  // namespace lightdesk::vision
