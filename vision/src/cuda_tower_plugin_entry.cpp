// liblightdesk_cuda.so's entry for the vision tower (vision_tower.h): make_cuda_tower.
#include "vision_tower.h"

extern "C" __attribute__((visibility("default"))) const lightdesk::vision::CudaVisionPlugin*
lightdesk_cuda_vision_plugin(int abi_version) {
  static const lightdesk::vision::CudaVisionPlugin table{lightdesk::vision::make_cuda_tower};
  return abi_version == lightdesk::vision::kCudaVisionPluginAbiVersion ? &table : nullptr;
}
