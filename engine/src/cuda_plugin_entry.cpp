// liblightdesk_cuda.so's entry for the engine (cuda_plugin.h): the CUDA backend's entry points.
#include "cuda_backend.h"
#include "cuda_plugin.h"

extern "C" __attribute__((visibility("default"))) const lightdesk::CudaPlugin* lightdesk_cuda_plugin(
    int abi_version) {
  static const lightdesk::CudaPlugin table{lightdesk::cuda_unavailable_reason, lightdesk::cuda_devices,
                                           lightdesk::make_cuda_backend, lightdesk::cuda_ops_backends};
  return abi_version == lightdesk::kCudaPluginAbiVersion ? &table : nullptr;
}
