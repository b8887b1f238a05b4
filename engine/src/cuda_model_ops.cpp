#include "cuda_model_ops.h"

#include "cuda_backend.h"

#include <type_traits>

namespace lightdesk {
namespace {

class DeviceTensorBuffer final : public TensorBuffer {
 public:
  DeviceTensorBuffer(ElementType type, std::int64_t count, const std::string& what)
      : type_(type), buffer_(static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * element_bytes(type), what) {}
  Tensor tensor() const override { return {buffer_.as<void>(), type_}; }

 private:
  ElementType type_;
  DeviceBuffer buffer_;
};

cuda::Position position(StepPosition p) {
  return p.on_device ? cuda::Position(p.on_device, p.value) : cuda::Position(p.value);
}

template <typename T>
cuda::KvCacheView<T> kv_view(const KvTensor& kv) {
  return {kv.keys.as<T>(), kv.values.as<T>(), kv.page_table, kv.page_stride, kv.page_shift};
}

}  // namespace

template <typename T>
std::unique_ptr<TensorBuffer> CudaOps<T>::allocate(ElementType type, std::int64_t count, const std::string& what) {
  return std::make_unique<DeviceTensorBuffer>(type, count, what);
}

template <typename T>
float* CudaOps<T>::staging(std::int64_t count) {
  const auto bytes = static_cast<std::size_t>(count) * sizeof(float);
  if (bytes > staging_.bytes()) staging_ = DeviceBuffer(bytes, "the ops' conversion buffer");
  return staging_.as<float>();
}

template <typename T>
void CudaOps<T>::upload(const void* host, std::int64_t count, Tensor to) {
  if (to.type != ElementType::BF16) {
    device_.upload(to.data, host, static_cast<std::size_t>(count) * 4);
    return;
  }
  // Stream order keeps the staging buffer's next upload behind this conversion.
  float* values = staging(count);
  device_.upload(values, host, static_cast<std::size_t>(count) * sizeof(float));
  cuda::from_float(values, count, to.as<cuda::bf16>(), device_.stream());
}

template <typename T>
void CudaOps<T>::download(Tensor from, std::int64_t count, void* host) {
  if (from.type != ElementType::BF16) {
    device_.download(host, from.data, static_cast<std::size_t>(count) * 4);
    return;
  }
  float* values = staging(count);
  cuda::to_float(from.as<const cuda::bf16>(), count, values, device_.stream());
  device_.download(host, values, static_cast<std::size_t>(count) * sizeof(float));
}

template <typename T>
void CudaOps<T>::embed(Tensor table, Tensor tokens, std::int64_t rows, std::int64_t width, Tensor out) {
  cuda::embed_rows(table.as<const T>(), tokens.as<const std::int32_t>(), rows, width, out.as<T>(), device_.stream());
}

template <typename T>
void CudaOps<T>::rms_norm(Tensor x, std::int64_t rows, std::int64_t width, Tensor weight, float eps, Tensor y) {
  cuda::rms_norm(x.as<const T>(), rows, width, weight.as<const float>(), eps, y.as<T>(), device_.stream());
}

template <typename T>
void CudaOps<T>::embed_part(Tensor table, std::int64_t first_row, std::int64_t table_rows, Tensor tokens,
                            std::int64_t rows, std::int64_t width, Tensor out) {
  cuda::embed_part_rows(table.as<const T>(), first_row, table_rows, tokens.as<const std::int32_t>(), rows, width,
                        out.as<T>(), device_.stream());
}

template <typename T>
void CudaOps<T>::sum_squares(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums) {
  cuda::sum_squares(x.as<const T>(), rows, width, sums.as<float>(), device_.stream());
}

template <typename T>
void CudaOps<T>::rms_norm_by_sums(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums,
                                  std::int64_t norm_width, Tensor weight, float eps, Tensor y) {
  cuda::rms_norm_by_sums(x.as<const T>(), rows, width, sums.as<const float>(), norm_width, weight.as<const float>(),
                         eps, y.as<T>(), device_.stream());
}

template <typename T>
void CudaOps<T>::linear(Tensor x, std::int64_t rows, std::int64_t in, Tensor w, std::int64_t out, Tensor y) {
  if (x.type == ElementType::F32 && w.type == ElementType::F32 && y.type == ElementType::F32)
    device_.linear(x.as<const float>(), rows, in, w.as<const float>(), out, y.as<float>());
  else if (y.type == ElementType::F32)
    device_.linear(x.as<const T>(), rows, in, w.as<const T>(), out, y.as<float>());
  else
    device_.linear(x.as<const T>(), rows, in, w.as<const T>(), out, y.as<T>());
}

template <typename T>
void CudaOps<T>::silu(Tensor x, std::int64_t count) {
  cuda::silu(x.as<T>(), count, device_.stream());
}

template <typename T>
void CudaOps<T>::sigmoid_gate(Tensor x, Tensor gate, std::int64_t count) {
  cuda::sigmoid_gate(x.as<T>(), gate.as<const T>(), count, device_.stream());
}

template <typename T>
void CudaOps<T>::scaled_sum(Tensor a, float alpha, Tensor b, float beta, std::int64_t count, Tensor out) {
  cuda::scaled_sum(a.as<const T>(), alpha, b.as<const T>(), beta, count, out.as<T>(), device_.stream());
}

template <typename T>
void CudaOps<T>::copy(Tensor from, std::int64_t count, Tensor to) {
  check(cudaMemcpyAsync(to.data, from.data, static_cast<std::size_t>(count) * element_bytes(from.type),
                        cudaMemcpyDeviceToDevice, device_.stream()),
        "copy");
}

template <typename T>
void CudaOps<T>::rope(Tensor x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
                      StepPosition first) {
  cuda::rope(x.as<T>(), rows, heads, head_dim, rotary_dim, theta, position(first), device_.stream());
}

template <typename T>
void CudaOps<T>::lightning_attention(Tensor qkv, std::int64_t rows, int heads, int head_dim, Tensor slopes,
                                     Tensor state, Tensor out) {
  if (rows == 1)
    cuda::lightning_decode(qkv.as<const T>(), heads, head_dim, slopes.as<const float>(), state.as<float>(),
                           out.as<T>(), device_.stream());
  else
    cuda::lightning_prefill(qkv.as<const T>(), rows, heads, head_dim, slopes.as<const float>(), state.as<float>(),
                            out.as<T>(), device_.launch_limits(), device_.stream(), lightning_workspace_,
                            lightning_workspace_bytes_);
}

template <typename T>
void CudaOps<T>::write_kv(Tensor keys, Tensor values, std::int64_t rows, StepPosition first, std::int64_t kv_width,
                          const KvTensor& cache) {
  cuda::write_kv_rows<T, T>(keys.as<const T>(), values.as<const T>(), rows, position(first), kv_width,
                            kv_view<T>(cache), device_.stream());
}

template <typename T>
void CudaOps<T>::softmax_attention(Tensor q, std::int64_t rows, StepPosition first, const KvTensor& cache, int heads,
                                   int kv_heads, int head_dim, Tensor out) {
  cuda::softmax_attention(q.as<const T>(), rows, position(first), kv_view<T>(cache).as_const(), heads, kv_heads,
                          head_dim, out.as<T>(), device_.launch_limits(), device_.stream(), attention_workspace_,
                          attention_workspace_bytes_);
}

template <typename T>
MoeRunner<T>& CudaOps<T>::moe_runner(const MoeShape& shape) {
  if (moe_shape_ != shape) {
    moe_.reset();
    moe_.emplace(device_, shape);
    moe_shape_ = shape;
  }
  return *moe_;
}

template <typename T>
void CudaOps<T>::reserve_moe(const MoeShape& shape, std::int64_t rows) {
  moe_runner(shape).reserve(rows);
}

template <typename T>
void CudaOps<T>::moe(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) {
  const std::int64_t H = w.hidden, I = w.width;
  const auto E = static_cast<int>(w.experts.size());
  // The held experts (all; an expert-parallel rank's run of ids; or, pruned, the kept ones that
  // the mask and slots route to), one block that the grouped products read.
  const bool pruned = w.expert_slots.data != nullptr;
  if (pruned && !w.expert_mask.data) throw Error("internal: a MoE layer of pruned experts needs their mask and slots");
  int first = -1, last = -1, held = 0;
  const T* gate_up = nullptr;
  const T* down = nullptr;
  for (int e = 0; e < E; ++e) {
    const ExpertTensors& expert = w.experts[e];
    if (!expert.w1.data) continue;
    if (first < 0) {
      first = e;
      gate_up = expert.w1.as<const T>();
      down = expert.w2.as<const T>();
    }
    if (expert.w1.as<const T>() != gate_up + held * 2 * I * H ||
        expert.w3.as<const T>() != gate_up + held * 2 * I * H + I * H || expert.w2.as<const T>() != down + held * H * I)
      throw Error("internal: the CUDA ops need a layer's experts in one block (expert " + std::to_string(e) + ")");
    last = e;
    ++held;
  }
  if (E == 0 || (pruned && held == 0)) throw Error("internal: a MoE layer without experts");
  if (!pruned && held < E && held > 0 && last - first + 1 != held)
    throw Error("internal: the CUDA ops need a rank's experts to be consecutive (or pruned, with mask and slots)");
  MoeWeights<T> weights;
  weights.router = w.router.as<const float>();
  weights.gate_up = gate_up;
  weights.down = down;
  weights.expert_mask = w.expert_mask.as<const float>();
  weights.expert_slots = w.expert_slots.as<const std::int32_t>();
  if (!pruned) {
    weights.first_expert = first < 0 ? 0 : first;
    weights.held = held;
  }
  moe_runner({H, I, E, w.top_k, pruned && held < E ? held : 0})
      .run(weights, x.as<const T>(), rows, out.as<T>(), router_logits.as<float>());
}

namespace {

// One layer's quantized matrices of a kind (gate_up or down) as the kernels read them: expert
// e's packed rows, scales and offsets at e times one expert's from expert 0's.
cuda::QuantizedExperts device_experts(const std::vector<QuantizedExpertTensors>& experts,
                                      QuantizedView QuantizedExpertTensors::*matrix, const char* what) {
  const QuantizedView& first = experts.front().*matrix;
  const QuantLayout& layout = first.layout;
  cuda::QuantizedExperts out;
  out.format = layout.dtype == ExpertDType::Int8 ? cuda::QuantFormat::Int8 : cuda::QuantFormat::Int4;
  out.rows = layout.rows;
  out.cols = layout.cols;
  out.packed = first.packed;
  out.row_scales = first.row_scales;
  out.group_scales = reinterpret_cast<const __half*>(first.group_scales);
  out.group_offsets = reinterpret_cast<const __half*>(first.group_offsets);
  const std::int64_t scales = layout.rows * layout.groups();
  for (std::size_t e = 0; e < experts.size(); ++e) {
    const QuantizedView& v = experts[e].*matrix;
    const auto n = static_cast<std::int64_t>(e);
    const bool in_block =
        v.layout.dtype == layout.dtype && v.layout.rows == layout.rows && v.layout.cols == layout.cols &&
        v.packed == first.packed + n * layout.packed_bytes() &&
        (layout.dtype == ExpertDType::Int8
             ? v.row_scales == first.row_scales + n * layout.rows
             : v.group_scales == first.group_scales + n * scales && v.group_offsets == first.group_offsets + n * scales);
    if (!in_block)
      throw Error(std::string("internal: the CUDA ops need a layer's quantized ") + what +
                  " matrices in one block (expert " + std::to_string(e) + ")");
  }
  return out;
}

}  // namespace

template <typename T>
void CudaOps<T>::quantized_moe(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) {
  const auto E = static_cast<int>(w.quantized.size());
  if (E == 0) throw Error("internal: a MoE layer without experts");
  MoeWeights<T> weights;
  weights.router = w.router.as<const float>();
  weights.quantized_gate_up = device_experts(w.quantized, &QuantizedExpertTensors::gate_up, "gate/up");
  weights.quantized_down = device_experts(w.quantized, &QuantizedExpertTensors::down, "down");
  // Pruned experts: masked in the routing; the quantized block holds them all.
  weights.expert_mask = w.expert_mask.as<const float>();
  moe_runner({w.hidden, w.width, E, w.top_k}).run(weights, x.as<const T>(), rows, out.as<T>(), router_logits.as<float>());
}

template class CudaOps<float>;
template class CudaOps<cuda::bf16>;

namespace {

// A context of its own under the ops (the base is built first).
struct OwnedContext {
  explicit OwnedContext(int device) : context(device) {}
  DeviceContext context;
};

template <typename T>
class StandaloneCudaOps final : private OwnedContext, public CudaOps<T> {
 public:
  explicit StandaloneCudaOps(int device) : OwnedContext(device), CudaOps<T>(context) {}
};

}  // namespace

std::vector<OpsBackend> cuda_ops_backends() {
  auto unavailable = [] { return cuda_unavailable_reason(); };
  return {{"cuda-f32", unavailable, [] { return std::make_unique<StandaloneCudaOps<float>>(0); }},
          {"cuda-bf16", unavailable, [] { return std::make_unique<StandaloneCudaOps<cuda::bf16>>(0); }}};
}

}  // namespace lightdesk
