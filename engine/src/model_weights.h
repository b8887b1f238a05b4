// The model's weights as the CPU backend uses them: float32, row-major [out, in] like
// torch.nn.Linear, whatever the dtype and tensor naming of the checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model_config.h"
#include "safetensors.h"

namespace lightdesk {

// A float32 matrix or vector: points into the mapped file when the checkpoint stores aligned
// F32, else owns a converted copy.
class WeightTensor {
 public:
  WeightTensor() = default;
  WeightTensor(const TensorView& view, std::int64_t offset_elements, std::int64_t numel);
  const float* data() const { return data_; }
  std::int64_t numel() const { return numel_; }

 private:
  std::vector<float> owned_;
  const float* data_ = nullptr;
  std::int64_t numel_ = 0;
};

struct ExpertWeights {
  WeightTensor w1;  // [width, hidden], goes through SiLU
  WeightTensor w3;  // [width, hidden]
  WeightTensor w2;  // [hidden, width]
};

struct LayerWeights {
  LayerKind kind = LayerKind::Lightning;
  WeightTensor input_norm;      // [hidden]
  WeightTensor post_attn_norm;  // [hidden]
  // Lightning layers.
  WeightTensor qkv;          // [3 * heads * head_dim, hidden], per head [q | k | v]
  WeightTensor output_gate;  // [heads * head_dim, hidden]
  WeightTensor output_norm;  // [heads * head_dim]
  WeightTensor out_proj;     // [hidden, heads * head_dim]
  std::vector<float> slopes;  // [heads] decay rate per head
  // Softmax layers.
  WeightTensor q_proj;  // [heads * head_dim, hidden]
  WeightTensor k_proj;  // [kv_heads * head_dim, hidden]
  WeightTensor v_proj;  // [kv_heads * head_dim, hidden]
  WeightTensor o_proj;  // [hidden, heads * head_dim]
  // MoE.
  WeightTensor router;  // [experts, hidden]
  std::vector<ExpertWeights> experts;
};

struct ModelWeights {
  WeightTensor embed;    // [vocab, hidden]
  WeightTensor lm_head;  // [vocab, hidden]
  WeightTensor final_norm;
  std::vector<LayerWeights> layers;
};

// Where each weight of the model is in a checkpoint, with its shape checked against the config.
// Resolving needs only the headers; both CPU and GPU backends load from it.
struct TensorSlice {
  const TensorView* view = nullptr;
  std::int64_t offset = 0;  // elements into the tensor (fused expert tensors)
  std::int64_t numel = 0;
};

class WeightMap {
 public:
  WeightMap(const ModelConfig& config, const Checkpoint& checkpoint);
  // name: "embed", "lm_head", "final_norm" or "layers.L.<part>" as used by the backends.
  const TensorSlice& at(const std::string& name) const;
  std::uint64_t parameter_count() const { return parameter_count_; }
  const std::map<std::string, std::uint64_t>& bytes_per_dtype() const { return bytes_per_dtype_; }

 private:
  std::map<std::string, TensorSlice> slices_;
  std::uint64_t parameter_count_ = 0;
  std::map<std::string, std::uint64_t> bytes_per_dtype_;
};

// Per-head decay rates of a lightning layer, by the formula of the checkpoint's layout.
std::vector<float> lightning_slopes(const ModelConfig& config, int layer);

ModelWeights load_cpu_weights(const ModelConfig& config, const WeightMap& map,
                              const std::function<void(std::uint64_t)>& bytes_loaded);

}  // namespace lightdesk
