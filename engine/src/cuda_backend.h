// The CUDA backend's entry points. cuda_backend.cpp implements them in builds with
// LIGHTDESK_WITH_CUDA; in builds without, cuda_plugin.cpp forwards them to the CUDA plugin.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "ops.h"

namespace lightdesk {

// Empty when a CUDA device can be used, otherwise why not (no CUDA in this build, no device).
std::string cuda_unavailable_reason();

// The usable CUDA devices, free memory measured on the current one (empty where
// cuda_unavailable_reason() is not).
std::vector<GpuDevice> cuda_devices();

// Loads the weights onto the GPU of single_gpu_device(options): bf16 by default, float32 when
// options.cuda_float32 is set. Synthetic weights (WeightMap::synthetic) are made on the device.
// `experts` says how the experts load (as make_cpu_backend's: quantized on the host or read
// from the quantized cache, then uploaded in core's layout); where they came from goes to
// `expert_result` when given.
std::unique_ptr<ComputeBackend> make_cuda_backend(const ModelConfig& config, const WeightMap& weights,
                                                  const ModelOptions& options, const ExpertLoad& experts,
                                                  const std::function<void(std::uint64_t)>& bytes_loaded,
                                                  ExpertLoadResult* expert_result = nullptr);

// How many times the decode graph of `sequence` (a CUDA backend's) has been captured: a
// generation of n tokens should take O(log n) captures (tests, benchmarks).
std::uint64_t cuda_decode_graph_captures(const SequenceState& sequence);


// The CUDA ops in both activation types, each on its own context of device 0 (empty without
// CUDA in the build): see ops_backends.
std::vector<OpsBackend> cuda_ops_backends();

}  // namespace lightdesk
