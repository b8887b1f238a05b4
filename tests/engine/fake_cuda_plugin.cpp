// A stand-in for liblightdesk_cuda.so, to test the engine's plugin loading without CUDA: one
// device, and a backend factory that fails with a message the test looks for. Built twice: as
// the current plugin interface, and (LIGHTDESK_FAKE_PLUGIN_OTHER_VERSION) as one that refuses it.
#include "src/cuda_plugin.h"

namespace {

std::string no_reason() { return {}; }

std::vector<lightdesk::GpuDevice> one_device() {
  lightdesk::GpuDevice device;
  device.name = "fake plugin GPU";
  device.total_bytes = 1ull << 30;
  return {device};
}

std::unique_ptr<lightdesk::ComputeBackend> no_backend(const lightdesk::ModelConfig&, const lightdesk::WeightMap&,
                                                      const lightdesk::ModelOptions&, const lightdesk::ExpertLoad&,
                                                      const std::function<void(std::uint64_t)>&,
                                                      lightdesk::ExpertLoadResult*) {
  throw lightdesk::Error("the fake plugin makes no backend");
}

const lightdesk::CudaPlugin table{no_reason, one_device, no_backend};

}  // namespace

extern "C" __attribute__((visibility("default"))) const lightdesk::CudaPlugin* lightdesk_cuda_plugin(
    int abi_version) {
#ifdef LIGHTDESK_FAKE_PLUGIN_OTHER_VERSION
  (void)abi_version;
  return nullptr;
#else
  return abi_version == lightdesk::kCudaPluginAbiVersion ? &table : nullptr;
#endif
}
