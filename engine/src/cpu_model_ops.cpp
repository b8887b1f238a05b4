// ModelOps on the CPU, over cpu_ops.h: every tensor is host memory, activations float32.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "lightdesk/cpu_ops.h"
#include "lightdesk/engine.h"
#include "expert_offload.h"
#include "ops.h"
#include "lightdesk/thread_pool.h"

namespace lightdesk {

const char* element_name(ElementType type) {
  switch (type) {
    case ElementType::F32: return "f32";
    case ElementType::BF16: return "bf16";
    case ElementType::I32: return "i32";
  }
  return "?";
}

const char* op_name(OpKind kind) {
  static constexpr std::array<const char*, kOpKinds> kNames = {
      "Transfer",    "Embed",     "RmsNorm", "Linear",           "Silu",    "SigmoidGate", "ScaledSum",
      "Copy",        "Rope",      "LightningAttention",          "WriteKv", "SoftmaxAttention", "Moe",
      "QuantizedMoe"};
  const auto index = static_cast<std::size_t>(kind);
  return index < kNames.size() ? kNames[index] : "?";
}

KvTensor contiguous_kv(Tensor keys, Tensor values, std::int64_t kv_width) {
  KvTensor kv;
  kv.keys = keys;
  kv.values = values;
  kv.page_stride = kv_width << kv.page_shift;
  return kv;
}

namespace {

class HostBuffer final : public TensorBuffer {
 public:
  HostBuffer(ElementType type, std::int64_t count)
      : type_(type), words_(static_cast<std::size_t>(std::max<std::int64_t>(count, 1))) {}
  Tensor tensor() const override { return {const_cast<std::uint32_t*>(words_.data()), type_}; }

 private:
  ElementType type_;
  std::vector<std::uint32_t> words_;  // float32 or int32: 4 bytes each
};

class CpuOps final : public ModelOps {
 public:
  explicit CpuOps(int threads) : pool_(threads) {}

  ElementType activation_type() const override { return ElementType::F32; }

  std::unique_ptr<TensorBuffer> allocate(ElementType type, std::int64_t count, const std::string& what) override {
    if (type == ElementType::BF16) throw Error("internal: the CPU ops keep no bf16 tensors (" + what + ")");
    return std::make_unique<HostBuffer>(type, count);
  }
  void upload(const void* host, std::int64_t count, Tensor to) override {
    std::memcpy(to.data, host, static_cast<std::size_t>(count) * 4);
  }
  void download(Tensor from, std::int64_t count, void* host) override {
    std::memcpy(host, from.data, static_cast<std::size_t>(count) * 4);
  }

