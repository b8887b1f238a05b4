// A mixture-of-experts layer on the GPU: float32 router, top-k, token permutation to experts,
// per-expert cuBLAS GEMMs, weighted combine back. Shared by the CUDA backend and lightdesk-bench.
// Up to kDeviceRoutedRows tokens (decode) take a path that never leaves the device: the expert
// products read the chosen experts' ids from device memory (no round trip to the host, so a
// decode step can run as a CUDA graph).
#pragma once

#include <cstdint>
#include <vector>

#include "cuda_device.h"

namespace lightdesk {

struct MoeShape {
  std::int64_t hidden = 0;
  std::int64_t width = 0;  // expert intermediate size
  int experts = 0;
  int top_k = 0;
};

// One layer's weights on the device.
template <typename T>
struct MoeWeights {
  const float* router = nullptr;  // [experts, hidden], float32
  const T* gate_up = nullptr;     // per expert [2 * width, hidden]: the w1 rows, then the w3 rows
  const T* down = nullptr;        // per expert [hidden, width]
};

// Device buffers of one MoE pass, for up to `rows` tokens.
struct MoeBuffers {
  std::int64_t rows = 0;
  DeviceBuffer router_in, router_logits, expert_ids, expert_weights, source_rows, slot_rows;
  DeviceBuffer expert_in, gate_up, expert_act, expert_out;
  DeviceBuffer slot_order;  // int32 0, 1, ...: the device-routed path's slots in place
};

template <typename T>
class MoeRunner {
 public:
  MoeRunner(const DeviceContext& device, const MoeShape& shape) : device_(device), shape_(shape) {}

  // Sizes the buffers for up to `rows` tokens; on failure the previous buffers stay.
  void reserve(std::int64_t rows);
  // out[rows, hidden] = Σ_k weight_k · w2(silu(w1 x) ⊙ w3 x) over each row's top-k experts,
  // summed in increasing expert order. Past kDeviceRoutedRows it waits for the device (the GEMM
  // sizes come to the host).
  void run(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out);

  static constexpr std::int64_t kDeviceRoutedRows = 4;

 private:
  void run_device_routed(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out);

  const DeviceContext& device_;
  MoeShape shape_;
  MoeBuffers buffers_;
  std::vector<std::int32_t> host_expert_ids_, host_source_rows_, host_slot_rows_;
};

extern template class MoeRunner<float>;
extern template class MoeRunner<cuda::bf16>;

}  // namespace lightdesk
