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

__device__ __forceinline__ float silu_f(float v) { return v / (1.0f + expf(-v)); }

// splitmix64: a counter-based generator, so every draw is independent of the launch shape.
__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The attention kernels hold a head in registers and shared memory sized for kMaxHeadDim.
inline void check_head_dim(int head_dim, const char* what) {
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    fail(std::string(what) + ": head_dim " + std::to_string(head_dim) + " is outside 1.." +
         std::to_string(kMaxHeadDim));
}

inline unsigned grid_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t blocks = (n + threads - 1) / threads;
  // Grid-stride loops cover the rest past this many blocks.
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}


// The caller's workspace when it holds `bytes`, else memory allocated and freed in stream order;
// running out of memory is an Error naming `what`, the bytes needed and the bytes free.
class StreamWorkspace {
 public:
  StreamWorkspace(std::size_t bytes, void* given, std::size_t given_bytes, cudaStream_t stream, const char* what)
      : stream_(stream) {
    if (bytes == 0) return;
    if (given_bytes >= bytes) {
      data_ = given;
      return;
    }
    const cudaError_t status = cudaMallocAsync(&data_, bytes, stream);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // not sticky: clear it, the session stays usable
      std::size_t free = 0, total = 0;
      (void)cudaMemGetInfo(&free, &total);
      fail(std::string(what) + ": out of GPU memory: " + std::to_string(bytes) + " bytes needed, " +
           std::to_string(free) + " free");
    }
    check(status, what);
    owned_ = true;
  }
  ~StreamWorkspace() {
    if (owned_) (void)cudaFreeAsync(data_, stream_);
  }
  StreamWorkspace(const StreamWorkspace&) = delete;
  StreamWorkspace& operator=(const StreamWorkspace&) = delete;
  float* floats() const { return static_cast<float*>(data_); }

 private:
  void* data_ = nullptr;
  bool owned_ = false;
  cudaStream_t stream_;
};

// Whether rows of `width` T elements at these pointers go in whole 16-byte pieces (the fast
// paths of the row kernels load and store 16 bytes at a time).
template <typename T, typename... Pointers>
bool whole_pieces(std::int64_t width, const Pointers*... pointers) {
  return (width * static_cast<std::int64_t>(sizeof(T))) % 16 == 0 &&
         ((reinterpret_cast<std::uintptr_t>(pointers) % 16 == 0) && ...);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The sum over the block (blockDim.x a multiple of 32, at most kThreads), returned to every thread.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[kThreads / 32];
  v = warp_sum(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
  return total;
}

// Explicit instantiations for the two activation types.
#define LIGHTDESK_FOR_EACH_ACTIVATION(MACRO) \
  MACRO(float)                               \
  MACRO(bf16)

}  // namespace lightdesk::cuda