  void embed(Tensor table, Tensor tokens, std::int64_t rows, std::int64_t width, Tensor out) override {
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(table.as<const float>() + std::int64_t{tokens.as<const std::int32_t>()[r]} * width, width,
                  out.as<float>() + r * width);
  }
  void rms_norm(Tensor x, std::int64_t rows, std::int64_t width, Tensor weight, float eps, Tensor y) override {
    cpu::rms_norm(x.as<const float>(), rows, width, weight.as<const float>(), eps, y.as<float>(), pool_);
  }
  void embed_part(Tensor table, std::int64_t first_row, std::int64_t table_rows, Tensor tokens, std::int64_t rows,
                  std::int64_t width, Tensor out) override {
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t row = std::int64_t{tokens.as<const std::int32_t>()[r]} - first_row;
      float* o = out.as<float>() + r * width;
      if (row >= 0 && row < table_rows)
        std::copy_n(table.as<const float>() + row * width, width, o);
      else
        std::fill_n(o, width, 0.0f);
    }
  }
  void sum_squares(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums) override {
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* v = x.as<const float>() + r * width;
      double sum = 0.0;
      for (std::int64_t c = 0; c < width; ++c) sum += double{v[c]} * v[c];
      sums.as<float>()[r] = static_cast<float>(sum);
    }
  }
  void rms_norm_by_sums(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums, std::int64_t norm_width,
                        Tensor weight, float eps, Tensor y) override {
    for (std::int64_t r = 0; r < rows; ++r) {
      // As cpu::rms_norm rounds its mean of squares, so that one rank gives its result.
      const float mean = static_cast<float>(double{sums.as<const float>()[r]} / static_cast<double>(norm_width));
      const float scale = 1.0f / std::sqrt(mean + eps);
      const float* v = x.as<const float>() + r * width;
      float* o = y.as<float>() + r * width;
      for (std::int64_t c = 0; c < width; ++c) o[c] = weight.as<const float>()[c] * (v[c] * scale);
    }
  }
  void linear(Tensor x, std::int64_t rows, std::int64_t in, Tensor w, std::int64_t out, Tensor y) override {
    cpu::linear(x.as<const float>(), rows, in, w.as<const float>(), out, y.as<float>(), pool_);
  }
  void silu(Tensor x, std::int64_t count) override {
    float* v = x.as<float>();
    pool_.parallel_for(blocks(count), [&](std::int64_t b) {
      cpu::silu(v + b * kBlock, std::min(count, (b + 1) * kBlock) - b * kBlock);
    });
  }
  void sigmoid_gate(Tensor x, Tensor gate, std::int64_t count) override {
    cpu::multiply_by_sigmoid(x.as<float>(), gate.as<const float>(), count);
  }
  void scaled_sum(Tensor a, float alpha, Tensor b, float beta, std::int64_t count, Tensor out) override {
    const float* av = a.as<const float>();
    const float* bv = b.as<const float>();
    float* o = out.as<float>();
    for (std::int64_t i = 0; i < count; ++i) o[i] = av[i] * alpha + bv[i] * beta;
  }
  void copy(Tensor from, std::int64_t count, Tensor to) override {
    std::memmove(to.data, from.data, static_cast<std::size_t>(count) * element_bytes(from.type));
  }
  void rope(Tensor x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
            StepPosition first) override {
    cpu::apply_rope(x.as<float>(), rows, heads, head_dim, rotary_dim, theta, host_position(first));
  }
  void lightning_attention(Tensor qkv, std::int64_t rows, int heads, int head_dim, Tensor slopes, Tensor state,
                           Tensor out) override {
    const std::span<const float> s(slopes.as<const float>(), static_cast<std::size_t>(heads));
    if (rows == 1)
      cpu::lightning_decode(qkv.as<const float>(), heads, head_dim, s, state.as<float>(), out.as<float>(), pool_);
    else
      cpu::lightning_prefill(qkv.as<const float>(), rows, heads, head_dim, s, kLightningBlock, state.as<float>(),
                             out.as<float>(), pool_);
  }
  void write_kv(Tensor keys, Tensor values, std::int64_t rows, StepPosition first, std::int64_t kv_width,
                const KvTensor& cache) override {
    const std::int64_t offset = contiguous_offset(cache, host_position(first), kv_width);
    const auto n = static_cast<std::size_t>(rows * kv_width);
    std::copy_n(keys.as<const float>(), n, cache.keys.as<float>() + offset);
    std::copy_n(values.as<const float>(), n, cache.values.as<float>() + offset);
  }
  void softmax_attention(Tensor q, std::int64_t rows, StepPosition first, const KvTensor& cache, int heads,
                         int kv_heads, int head_dim, Tensor out) override {
    (void)contiguous_offset(cache, 0, std::int64_t{kv_heads} * head_dim);
    cpu::softmax_attention(q.as<const float>(), rows, host_position(first), cache.keys.as<const float>(),
                           cache.values.as<const float>(), heads, kv_heads, head_dim, out.as<float>(), pool_);
  }
  void moe(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) override {
    if (w.offload) return offloaded_moe(w, x, rows, out, router_logits);
    experts_.clear();
    for (const ExpertTensors& e : w.experts)
      experts_.push_back({e.w1.as<const float>(), e.w3.as<const float>(), e.w2.as<const float>()});
    route_and_run(w, x, rows, out, router_logits, [&](std::size_t e) { return experts_[e]; });
  }
  // Each chosen expert's matrices dequantized into float32 (the rows spread over the pool), then
  // the float32 products: the reference for the GPU kernels, not a fast path.
  void quantized_moe(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) override {
    route_and_run(w, x, rows, out, router_logits, [&](std::size_t e) -> cpu::ExpertMatrices {
      const QuantizedExpertTensors& q = w.quantized[e];
      if (!q.gate_up.packed) return {};
      return dequantized(w, q);
    });
  }

