// query_launch_limits: what the launch planners need of the current device, asked once.
#include "lightdesk/cuda_ops.h"

namespace lightdesk::cuda {

// Each kernel source's part, for the kernels it sizes grids for: their occupancy, with their
// shared-memory limits raised first.
void query_attention_limits(LaunchLimits& limits);  // attention.cu
void query_lightning_limits(LaunchLimits& limits);  // lightning.cu
void query_moe_limits(LaunchLimits& limits);        // moe.cu
void query_quantized_moe_limits(LaunchLimits& limits);  // quantized_experts.cu

LaunchLimits query_launch_limits() {
  LaunchLimits limits;
  check(cudaGetDevice(&limits.device), "cudaGetDevice");
  const int device = limits.device;
  check(cudaDeviceGetAttribute(&limits.multiprocessors, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&limits.shared_bytes_per_multiprocessor, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                               device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&limits.reserved_shared_bytes_per_block, cudaDevAttrReservedSharedMemoryPerBlock, device),
        "cudaDeviceGetAttribute");
  query_attention_limits(limits);
  query_lightning_limits(limits);
  check(cudaDeviceGetAttribute(&limits.shared_bytes_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  query_moe_limits(limits);
  query_quantized_moe_limits(limits);
  return limits;
}

}  // namespace lightdesk::cuda
