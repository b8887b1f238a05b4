// ModelOps on one CUDA device, over the kernels of cuda_ops.h and cuBLAS: tensors are device
// memory, activations T (bf16, or float32 in the checking mode). The ops queue work on the
// device context's stream and return at once; only downloads wait.
#pragma once

#include <optional>

#include "lightdesk/cuda_device.h"
#include "cuda_moe.h"
#include "ops.h"

namespace lightdesk {

template <typename T>
class CudaOps : public ModelOps {
 public:
  explicit CudaOps(const DeviceContext& device) : device_(device) {}

  // Workspaces the owner reserved for the next pass (a captured graph must not allocate); an
  // op without one takes memory in stream order.
  void use_workspaces(void* lightning, std::size_t lightning_bytes, void* attention, std::size_t attention_bytes) {
    lightning_workspace_ = lightning;
    lightning_workspace_bytes_ = lightning_bytes;
    attention_workspace_ = attention;
    attention_workspace_bytes_ = attention_bytes;
  }
  // Sizes the MoE buffers for passes of up to `rows` tokens of this shape, so that moe() does
  // not allocate.
  void reserve_moe(const MoeShape& shape, std::int64_t rows);

  ElementType activation_type() const override { return std::is_same_v<T, float> ? ElementType::F32 : ElementType::BF16; }
  std::unique_ptr<TensorBuffer> allocate(ElementType type, std::int64_t count, const std::string& what) override;
  void upload(const void* host, std::int64_t count, Tensor to) override;
  void download(Tensor from, std::int64_t count, void* host) override;

  void embed(Tensor table, Tensor tokens, std::int64_t rows, std::int64_t width, Tensor out) override;
  void rms_norm(Tensor x, std::int64_t rows, std::int64_t width, Tensor weight, float eps, Tensor y) override;
  void embed_part(Tensor table, std::int64_t first_row, std::int64_t table_rows, Tensor tokens, std::int64_t rows,
                  std::int64_t width, Tensor out) override;
  void sum_squares(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums) override;
  void rms_norm_by_sums(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums, std::int64_t norm_width,
                        Tensor weight, float eps, Tensor y) override;
  void linear(Tensor x, std::int64_t rows, std::int64_t in, Tensor w, std::int64_t out, Tensor y) override;
  void silu(Tensor x, std::int64_t count) override;
  void sigmoid_gate(Tensor x, Tensor gate, std::int64_t count) override;
  void scaled_sum(Tensor a, float alpha, Tensor b, float beta, std::int64_t count, Tensor out) override;
  void copy(Tensor from, std::int64_t count, Tensor to) override;
  void rope(Tensor x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
            StepPosition first) override;
  void lightning_attention(Tensor qkv, std::int64_t rows, int heads, int head_dim, Tensor slopes, Tensor state,
                           Tensor out) override;
  void write_kv(Tensor keys, Tensor values, std::int64_t rows, StepPosition first, std::int64_t kv_width,
                const KvTensor& cache) override;
  void softmax_attention(Tensor q, std::int64_t rows, StepPosition first, const KvTensor& cache, int heads,
                         int kv_heads, int head_dim, Tensor out) override;
  void moe(const MoeTensors& weights, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) override;
  void quantized_moe(const MoeTensors& weights, Tensor x, std::int64_t rows, Tensor out,
                     Tensor router_logits) override;

 private:
  MoeRunner<T>& moe_runner(const MoeShape& shape);
  // A float32 buffer of at least `count` values for conversions on the way in and out.
  float* staging(std::int64_t count);

  const DeviceContext& device_;
  void* lightning_workspace_ = nullptr;
  std::size_t lightning_workspace_bytes_ = 0;
  void* attention_workspace_ = nullptr;
  std::size_t attention_workspace_bytes_ = 0;
  std::optional<MoeShape> moe_shape_;
  std::optional<MoeRunner<T>> moe_;
  DeviceBuffer staging_;
};

extern template class CudaOps<float>;
extern template class CudaOps<cuda::bf16>;

}  // namespace lightdesk