 private:
  // Exact mode: each chosen expert from its slot, brought in from the store on a miss, then the
  // products the all-resident layer computes on the same values.
  void offloaded_moe(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) {
    ExpertOffload& offload = *w.offload;
    const int layer = w.offload_layer;
    const ExpertBytes& layout = offload.store().layout();
    if (out.data) offload.begin_step(layer);
    route_and_run(w, x, rows, out, router_logits, [&](std::size_t e) -> cpu::ExpertMatrices {
      const std::byte* expert = offload.bring_in(layer, static_cast<int>(e));
      if (layout.dtype != ExpertDType::BF16) return dequantized(w, layout.quantized(expert));
      return {reinterpret_cast<const float*>(layout.w1(expert)), reinterpret_cast<const float*>(layout.w3(expert)),
              reinterpret_cast<const float*>(layout.w2(expert))};
    });
  }
  cpu::ExpertMatrices dequantized(const MoeTensors& w, const QuantizedExpertTensors& q) {
    dequantize_rows(q.gate_up, dequantized_gate_up_);
    dequantize_rows(q.down, dequantized_down_);
    return {dequantized_gate_up_.data(), dequantized_gate_up_.data() + w.width * w.hidden, dequantized_down_.data()};
  }

  // The router (its logits to router_logits when set; only those without `out`), the pruned
  // experts' mask, the top k, and the chosen experts' products.
  void route_and_run(const MoeTensors& w, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits,
                     const std::function<cpu::ExpertMatrices(std::size_t)>& matrices) {
    const auto E = static_cast<int>(w.expert_count());
    const int k = w.top_k;
    router_.resize(static_cast<std::size_t>(rows * E));
    weights_.resize(static_cast<std::size_t>(rows * k));
    ids_.resize(weights_.size());
    cpu::linear(x.as<const float>(), rows, w.hidden, w.router.as<const float>(), E, router_.data(), pool_);
    if (router_logits.data) std::copy(router_.begin(), router_.end(), router_logits.as<float>());
    if (!out.data) return;
    if (w.expert_mask.data)
      for (std::int64_t r = 0; r < rows; ++r)
        for (int e = 0; e < E; ++e) router_[static_cast<std::size_t>(r * E + e)] += w.expert_mask.as<const float>()[e];
    cpu::route_top_k(router_.data(), rows, E, k, ids_.data(), weights_.data());
    cpu::moe_experts(x.as<const float>(), rows, w.hidden, w.width, w.expert_count(), matrices, k, ids_.data(),
                     weights_.data(), out.as<float>(), pool_);
  }
  void dequantize_rows(const QuantizedView& m, std::vector<float>& to) {
    to.resize(static_cast<std::size_t>(m.layout.rows * m.layout.cols));
    pool_.parallel_for(blocks(m.layout.rows, kDequantizeRows), [&](std::int64_t b) {
      for (std::int64_t r = b * kDequantizeRows; r < std::min(m.layout.rows, (b + 1) * kDequantizeRows); ++r)
        dequantize_row(m, r, to.data() + r * m.layout.cols);
    });
  }

  // Rows per block of the lightning prefill; any value gives the same result (up to rounding).
  static constexpr int kLightningBlock = 64;
  static constexpr std::int64_t kBlock = 1 << 14;
  static constexpr std::int64_t kDequantizeRows = 64;
  static std::int64_t blocks(std::int64_t count, std::int64_t block = kBlock) { return (count + block - 1) / block; }

  static std::int64_t host_position(StepPosition p) {
    if (p.on_device) throw Error("internal: the CPU ops take only positions the host knows");
    return p.value;
  }
  static std::int64_t contiguous_offset(const KvTensor& cache, std::int64_t position, std::int64_t kv_width) {
    if (cache.page_table || cache.page_stride != kv_width << cache.page_shift)
      throw Error("internal: the CPU ops take only contiguous K/V caches");
    return position * kv_width;
  }

  ThreadPool pool_;
  // The router's scratch, reused from call to call (a decode step allocates nothing).
  std::vector<float> router_, weights_;
  std::vector<int> ids_;
  std::vector<cpu::ExpertMatrices> experts_;
  // One chosen expert's matrices at a time, dequantized (kept, so that a decode step allocates nothing).
  std::vector<float> dequantized_gate_up_, dequantized_down_;
};

}  // namespace

std::unique_ptr<ModelOps> make_cpu_ops(int threads) { return std::make_unique<CpuOps>(threads); }

}  // namespace lightdesk
