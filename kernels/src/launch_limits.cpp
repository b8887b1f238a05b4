// query_launch_limits: what the launch planners need of the current device, asked once.
#include "lightdesk/cuda_ops.h"

namespace lightdesk::cuda {

// Each kernel source's part, for the kernels it sizes grids for: their occupancy, with their
// shared-memory limits raised first.
void query_attention_limits(LaunchLimits& limits);  // attention.cu
void query_lightning_limits(LaunchLimits& limits);  // lightning.cu

LaunchLimits query_launch_limits() {
  LaunchLimits limits;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&limits.multiprocessors, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute");
  query_attention_limits(limits);
  query_lightning_limits(limits);
  return limits;
}

}  // namespace lightdesk::cuda
