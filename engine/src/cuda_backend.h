// The CUDA backend's entry points (library lightdesk_engine_cuda, built with LIGHTDESK_WITH_CUDA).
// The engine reaches them through the CUDA plugin that holds them (cuda_plugin.h); the CUDA tests
// and the benchmark call them directly.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "communicator.h"
#include "ops.h"

namespace lightdesk {

// Empty when a CUDA device can be used, otherwise why not (no CUDA in this build, no device).
std::string cuda_unavailable_reason();

// The usable CUDA devices, free memory measured on the current one (empty where
// cuda_unavailable_reason() is not).
std::vector<GpuDevice> cuda_devices();

// Loads the weights onto the GPU of single_gpu_device(options): bf16 by default, float32 when
// options.cuda_float32 is set. Synthetic weights (WeightMap::synthetic) are made on the device.
// `experts` says how the experts load: read from the quantized cache and uploaded in core's
// layout, or quantized on the GPU from the checkpoint's values (cuda::quantize_experts, bit for
// bit the CPU backend's quantizer; the cache file is then written from the GPU's result); where
// they came from goes to `expert_result` when given. With options.tensor_parallel N > 1: make_cuda_parallel_backend
// over NCCL (bf16 or float32 experts only).
std::unique_ptr<ComputeBackend> make_cuda_backend(const ModelConfig& config, const WeightMap& weights,
                                                  const ModelOptions& options, const ExpertLoad& experts,
                                                  const std::function<void(std::uint64_t)>& bytes_loaded,
                                                  ExpertLoadResult* expert_result = nullptr);

// How the ranks of a tensor-parallel CUDA backend talk: NCCL, one rank per GPU of
// options.devices (the first N where none are named); or the device loopback, N simulated
// ranks on the one GPU of single_gpu_device(options) (tests of every layout on a one-GPU
// machine; no decode graphs, as its collectives wait on the host).
enum class CudaRankLink { Nccl, DeviceLoopback };

// The model split over options.tensor_parallel ranks (any N the layout allows, 1 included: the
// tensor-parallel path at world size 1), each rank a backend on its GPU holding only its slices
// of the weights (tensor_parallel_layout), a thread per rank for each pass. The ranks load at
// once, each reading only its parts of the checkpoint (read_weight_part). Decode steps are
// CUDA graphs with their NCCL calls captured in them when options.cuda_graphs is set and the
// link is NCCL.
std::unique_ptr<ComputeBackend> make_cuda_parallel_backend(const ModelConfig& config, const WeightMap& weights,
                                                           const ModelOptions& options, CudaRankLink link,
                                                           const std::function<void(std::uint64_t)>& bytes_loaded);

// The collectives a tensor-parallel CUDA backend's rank 0 has issued since it was made (every
// rank issues the same); empty for any other backend. Counted as issued: a replayed decode
// graph adds nothing, so count passes run without graphs.
std::optional<CollectiveCounts> cuda_collective_counts(const ComputeBackend& backend);

// How many times the decode graph of `sequence` (a CUDA backend's) has been captured: a
// generation of n tokens should take O(log n) captures (tests, benchmarks).
std::uint64_t cuda_decode_graph_captures(const SequenceState& sequence);

// The CUDA ops in both activation types, each on its own context of device 0 (each unavailable
// without a device): see ops_backends.
std::vector<OpsBackend> cuda_ops_backends();

}  // namespace lightdesk
