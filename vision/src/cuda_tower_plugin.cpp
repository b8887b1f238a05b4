// The CUDA tower from the CUDA plugin the engine loads (VisionModel picks CUDA only where the
// engine found that plugin usable).
#include "lightdesk/cuda_plugin_symbol.h"
#include "vision_tower.h"

namespace lightdesk::vision {

std::unique_ptr<VisionTower> make_plugin_cuda_tower(const VisionConfig& config, const TowerWeights& weights,
                                                    bool float32, int device) {
  const auto entry = reinterpret_cast<const CudaVisionPlugin* (*)(int)>(
      cuda_plugin_symbol("lightdesk_cuda_vision_plugin"));
  const CudaVisionPlugin* plugin = entry(kCudaVisionPluginAbiVersion);
  if (!plugin)
    throw Error("the CUDA plugin is from another Lightdesk version (it refused vision interface " +
                std::to_string(kCudaVisionPluginAbiVersion) + ")");
  return plugin->make_tower(config, weights, float32, device);
}

}  // namespace lightdesk::vision
