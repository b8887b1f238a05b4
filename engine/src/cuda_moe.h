// A mixture-of-experts layer on the GPU: float32 router, top-k, token permutation to experts,
// the experts' products, weighted combine back. Shared by the CUDA backend and lightdesk-bench.
// Up to kDeviceRoutedRows tokens (decode) the expert products are GEMVs that read the chosen
// experts' ids from device memory; past that the rows are grouped by expert on the device and
// each projection is one grouped GEMM over all experts (bf16). Quantized experts (int8, int4):
// up to kQuantizedGemvRows tokens the grouped rows go through GEMVs that read the quantized
// weights (bf16); past that (prefill) each int8 projection is one grouped GEMM that converts the
// weights in its main loop (bf16), and otherwise the experts are dequantized a few at a time
// into a scratch of T that the grouped GEMM (or, without one, a GEMM per expert) reads. Neither waits for the host, so a
// decode step runs as a CUDA graph and prefill chunks queue without a gap. The float32 checking
// mode (and widths not in whole 16-byte pieces) has no grouped GEMM: it reads the group sizes
// back and runs a cuBLAS GEMM per expert.
#pragma once

#include <cstdint>
#include <vector>

#include "lightdesk/cuda_device.h"

namespace lightdesk {

struct MoeShape {
  std::int64_t hidden = 0;
  std::int64_t width = 0;  // expert intermediate size
  int experts = 0;         // the router's
  int top_k = 0;
  int resident = 0;        // experts in the weights' block (pruned: the kept ones); 0: all
  int held() const { return resident > 0 ? resident : experts; }
  bool operator==(const MoeShape&) const = default;
};

// One layer's weights on the device: the experts as T, or quantized (then gate_up and down are
// null, and quantized_gate_up / quantized_down hold the same matrices in an int format). An
// expert-parallel rank holds experts first_expert.. first_expert + held - 1 of the router's
// (held < experts; as T only): every token is routed over all of them, and only the held
// experts' shares are computed and summed (the other ranks add theirs).
template <typename T>
struct MoeWeights {
  const float* router = nullptr;  // [experts, hidden], float32
  const T* gate_up = nullptr;     // per held expert [2 * width, hidden]: the w1 rows, then the w3 rows
  const T* down = nullptr;        // per held expert [hidden, width]
  cuda::QuantizedExperts quantized_gate_up;  // rows 2 * width, cols hidden
  cuda::QuantizedExperts quantized_down;     // rows hidden, cols width
  int first_expert = 0;
  int held = -1;  // -1: every expert

  bool quantized() const { return quantized_gate_up.packed != nullptr; }
  // Pruned experts (or null): float32 [experts], 0 or -inf; int32 [experts], each kept expert's
  // slot in the block (gate_up and down hold MoeShape::resident experts).
  const float* expert_mask = nullptr;
  const std::int32_t* expert_slots = nullptr;
};

// Device buffers of one MoE pass, for up to `rows` tokens.
struct MoeBuffers {
  std::int64_t rows = 0;
  DeviceBuffer router_in, router_logits, expert_ids, expert_weights, slot_rows, first_row, group_cursor;
  DeviceBuffer expert_in, gate_up, expert_act, expert_out, grouped_gemm_workspace;
};

template <typename T>
class MoeRunner {
 public:
  MoeRunner(const DeviceContext& device, const MoeShape& shape) : device_(device), shape_(shape) {}

  // Sizes the buffers for up to `rows` tokens; on failure the previous buffers stay.
  void reserve(std::int64_t rows);
  // out[rows, hidden] = Σ_k weight_k · w2(silu(w1 x) ⊙ w3 x) over each row's top-k experts,
  // summed in increasing expert order. Only a run without a grouped GEMM past kDeviceRoutedRows
  // waits for the device (the GEMM sizes come to the host). router_logits, when not null, gets
  // the router's float32 logits [rows, experts] before the mask; with `out` null only those.
  void run(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out, float* router_logits = nullptr);

  static constexpr std::int64_t kDeviceRoutedRows = 4;
  static constexpr std::int64_t kQuantizedGemvRows = 64;
  // The dequantized experts' scratch holds as many whole experts' gate/up matrices as fit in
  // this (one at least).
  static constexpr std::size_t kDequantizedBytes = std::size_t{2} << 30;

 private:
  void run_device_routed(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out);
  // The grouped rows' products over the first `groups` groups (the held experts): expert_in →
  // gate_up → expert_act → expert_out.
  void run_grouped(const MoeWeights<T>& weights, std::int64_t slots, int groups);
  // The grouped rows of experts first_expert .. + count: out = in · W_eᵀ, `weights` those
  // experts' [out_width, in_width] matrices one after another.
  void project(const T* in, std::int64_t in_width, const T* weights, int first_expert, int count,
               std::int64_t out_width, T* out, std::int64_t slots);
  // project over the first `experts` experts of `weights` (T or quantized, dequantized in chunks).
  void project_all(const T* in, std::int64_t in_width, const T* weights, const cuda::QuantizedExperts& quantized,
                   int experts, std::int64_t out_width, T* out, std::int64_t slots);
  void run_quantized_gemv(const MoeWeights<T>& weights, std::int64_t rows);
  // Whether run_grouped has a grouped GEMM: bf16, widths in whole 16-byte pieces.
  bool has_grouped_gemm() const;

  const DeviceContext& device_;
  MoeShape shape_;
  MoeBuffers buffers_;
  std::vector<std::int32_t> host_first_row_;  // without a grouped GEMM
  DeviceBuffer int8_gemm_workspace_;          // int8 experts in prefill, bf16
  DeviceBuffer dequantized_;                  // other quantized experts in prefill
};

extern template class MoeRunner<float>;
extern template class MoeRunner<cuda::bf16>;

}  // namespace lightdesk
