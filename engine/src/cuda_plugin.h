// The CUDA backend as a plugin: liblightdesk_cuda.so (the lightdesk-cuda package) exports
// lightdesk_cuda_plugin, which hands the engine this table of the entry points of cuda_backend.h.
// The engine never links CUDA: it loads the plugin at run time (cuda_plugin.cpp), so programs
// need no CUDA libraries and still run on the GPU where the plugin and CUDA are installed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "ops.h"

namespace lightdesk {

// Changes whenever CudaPlugin, ComputeBackend or the types they pass change: the plugin refuses
// another version (programs and plugin come from the same build).
inline constexpr int kCudaPluginAbiVersion = 8;

struct CudaPlugin {
  std::string (*unavailable_reason)();
  std::vector<GpuDevice> (*devices)();
  std::unique_ptr<ComputeBackend> (*make_backend)(const ModelConfig& config, const WeightMap& weights,
                                                  const ModelOptions& options, const ExpertLoad& experts,
                                                  const std::function<void(std::uint64_t)>& bytes_loaded,
                                                  ExpertLoadResult* expert_result);
  std::vector<OpsBackend> (*ops_backends)();
};

// The plugin's file name, and the environment variable that may name another file.
inline constexpr const char* kCudaPluginFile = "liblightdesk_cuda.so";
inline constexpr const char* kCudaPluginVariable = "LIGHTDESK_CUDA_PLUGIN";

// The entry points as the engine reaches them: through the plugin, loaded once per process at the
// first call. Without a plugin that loads, unavailable_reason() says why, devices() and
// ops_backends() are empty and make_backend throws.
namespace cuda_plugin {
std::string unavailable_reason();
std::vector<GpuDevice> devices();
std::unique_ptr<ComputeBackend> make_backend(const ModelConfig& config, const WeightMap& weights,
                                             const ModelOptions& options, const ExpertLoad& experts,
                                             const std::function<void(std::uint64_t)>& bytes_loaded,
                                             ExpertLoadResult* expert_result);
std::vector<OpsBackend> ops_backends();
}  // namespace cuda_plugin

}  // namespace lightdesk

// The one symbol a plugin exports for the engine: its table, or nullptr when `abi_version` is not
// its own. (Libraries above the engine find their own entries through lightdesk/cuda_plugin_symbol.h.)
extern "C" const lightdesk::CudaPlugin* lightdesk_cuda_plugin(int abi_version);
