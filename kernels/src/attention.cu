// Causal GQA softmax attention over a contiguous K/V cache (prefill and decode).
#include <cmath>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

constexpr int kAttentionWarps = 4;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

// One block per (query row, head). Each warp runs an online softmax over every
// kAttentionWarps-th visible key, each lane holding dims lane, lane + 32, ...; the warps'
// partial results are merged at the end.
template <typename T>
__global__ void softmax_attention_kernel(const T* q, int heads, int kv_heads, int d, std::int64_t first_position,
                                         const T* keys, const T* values, T* out) {
  const std::int64_t t = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  const int g = h / (heads / kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t visible = first_position + t + 1;
  const std::int64_t q_stride = std::int64_t{heads} * d;
  const std::int64_t kv_stride = std::int64_t{kv_heads} * d;
  const float scale = 1.0f / sqrtf(static_cast<float>(d));

  float qv[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int c = 0; c < kDimsPerLane; ++c) {
    const int i = lane + 32 * c;
    qv[c] = i < d ? load(q + t * q_stride + std::int64_t{h} * d + i) : 0.0f;
    acc[c] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  for (std::int64_t j = warp; j < visible; j += kAttentionWarps) {
    const T* k = keys + j * kv_stride + std::int64_t{g} * d;
    const T* v = values + j * kv_stride + std::int64_t{g} * d;
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int i = lane + 32 * c;
      if (i < d) dot += qv[c] * load(k + i);
    }
    const float score = warp_sum(dot) * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max);
    const float p = expf(score - new_max);
    running_sum = running_sum * correction + p;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int i = lane + 32 * c;
      acc[c] = acc[c] * correction + (i < d ? p * load(v + i) : 0.0f);
    }
    running_max = new_max;
  }

  __shared__ float warp_max[kAttentionWarps], warp_sum_exp[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum_exp[warp] = running_sum;
  }
#pragma unroll
  for (int c = 0; c < kDimsPerLane; ++c) warp_acc[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  float block_max = -INFINITY;
  for (int w = 0; w < kAttentionWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
  float total = 0.0f;
  for (int w = 0; w < kAttentionWarps; ++w)
    if (warp_max[w] != -INFINITY) total += warp_sum_exp[w] * expf(warp_max[w] - block_max);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w)
      if (warp_max[w] != -INFINITY) o += warp_acc[w][i] * expf(warp_max[w] - block_max);
    store(out + t * q_stride + std::int64_t{h} * d + i, o / total);
  }
}

}  // namespace

template <typename T>
void softmax_attention(const T* q, std::int64_t rows, std::int64_t first_position, const T* keys, const T* values,
                       int heads, int kv_heads, int head_dim, T* out, cudaStream_t stream) {
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    fail("softmax_attention: head_dim " + std::to_string(head_dim) + " is outside 1.." +
                std::to_string(kMaxHeadDim));
  if (kv_heads <= 0 || heads % kv_heads != 0)
    fail("softmax_attention: " + std::to_string(heads) + " query heads do not group over " +
                std::to_string(kv_heads) + " KV heads");
  if (rows == 0) return;
  const std::int64_t blocks = rows * heads;
  softmax_attention_kernel<<<static_cast<unsigned>(blocks), kAttentionWarps * 32, 0, stream>>>(
      q, heads, kv_heads, head_dim, first_position, keys, values, out);
  check(cudaGetLastError(), "softmax_attention");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                           \
  template void softmax_attention<T>(const T*, std::int64_t, std::int64_t, const T*, const T*, int, int, int, \
                                     T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
