#include "cuda_moe.h"

#include <numeric>

namespace lightdesk {

template <typename T>
void MoeRunner<T>::reserve(std::int64_t rows) {
  if (rows <= buffers_.rows) return;
  const std::int64_t H = shape_.hidden, I = shape_.width, slots = rows * shape_.top_k;
  const std::string what = "expert activations of " + std::to_string(rows) + " tokens";
  MoeBuffers b;
  b.rows = rows;
  b.router_in = device_array<float>(rows * H, what);
  b.router_logits = device_array<float>(rows * shape_.experts, what);
  b.expert_ids = device_array<std::int32_t>(slots, what);
  b.expert_weights = device_array<float>(slots, what);
  b.source_rows = device_array<std::int32_t>(slots, what);
  b.slot_rows = device_array<std::int32_t>(slots, what);
  b.expert_in = device_array<T>(slots * H, what);
  b.gate_up = device_array<T>(slots * 2 * I, what);
  b.expert_act = device_array<T>(slots * I, what);
  b.expert_out = device_array<T>(slots * H, what);
  std::vector<std::int32_t> order(static_cast<std::size_t>(slots));
  std::iota(order.begin(), order.end(), 0);
  b.slot_order = device_array<std::int32_t>(slots, what);
  device_.upload(b.slot_order.as<std::int32_t>(), order.data(), order.size() * sizeof(std::int32_t));
  device_.synchronize();
  buffers_ = std::move(b);
}

template <typename T>
void MoeRunner<T>::run_device_routed(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out) {
  const std::int64_t H = shape_.hidden, I = shape_.width, slots = rows * shape_.top_k;
  const cudaStream_t stream = device_.stream();
  MoeBuffers& b = buffers_;
  auto* ids = b.expert_ids.as<std::int32_t>();
  // Slot r·k + i holds row r's i-th expert in increasing id order: the combine then sums in
  // increasing expert order, as the grouped path does.
  cuda::order_routes_by_expert(ids, b.expert_weights.as<float>(), rows, shape_.top_k, stream);
  cuda::expert_gemv(weights.gate_up, 2 * I, H, ids, x, slots, shape_.top_k, b.gate_up.as<T>(), stream);
  cuda::swiglu(b.gate_up.as<T>(), slots, I, b.expert_act.as<T>(), stream);
  cuda::expert_gemv(weights.down, H, I, ids, b.expert_act.as<T>(), slots, 1, b.expert_out.as<T>(), stream);
  cuda::combine_experts(b.expert_out.as<T>(), b.slot_order.as<std::int32_t>(), b.expert_weights.as<float>(), rows,
                        shape_.top_k, H, out, stream);
}

template <typename T>
void MoeRunner<T>::run(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out) {
  const std::int64_t H = shape_.hidden, I = shape_.width;
  const int E = shape_.experts, k = shape_.top_k;
  const std::int64_t slots = rows * k;
  const cudaStream_t stream = device_.stream();
  reserve(rows);
  MoeBuffers& b = buffers_;

  // The router in float32: near-ties between experts must break as in the reference.
  cuda::to_float(x, rows * H, b.router_in.as<float>(), stream);
  device_.linear(b.router_in.as<float>(), rows, H, weights.router, E, b.router_logits.as<float>());
  cuda::route_top_k(b.router_logits.as<float>(), rows, E, k, b.expert_ids.as<std::int32_t>(),
                    b.expert_weights.as<float>(), stream);
  if (rows <= kDeviceRoutedRows) {
    run_device_routed(weights, x, rows, out);
    return;
  }

  // Permutation: the GEMM sizes are needed on the host, so the ids come back here; the token
  // rows are then grouped by expert (in row order within an expert).
  host_expert_ids_.resize(static_cast<std::size_t>(slots));
  device_.download(host_expert_ids_.data(), b.expert_ids.as<std::int32_t>(),
                   host_expert_ids_.size() * sizeof(std::int32_t));
  std::vector<std::int64_t> first_row(static_cast<std::size_t>(E) + 1, 0);
  for (std::int32_t id : host_expert_ids_) ++first_row[static_cast<std::size_t>(id) + 1];
  for (int e = 0; e < E; ++e) first_row[e + 1] += first_row[e];
  std::vector<std::int64_t> next = first_row;
  host_source_rows_.resize(static_cast<std::size_t>(slots));
  host_slot_rows_.resize(static_cast<std::size_t>(slots));
  for (std::int64_t slot = 0; slot < slots; ++slot) {
    const std::int64_t row = next[host_expert_ids_[slot]]++;
    host_source_rows_[row] = static_cast<std::int32_t>(slot / k);
    host_slot_rows_[slot] = static_cast<std::int32_t>(row);
  }
  device_.upload(b.source_rows.as<std::int32_t>(), host_source_rows_.data(),
                 host_source_rows_.size() * sizeof(std::int32_t));
  device_.upload(b.slot_rows.as<std::int32_t>(), host_slot_rows_.data(), host_slot_rows_.size() * sizeof(std::int32_t));
  cuda::gather_rows(x, b.source_rows.as<std::int32_t>(), slots, H, b.expert_in.as<T>(), stream);

  for (int e = 0; e < E; ++e) {
    const std::int64_t n = first_row[e + 1] - first_row[e];
    device_.linear(b.expert_in.as<T>() + first_row[e] * H, n, H, weights.gate_up + e * 2 * I * H, 2 * I,
                   b.gate_up.as<T>() + first_row[e] * 2 * I);
  }
  cuda::swiglu(b.gate_up.as<T>(), slots, I, b.expert_act.as<T>(), stream);
  for (int e = 0; e < E; ++e) {
    const std::int64_t n = first_row[e + 1] - first_row[e];
    device_.linear(b.expert_act.as<T>() + first_row[e] * I, n, I, weights.down + e * H * I, H,
                   b.expert_out.as<T>() + first_row[e] * H);
  }
  cuda::combine_experts(b.expert_out.as<T>(), b.slot_rows.as<std::int32_t>(), b.expert_weights.as<float>(), rows, k,
                        H, out, stream);
  // The host permutation buffers are reused by the next call: wait for the uploads.
  device_.synchronize();
}

template class MoeRunner<float>;
template class MoeRunner<cuda::bf16>;

}  // namespace lightdesk
