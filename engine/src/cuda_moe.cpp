#include "cuda_moe.h"

#include <algorithm>
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
void MoeRunner<T>::project(const T* in, std::int64_t in_width, const T* weights, int first_expert, int count,
                           std::int64_t out_width, T* out, std::int64_t slots) {
  MoeBuffers& b = buffers_;
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    if (has_grouped_gemm()) {
      cuda::grouped_linear(in, b.first_row.as<std::int32_t>() + first_expert, count, slots,
                           in_width, weights, out_width, out, device_.launch_limits(),
                           b.grouped_gemm_workspace.as<void>(), b.grouped_gemm_workspace.bytes(), device_.stream());
      return;
    }
  }
  // No grouped GEMM for this type or these widths: a cuBLAS GEMM per expert, sized on the host
  // (host_first_row_, read back by run_grouped).
  for (int e = first_expert; e < first_expert + count; ++e) {
    const std::int64_t first = host_first_row_[e], n = host_first_row_[e + 1] - first;
    device_.linear(in + first * in_width, n, in_width, weights + (e - first_expert) * out_width * in_width, out_width,
                   out + first * out_width);
  }
}

template <typename T>
void MoeRunner<T>::project_all(const T* in, std::int64_t in_width, const T* weights,
                               const cuda::QuantizedExperts& quantized, int experts, std::int64_t out_width, T* out,
                               std::int64_t slots) {
  const int E = experts;
  if (!quantized.packed) {
    project(in, in_width, weights, 0, E, out_width, out, slots);
    return;
  }
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    if (has_grouped_gemm() && quantized.format == cuda::QuantFormat::Int8) {
      // The weights converted in the GEMM's main loop.
      const cuda::LaunchLimits& limits = device_.launch_limits();
      const std::size_t bytes = cuda::int8_grouped_linear_workspace_bytes(quantized, E, limits);
      if (int8_gemm_workspace_.bytes() < bytes) int8_gemm_workspace_ = DeviceBuffer(bytes, "the int8 grouped GEMM");
      cuda::int8_grouped_linear(in, buffers_.first_row.as<std::int32_t>(), E, quantized, out, limits,
                                int8_gemm_workspace_.as<void>(), int8_gemm_workspace_.bytes(), device_.stream());
      return;
    }
  }
  // The experts dequantized a few at a time into a scratch that the grouped GEMM (or, without
  // one, a GEMM per expert) reads. Sized for the gate/up matrices, the larger of the two.
  const auto expert_bytes = static_cast<std::size_t>(2 * shape_.width * shape_.hidden) * sizeof(T);
  const int chunk = static_cast<int>(std::clamp<std::size_t>(kDequantizedBytes / expert_bytes, 1, E));
  if (dequantized_.bytes() == 0)
    dequantized_ = DeviceBuffer(static_cast<std::size_t>(chunk) * expert_bytes, "the dequantized experts");
  // Stream order: a chunk's dequantization waits for the previous chunk's GEMM.
  for (int first = 0; first < E; first += chunk) {
    const int count = std::min(chunk, E - first);
    cuda::dequantize_experts(quantized, first, count, dequantized_.as<T>(), device_.stream());
    project(in, in_width, dequantized_.as<T>(), first, count, out_width, out, slots);
  }
}

template <typename T>
void MoeRunner<T>::run_grouped(const MoeWeights<T>& weights, std::int64_t slots, int groups) {
  const std::int64_t H = shape_.hidden, I = shape_.width;
  MoeBuffers& b = buffers_;
  if (!has_grouped_gemm()) {
    host_first_row_.resize(static_cast<std::size_t>(groups) + 1);
    device_.download(host_first_row_.data(), b.first_row.as<std::int32_t>(),
                     host_first_row_.size() * sizeof(std::int32_t));
  }
  project_all(b.expert_in.as<T>(), H, weights.gate_up, weights.quantized_gate_up, groups, 2 * I, b.gate_up.as<T>(),
              slots);
  cuda::swiglu(b.gate_up.as<T>(), slots, I, b.expert_act.as<T>(), device_.stream());
  project_all(b.expert_act.as<T>(), I, weights.down, weights.quantized_down, groups, H, b.expert_out.as<T>(), slots);
}

