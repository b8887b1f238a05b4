// The engine's way to the CUDA backend: liblightdesk_cuda.so (cuda_plugin.h), loaded at the first
// use; where it is missing or does not load, the reason why there is no CUDA.
#include "cuda_plugin.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>

#include "lightdesk/cuda_plugin_symbol.h"
#include "lightdesk/installed_files.h"

namespace lightdesk {
namespace {

struct LoadedPlugin {
  void* library = nullptr;
  const CudaPlugin* table = nullptr;
  std::string failure;  // why table is null
};

// $LIGHTDESK_CUDA_PLUGIN, else the installed plugin beside the programs, else the loader's path
// (a build tree's programs have the plugin's folder in their run path).
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
    const std::string error = dlerror();
    // The plugin itself not found (not a CUDA library it needs: that is a failure to load it).
    if (path == kCudaPluginFile && error.starts_with(path + ": cannot open shared object file"))
      return {nullptr, nullptr, std::string(kCudaPluginFile) + " is not installed (the lightdesk-cuda package)"};
    return {nullptr, nullptr, path + " cannot be loaded: " + error};
  }
  const auto entry = reinterpret_cast<const CudaPlugin* (*)(int)>(dlsym(library, "lightdesk_cuda_plugin"));
  if (!entry) return {library, nullptr, path + " is not a Lightdesk plugin (no lightdesk_cuda_plugin)"};
  const CudaPlugin* table = entry(kCudaPluginAbiVersion);
  if (!table)
    return {library, nullptr,
            path + " is from another Lightdesk version (it refused plugin interface " +
                std::to_string(kCudaPluginAbiVersion) + ")"};
  return {library, table, {}};
}

// Loaded at the first use, once per process, as the dynamic loader keeps a library once anyway.
const LoadedPlugin& plugin() {
  static const LoadedPlugin loaded = load_plugin();
  return loaded;
}

}  // namespace

namespace cuda_plugin {

std::string unavailable_reason() {
  const LoadedPlugin& loaded = plugin();
  return loaded.table ? loaded.table->unavailable_reason() : loaded.failure;
}

std::vector<GpuDevice> devices() {
  const LoadedPlugin& loaded = plugin();
  return loaded.table ? loaded.table->devices() : std::vector<GpuDevice>{};
}

std::unique_ptr<ComputeBackend> make_backend(const ModelConfig& config, const WeightMap& weights,
                                             const ModelOptions& options, const ExpertLoad& experts,
                                             const std::function<void(std::uint64_t)>& bytes_loaded,
                                             ExpertLoadResult* expert_result) {
  const LoadedPlugin& loaded = plugin();
  if (!loaded.table) throw Error("the cuda backend is not available: " + loaded.failure);
  return loaded.table->make_backend(config, weights, options, experts, bytes_loaded, expert_result);
}

std::vector<OpsBackend> ops_backends() {
  const LoadedPlugin& loaded = plugin();
  return loaded.table ? loaded.table->ops_backends() : std::vector<OpsBackend>{};
}

}  // namespace cuda_plugin

void* cuda_plugin_symbol(const char* name) {
  const LoadedPlugin& loaded = plugin();
  if (!loaded.table) throw Error("the cuda backend is not available: " + loaded.failure);
  void* symbol = dlsym(loaded.library, name);
  if (!symbol) throw Error(std::string("the CUDA plugin has no ") + name + " (it is from another Lightdesk build)");
  return symbol;
}

}  // namespace lightdesk
