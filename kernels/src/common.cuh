// Helpers shared by the kernel sources.
#pragma once

#include <cstdint>
#include <string>

#include "lightdesk/cuda_ops.h"

namespace lightdesk::cuda {

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16_rn(v); }

constexpr int kThreads = 256;

inline unsigned grid_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t blocks = (n + threads - 1) / threads;
  // Grid-stride loops cover the rest past this many blocks.
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Explicit instantiations for the two activation types.
#define LIGHTDESK_FOR_EACH_ACTIVATION(MACRO) \
  MACRO(float)                               \
  MACRO(bf16)

}  // namespace lightdesk::cuda
