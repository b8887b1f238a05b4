// The vision tower and projector behind VisionModel (model notes §6.2, §6.3): their weights as the
// checkpoint holds them, and the backends that run them (the CPU's float32 reference, CUDA).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "lightdesk/vision.h"
#include "lightdesk/safetensors.h"

namespace lightdesk::vision {

struct Affine {
  WeightTensor weight;
  WeightTensor bias;
};

struct EncoderLayer {
  Affine layer_norm1, q, k, v, out, layer_norm2, fc1, fc2;
};

// Float32 views into the checkpoint (or converted copies of its tensors).
struct TowerWeights {
  WeightTensor patch_embedding;     // [hidden, 3 * patch * patch] (the conv weight, no bias)
  WeightTensor class_embedding;     // [hidden]
  WeightTensor position_embedding;  // [patches² + 1, hidden]
  Affine pre_layernorm;
  std::vector<EncoderLayer> layers;  // only those up to the feature layer
  Affine projector1, projector2;
};

// The layers the features come from: hidden_states[feature_layer] counts the embeddings as 0.
int used_layers(const VisionConfig& config);

class VisionTower {
 public:
  virtual ~VisionTower() = default;
  // The most tiles one forward call takes.
  virtual std::int64_t max_tiles() const = 0;
  // Projected features [tiles, patches², text hidden] (class token dropped) of pixel values
  // [tiles, 3, image_size, image_size]. Calls may come from several threads.
  virtual void forward(const float* pixels, std::int64_t tiles, float* features) = 0;
};

// `weights` must outlive the tower.
std::unique_ptr<VisionTower> make_cpu_tower(const VisionConfig& config, const TowerWeights& weights, int threads);

// The tower on CUDA device `device` with its own copy of the weights: bf16 weights and
// activations (float32 accumulation), or float32 throughout when `float32` is set. In the CUDA
// plugin and the library lightdesk_vision_cuda (builds with CUDA), which the CUDA tests link.
std::unique_ptr<VisionTower> make_cuda_tower(const VisionConfig& config, const TowerWeights& weights, bool float32,
                                             int device);

// The CUDA plugin's entry for the vision tower (liblightdesk_cuda.so holds it beside the engine's
// CUDA backend): make_cuda_tower, for the interface version below.
inline constexpr int kCudaVisionPluginAbiVersion = 1;
struct CudaVisionPlugin {
  std::unique_ptr<VisionTower> (*make_tower)(const VisionConfig& config, const TowerWeights& weights, bool float32,
                                             int device);
};

// make_cuda_tower as VisionModel reaches it: through the CUDA plugin. Throws where it does not load.
std::unique_ptr<VisionTower> make_plugin_cuda_tower(const VisionConfig& config, const TowerWeights& weights,
                                                    bool float32, int device);

}  // namespace lightdesk::vision

// The plugin's exported vision entry: its table, or nullptr when `abi_version` is not its own.
extern "C" const lightdesk::vision::CudaVisionPlugin* lightdesk_cuda_vision_plugin(int abi_version);
