#include "cuda_moe.h"

#include <type_traits>

namespace lightdesk {

template <typename T>
bool MoeRunner<T>::has_grouped_gemm() const {
  return std::is_same_v<T, cuda::bf16> && shape_.hidden % 8 == 0 && shape_.width % 8 == 0;
}

template <typename T>
void MoeRunner<T>::reserve(std::int64_t rows) {
  if (rows <= buffers_.rows) return;
  const std::int64_t H = shape_.hidden, I = shape_.width, slots = rows * shape_.top_k;
  const int E = shape_.experts, R = shape_.held();
  const std::string what = "expert activations of " + std::to_string(rows) + " tokens";
  MoeBuffers b;
  b.rows = rows;
  b.router_in = device_array<float>(rows * H, what);
  b.router_logits = device_array<float>(rows * E, what);
  b.expert_ids = device_array<std::int32_t>(slots, what);
  b.expert_weights = device_array<float>(slots, what);
  b.slot_rows = device_array<std::int32_t>(slots, what);
  b.first_row = device_array<std::int32_t>(R + 1, what);
  b.group_cursor = device_array<std::int32_t>(R, what);
  b.expert_in = device_array<T>(slots * H, what);
  b.gate_up = device_array<T>(slots * 2 * I, what);
  b.expert_act = device_array<T>(slots * I, what);
  b.expert_out = device_array<T>(slots * H, what);
  // The grouped GEMM's workspace depends on the expert count alone.
  if (has_grouped_gemm() && buffers_.grouped_gemm_workspace.bytes() == 0)
    b.grouped_gemm_workspace = DeviceBuffer(cuda::grouped_linear_workspace_bytes(R, device_.launch_limits()),
                                                 "the experts' grouped GEMM");
  else
    b.grouped_gemm_workspace = std::move(buffers_.grouped_gemm_workspace);
  buffers_ = std::move(b);
}

template <typename T>
void MoeRunner<T>::run_device_routed(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out) {
  const std::int64_t H = shape_.hidden, I = shape_.width, slots = rows * shape_.top_k;
  const cudaStream_t stream = device_.stream();
  MoeBuffers& b = buffers_;
  const auto* ids = b.expert_ids.as<std::int32_t>();
  // Slot r·k + i holds row r's i-th expert in increasing id order, so combine_experts sums in
  // increasing expert order, as on the grouped path. The down product applies the SwiGLU as it
  // loads the gate/up row.
  const cuda::LaunchLimits& limits = device_.launch_limits();
  cuda::expert_gemv(weights.gate_up, 2 * I, H, ids, x, false, slots, shape_.top_k, b.gate_up.as<T>(), limits, stream);
  cuda::expert_gemv(weights.down, H, I, ids, b.gate_up.as<T>(), true, slots, 1, b.expert_out.as<T>(), limits, stream);
  cuda::combine_experts(b.expert_out.as<T>(), nullptr, b.expert_weights.as<float>(), rows, shape_.top_k, H, out,
                        stream);
}

template <typename T>
void MoeRunner<T>::run_grouped(const MoeWeights<T>& weights, std::int64_t slots) {
  const std::int64_t H = shape_.hidden, I = shape_.width;
  const int E = shape_.held();  // the block's experts: the grouping's
  const cudaStream_t stream = device_.stream();
  MoeBuffers& b = buffers_;
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    if (has_grouped_gemm()) {
      const auto* first_row = b.first_row.as<std::int32_t>();
      const cuda::LaunchLimits& limits = device_.launch_limits();
      cuda::grouped_linear(b.expert_in.as<T>(), first_row, E, slots, H, weights.gate_up, 2 * I, b.gate_up.as<T>(),
                           limits, b.grouped_gemm_workspace.as<void>(), b.grouped_gemm_workspace.bytes(), stream);
      cuda::swiglu(b.gate_up.as<T>(), slots, I, b.expert_act.as<T>(), stream);
      cuda::grouped_linear(b.expert_act.as<T>(), first_row, E, slots, I, weights.down, H, b.expert_out.as<T>(),
                           limits, b.grouped_gemm_workspace.as<void>(), b.grouped_gemm_workspace.bytes(), stream);
      return;
    }
  }
  // No grouped GEMM for this type or these widths: a cuBLAS GEMM per expert, sized on the host.
  host_first_row_.resize(static_cast<std::size_t>(E) + 1);
  device_.download(host_first_row_.data(), b.first_row.as<std::int32_t>(),
                   host_first_row_.size() * sizeof(std::int32_t));
  for (int e = 0; e < E; ++e) {
    const std::int64_t first = host_first_row_[e], n = host_first_row_[e + 1] - first;
    device_.linear(b.expert_in.as<T>() + first * H, n, H, weights.gate_up + e * 2 * I * H, 2 * I,
                   b.gate_up.as<T>() + first * 2 * I);
  }
  cuda::swiglu(b.gate_up.as<T>(), slots, I, b.expert_act.as<T>(), stream);
  for (int e = 0; e < E; ++e) {
    const std::int64_t first = host_first_row_[e], n = host_first_row_[e + 1] - first;
    device_.linear(b.expert_act.as<T>() + first * I, n, I, weights.down + e * H * I, H,
                   b.expert_out.as<T>() + first * H);
  }
}

template <typename T>
void MoeRunner<T>::run(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out, float* router_logits) {
  const std::int64_t H = shape_.hidden;
  const int E = shape_.experts, k = shape_.top_k;
  const cudaStream_t stream = device_.stream();
  reserve(rows);
  MoeBuffers& b = buffers_;

  // The router in float32: near-ties between experts must break as in the reference. Each row's
  // routes come in increasing expert order, the order the combine sums in.
  cuda::to_float(x, rows * H, b.router_in.as<float>(), stream);
  device_.linear(b.router_in.as<float>(), rows, H, weights.router, E, b.router_logits.as<float>());
  if (router_logits)
    cuda::check(cudaMemcpyAsync(router_logits, b.router_logits.as<float>(),
                                static_cast<std::size_t>(rows * E) * sizeof(float), cudaMemcpyDeviceToDevice, stream),
                "copying the router's logits");
  if (!out) return;
  cuda::route_top_k(b.router_logits.as<float>(), rows, E, k, true, b.expert_ids.as<std::int32_t>(),
                    b.expert_weights.as<float>(), stream, weights.expert_mask, weights.expert_slots);
  if (rows <= kDeviceRoutedRows) {
    run_device_routed(weights, x, rows, out);
    return;
  }
  cuda::group_by_expert(b.expert_ids.as<std::int32_t>(), rows, k, shape_.held(), x, H, b.first_row.as<std::int32_t>(),
                        b.slot_rows.as<std::int32_t>(), b.expert_in.as<T>(), b.group_cursor.as<std::int32_t>(),
                        stream);
  run_grouped(weights, rows * k);
  cuda::combine_experts(b.expert_out.as<T>(), b.slot_rows.as<std::int32_t>(), b.expert_weights.as<float>(), rows, k,
                        H, out, stream);
}

template class MoeRunner<float>;
template class MoeRunner<cuda::bf16>;

}  // namespace lightdesk
