// The CUDA entry points of a build without CUDA (LIGHTDESK_WITH_CUDA=OFF).
#include "communicator.h"
#include "cuda_backend.h"

namespace lightdesk {

std::string cuda_unavailable_reason() { return "this build has no CUDA support (LIGHTDESK_WITH_CUDA=OFF)"; }

std::vector<GpuDevice> cuda_devices() { return {}; }

std::unique_ptr<ComputeBackend> make_cuda_backend(const ModelConfig&, const WeightMap&, const ModelOptions&,
                                                  const std::function<void(std::uint64_t)>&) {
  throw Error("the cuda backend is not available: " + cuda_unavailable_reason());
}

std::vector<OpsBackend> cuda_ops_backends() { return {}; }

std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>&, const std::vector<void*>&) {
  throw Error("NCCL is not available: " + cuda_unavailable_reason());
}

}  // namespace lightdesk
