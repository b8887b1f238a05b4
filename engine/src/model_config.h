// The model hyper-parameters read from config.json, in either checkpoint layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk {

// Which code the checkpoint was written for: it decides the tensor names and the slope formula.
enum class CheckpointLayout {
  Original,  // minimax_text_01 / minimax_m1 remote code (the released checkpoints)
  Native,    // transformers MiniMaxForCausalLM (model_type "minimax")
};

struct ResidualFactors {
  float alpha = 1.0f;  // multiplies the normed residual
  float beta = 1.0f;   // multiplies the sublayer output
};

// ModelShape (the public part) plus what only the backends need.
struct ModelConfig : ModelShape {
  CheckpointLayout layout = CheckpointLayout::Original;
  float rope_theta = 10000.0f;
  float rms_norm_eps = 1e-5f;
  ResidualFactors linear_attention, full_attention, mlp;
  bool tie_word_embeddings = false;
  // Prepended to every text tensor name: "language_model." in a MiniMax-VL-01 checkpoint, whose
  // text model is read from config.json's text_config (the vision weights are left to vision/).
  std::string weight_prefix;
  // config.json's torch_dtype ("bfloat16", "float32", ...; empty when absent): the dtype of the
  // checkpoint's tensors, for sizing one from its index alone.
  std::string torch_dtype;

  // The lightning output norm's eps: the released code builds it without an argument.
  static constexpr float kLightningNormEps = 1e-6f;
};

// Parses config.json text; `source` names the file in error messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source,
                               bool rope_full_head);
ModelConfig load_model_config(const std::filesystem::path& directory, bool rope_full_head);
// The model's first layer alone: what a backend of ModelPurpose::FirstLayerRouter loads and
// runs. Its weights and slopes are the whole model's first layer's (the slopes of layer 0 do not
// depend on the depth, in either layout's formula; a later layer's would).
ModelConfig first_layer_config(const ModelConfig& config);

}  // namespace lightdesk
