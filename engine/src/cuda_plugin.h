// The CUDA backend as a plugin: liblightdesk_cuda.so (the lightdesk-cuda package) exports
// lightdesk_cuda_plugin, which hands the engine this table of the entry points of cuda_backend.h.
// Builds without CUDA code load it at run time (cuda_plugin.cpp), so a package of them needs no
// CUDA libraries and still runs on the GPU where the plugin and CUDA are installed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

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
};

// The plugin's file name, and the environment variable that may name another file.
inline constexpr const char* kCudaPluginFile = "liblightdesk_cuda.so";
inline constexpr const char* kCudaPluginVariable = "LIGHTDESK_CUDA_PLUGIN";

}  // namespace lightdesk

// The one symbol a plugin exports: its table, or nullptr when `abi_version` is not its own.
extern "C" const lightdesk::CudaPlugin* lightdesk_cuda_plugin(int abi_version);
