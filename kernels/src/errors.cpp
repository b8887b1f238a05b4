// The kernels' error reporting, in plain C++ (the CUDA sources are C++17, core's
// headers C++20).
#include "lightdesk/cuda_ops.h"
#include "lightdesk/error.h"

namespace lightdesk::cuda {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                cudaGetErrorString(status) + ")");
}

void fail(const std::string& message) { throw Error(message); }

}  // namespace lightdesk::cuda
