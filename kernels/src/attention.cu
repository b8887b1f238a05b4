// Causal GQA softmax attention over a contiguous K/V cache (prefill and decode).
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

constexpr int kAttentionWarps = 4;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

// Keys per thread block when a row's keys are split over several thread blocks.
constexpr std::int64_t kKeysPerSplit = 1024;

// Grid (query row × head, key splits). Each warp runs an online softmax over every
// kAttentionWarps-th key of the block's split, each lane holding dims lane, lane + 32, ...; the
// warps' partial results are merged at the end. With one split the block writes the output;
// with several it writes its running max, sum and unnormalised output to `partials`
// ([row × head, split, d + 2]) for softmax_combine_kernel.
template <typename T>
__global__ void softmax_attention_kernel(const T* q, int heads, int kv_heads, int d, std::int64_t first_position,
                                         const T* keys, const T* values, T* out, float* partials) {
  const std::int64_t t = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  const int g = h / (heads / kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t visible = first_position + t + 1;
  const std::int64_t split_begin = gridDim.y > 1 ? blockIdx.y * kKeysPerSplit : 0;
  const std::int64_t split_end = gridDim.y > 1 ? min(visible, split_begin + kKeysPerSplit) : visible;
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
  for (std::int64_t j = split_begin + warp; j < split_end; j += kAttentionWarps) {
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
  float* partial = gridDim.y > 1 ? partials + (std::int64_t{blockIdx.x} * gridDim.y + blockIdx.y) * (d + 2) : nullptr;
  if (partial && threadIdx.x == 0) {
    partial[d] = block_max;  // -inf when the split holds no visible key
    partial[d + 1] = total;
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w)
      if (warp_max[w] != -INFINITY) o += warp_acc[w][i] * expf(warp_max[w] - block_max);
    if (partial)
      partial[i] = o;
    else
      store(out + t * q_stride + std::int64_t{h} * d + i, o / total);
  }
}

// One block per (query row, head): merges the splits' partial softmaxes.
template <typename T>
__global__ void softmax_combine_kernel(const float* partials, int splits, int heads, int d, T* out) {
  const float* item = partials + std::int64_t{blockIdx.x} * splits * (d + 2);
  float max_score = -INFINITY;
  for (int s = 0; s < splits; ++s) max_score = fmaxf(max_score, item[s * (d + 2) + d]);
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float m = item[s * (d + 2) + d];
    if (m != -INFINITY) total += item[s * (d + 2) + d + 1] * expf(m - max_score);
  }
  const std::int64_t t = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float m = item[s * (d + 2) + d];
      if (m != -INFINITY) o += item[s * (d + 2) + i] * expf(m - max_score);
    }
    store(out + t * std::int64_t{heads} * d + std::int64_t{h} * d + i, o / total);
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
  const std::int64_t items = rows * heads;
  // Few (row, head) pairs, as in decode, cannot fill the GPU: split their keys over thread
  // blocks too, and merge the partial softmaxes in a second kernel.
  constexpr std::int64_t kEnoughBlocks = 1024;
  const std::int64_t max_visible = first_position + rows;
  const std::int64_t splits =
      items >= kEnoughBlocks ? 1 : std::min<std::int64_t>((max_visible + kKeysPerSplit - 1) / kKeysPerSplit, 65535);
  float* partials = nullptr;
  if (splits > 1)
    check(cudaMallocAsync(reinterpret_cast<void**>(&partials),
                          static_cast<std::size_t>(items * splits * (head_dim + 2)) * sizeof(float), stream),
          "softmax_attention (split workspace)");
  const dim3 grid(static_cast<unsigned>(items), static_cast<unsigned>(splits));
  softmax_attention_kernel<<<grid, kAttentionWarps * 32, 0, stream>>>(q, heads, kv_heads, head_dim, first_position,
                                                                       keys, values, out, partials);
  if (splits > 1) {
    softmax_combine_kernel<<<static_cast<unsigned>(items), kMaxHeadDim, 0, stream>>>(
        partials, static_cast<int>(splits), heads, head_dim, out);
    check(cudaFreeAsync(partials, stream), "softmax_attention (split workspace)");
  }
  check(cudaGetLastError(), "softmax_attention");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                           \
  template void softmax_attention<T>(const T*, std::int64_t, std::int64_t, const T*, const T*, int, int, int, \
                                     T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