template <typename T>
void MoeRunner<T>::run_quantized_gemv(const MoeWeights<T>& weights, std::int64_t rows) {
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    const std::int64_t slots = rows * shape_.top_k;
    const int E = shape_.experts;
    MoeBuffers& b = buffers_;
    const auto* first_row = b.first_row.as<std::int32_t>();
    const cuda::LaunchLimits& limits = device_.launch_limits();
    // A token goes to an expert once: an expert has at most `rows` of the grouped rows. The down
    // product applies the SwiGLU as it loads the gate/up rows.
    cuda::quantized_expert_gemv(weights.quantized_gate_up, first_row, E, b.expert_in.as<T>(), false, slots, rows,
                                b.gate_up.as<T>(), limits, device_.stream());
    cuda::quantized_expert_gemv(weights.quantized_down, first_row, E, b.gate_up.as<T>(), true, slots, rows,
                                b.expert_out.as<T>(), limits, device_.stream());
  } else {
    (void)weights;
    (void)rows;
    throw Error("internal: the quantized expert GEMV takes bf16 activations");
  }
}

template <typename T>
void MoeRunner<T>::run(const MoeWeights<T>& weights, const T* x, std::int64_t rows, T* out, float* router_logits) {
  const std::int64_t H = shape_.hidden;
  const int E = shape_.experts, k = shape_.top_k;
  const cudaStream_t stream = device_.stream();
  reserve(rows);
  MoeBuffers& b = buffers_;
  // An expert-parallel rank holds a range of the router's experts; otherwise the block holds
  // all of them, or the kept ones (pruned: the routes name their slots).
  const bool subset = weights.held >= 0 && weights.held < E;
  const int held = subset ? weights.held : shape_.held();
  if (subset && weights.quantized()) throw Error("internal: a block of quantized experts on one rank");
  if (subset && weights.expert_slots) throw Error("internal: pruned experts on an expert-parallel rank");
  // A rank without experts adds nothing; its router runs only where its logits are asked for
  // (a model of the first layer's router holds no expert at all).
  if (held == 0 && out)
    check(cudaMemsetAsync(out, 0, static_cast<std::size_t>(rows * H) * sizeof(T), stream), "MoE (no experts held)");
  if (held == 0 && !router_logits) return;

  // The router in float32: near-ties between experts must break as in the reference. Each row's
  // routes come in increasing expert order, the order the combine sums in.
  cuda::to_float(x, rows * H, b.router_in.as<float>(), stream);
  device_.linear(b.router_in.as<float>(), rows, H, weights.router, E, b.router_logits.as<float>());
  if (router_logits)
    cuda::check(cudaMemcpyAsync(router_logits, b.router_logits.as<float>(),
                                static_cast<std::size_t>(rows * E) * sizeof(float), cudaMemcpyDeviceToDevice, stream),
                "copying the router's logits");
  if (!out || held == 0) return;
  cuda::route_top_k(b.router_logits.as<float>(), rows, E, k, true, b.expert_ids.as<std::int32_t>(),
                    b.expert_weights.as<float>(), stream, weights.expert_mask, weights.expert_slots);
  if (rows <= kDeviceRoutedRows && !weights.quantized()) {
    // Another rank's slots run the held expert 0 at weight 0: the products stay finite, and
    // adding 0 leaves the combined sum as it is.
    if (subset)
      cuda::restrict_to_experts(b.expert_ids.as<std::int32_t>(), b.expert_weights.as<float>(), rows * k,
                                weights.first_expert, held, 0, stream);
    run_device_routed(weights, x, rows, out);
    return;
  }
  // Another rank's slots go to one group past the held experts, which is not computed: its
  // output rows are zeros, at weight 0.
  if (subset) {
    cuda::restrict_to_experts(b.expert_ids.as<std::int32_t>(), b.expert_weights.as<float>(), rows * k,
                              weights.first_expert, held, held, stream);
    check(cudaMemsetAsync(b.expert_out.as<T>(), 0, static_cast<std::size_t>(rows * k * H) * sizeof(T), stream),
          "MoE (other ranks' slots)");
  }
  cuda::group_by_expert(b.expert_ids.as<std::int32_t>(), rows, k, subset ? held + 1 : held, x, H,
                        b.first_row.as<std::int32_t>(), b.slot_rows.as<std::int32_t>(), b.expert_in.as<T>(),
                        b.group_cursor.as<std::int32_t>(), stream);
  if (weights.quantized() && std::is_same_v<T, cuda::bf16> && rows <= kQuantizedGemvRows)
    run_quantized_gemv(weights, rows);
  else
    run_grouped(weights, rows * k, held);
  cuda::combine_experts(b.expert_out.as<T>(), b.slot_rows.as<std::int32_t>(), b.expert_weights.as<float>(), rows, k,
                        H, out, stream);
}

template class MoeRunner<float>;
template class MoeRunner<cuda::bf16>;

}  // namespace lightdesk
