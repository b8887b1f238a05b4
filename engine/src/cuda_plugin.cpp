// The CUDA entry points of a build without CUDA code (LIGHTDESK_WITH_CUDA=OFF): they forward to
// the CUDA plugin (cuda_plugin.h) when it loads, and otherwise say why there is no CUDA.
#include "cuda_plugin.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>

#include "cuda_backend.h"
#include "lightdesk/installed_files.h"

namespace lightdesk {
namespace {

struct LoadedPlugin {
  const CudaPlugin* table = nullptr;
  std::string failure;  // why table is null
};

// $LIGHTDESK_CUDA_PLUGIN, else the installed plugin beside the programs, else the loader's path.
std::string plugin_path() {
  if (const char* path = std::getenv(kCudaPluginVariable); path && *path) return path;
  if (const auto directory = installed::plugin_directory(); !directory.empty()) {
    const auto installed = directory / kCudaPluginFile;
    std::error_code error;
    if (std::filesystem::is_regular_file(installed, error)) return installed.string();
  }
  return kCudaPluginFile;
}

LoadedPlugin load_plugin() {
  const std::string path = plugin_path();
  // Never closed: backends made by the plugin may live until the process ends.
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char* error = dlerror();
    if (path == kCudaPluginFile && std::string(error).find("cannot open shared object file") != std::string::npos)
      return {nullptr, std::string(kCudaPluginFile) + " is not installed (the lightdesk-cuda package)"};
    return {nullptr, path + " cannot be loaded: " + error};
  }
  const auto entry = reinterpret_cast<const CudaPlugin* (*)(int)>(dlsym(library, "lightdesk_cuda_plugin"));
  if (!entry) return {nullptr, path + " is not a Lightdesk plugin (no lightdesk_cuda_plugin)"};
  const CudaPlugin* table = entry(kCudaPluginAbiVersion);
  if (!table)
    return {nullptr, path + " is from another Lightdesk version (it refused plugin interface " +
                         std::to_string(kCudaPluginAbiVersion) + ")"};
  return {table, {}};
}

// Loaded at the first use, once per process, as the dynamic loader keeps a library once anyway.
const LoadedPlugin& plugin() {
  static const LoadedPlugin loaded = load_plugin();
  return loaded;
}

}  // namespace

std::string cuda_unavailable_reason() {
  const LoadedPlugin& loaded = plugin();
  return loaded.table ? loaded.table->unavailable_reason() : loaded.failure;
}

std::vector<GpuDevice> cuda_devices() {
  const LoadedPlugin& loaded = plugin();
  return loaded.table ? loaded.table->devices() : std::vector<GpuDevice>{};
}

std::unique_ptr<ComputeBackend> make_cuda_backend(const ModelConfig& config, const WeightMap& weights,
                                                  const ModelOptions& options, const ExpertLoad& experts,
                                                  const std::function<void(std::uint64_t)>& bytes_loaded,
                                                  ExpertLoadResult* expert_result) {
  const LoadedPlugin& loaded = plugin();
  if (!loaded.table) throw Error("the cuda backend is not available: " + loaded.failure);
  return loaded.table->make_backend(config, weights, options, experts, bytes_loaded, expert_result);
}

// The plugin's ops are not checked from here: a build with the CUDA code runs the per-op suite.
std::vector<OpsBackend> cuda_ops_backends() { return {}; }

}  // namespace lightdesk
