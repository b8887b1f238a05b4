// Choosing the next token on the device, by the rules of the CPU sampler (engine/src/sampler.cpp):
// the logits sorted high to low (CUB's radix sort is stable, so lower ids come first among
// equals), cut to top_k, scaled by the temperature, cut to the nucleus, then one draw.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

constexpr int kArgmaxThreads = 1024;

// One block: the largest logit, the lowest id among equal maxima.
__global__ void argmax_kernel(const float* logits, std::int64_t vocab, std::int32_t* token) {
  float best = -INFINITY;
  std::int64_t best_id = vocab;
  for (std::int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    if (logits[i] > best) {  // ascending ids per thread: the first maximum stays
      best = logits[i];
      best_id = i;
    }
  __shared__ float values[kArgmaxThreads];
  __shared__ std::int64_t ids[kArgmaxThreads];
  values[threadIdx.x] = best;
  ids[threadIdx.x] = best_id;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float v = values[threadIdx.x + stride];
      const std::int64_t id = ids[threadIdx.x + stride];
      if (v > values[threadIdx.x] || (v == values[threadIdx.x] && id < ids[threadIdx.x])) {
        values[threadIdx.x] = v;
        ids[threadIdx.x] = id;
      }
    }
    __syncthreads();
  }
  // All logits NaN: id 0, as std::max_element would answer.
  if (threadIdx.x == 0) *token = static_cast<std::int32_t>(ids[0] < vocab ? ids[0] : 0);
}

__global__ void iota_kernel(std::int32_t* ids, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    ids[i] = static_cast<std::int32_t>(i);
}

// probabilities[i] = exp((sorted[i] - sorted[0]) / temperature) for the kept ranks, 0 past them.
__global__ void scaled_probabilities_kernel(const float* sorted, std::int64_t keep, std::int64_t vocab,
                                            float temperature, float* probabilities) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < vocab;
       i += std::int64_t{gridDim.x} * blockDim.x)
    probabilities[i] = i < keep ? expf((sorted[i] - sorted[0]) / temperature) : 0.0f;
}


// The first rank below `count` whose cumulative probability reaches the target (>= target, or
// > target when `strictly`); count - 1 if none does.
__device__ std::int64_t first_rank(const float* cumulative, std::int64_t count, float target, bool strictly) {
  std::int64_t low = 0, high = count - 1;
  while (low < high) {
    const std::int64_t mid = (low + high) / 2;
    if (strictly ? cumulative[mid] > target : cumulative[mid] >= target)
      high = mid;
    else
      low = mid + 1;
  }
  return low;
}

// One thread: the nucleus over the cumulative probabilities of the kept ranks, and the draw.
__global__ void draw_kernel(const float* cumulative, const std::int32_t* sorted_ids, std::int64_t keep, float top_p,
                            std::uint64_t seed, std::uint64_t draw, std::int32_t* token) {
  const std::int64_t nucleus = first_rank(cumulative, keep, top_p * cumulative[keep - 1], false) + 1;
  // 53 random bits -> uniform in [0, 1), from (seed, draw) alone: draws repeat for a seed.
  const double u = static_cast<double>(splitmix64(seed ^ splitmix64(draw)) >> 11) * 0x1.0p-53;
  *token = sorted_ids[first_rank(cumulative, nucleus, static_cast<float>(u * cumulative[nucleus - 1]), true)];
}

std::size_t aligned(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

// The workspace: sorted logits, ids, sorted ids, probabilities, cumulative, then CUB's scratch.
struct SamplingLayout {
  std::size_t floats, ints, cub, total;
  explicit SamplingLayout(std::int64_t vocab) {
    floats = aligned(static_cast<std::size_t>(vocab) * sizeof(float));
    ints = aligned(static_cast<std::size_t>(vocab) * sizeof(std::int32_t));
    std::size_t sort_bytes = 0, scan_bytes = 0;
    check(cub::DeviceRadixSort::SortPairsDescending(nullptr, sort_bytes, static_cast<const float*>(nullptr),
                                                    static_cast<float*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), vocab),
          "sample_token (sort size)");
    check(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const float*>(nullptr),
                                        static_cast<float*>(nullptr), vocab),
          "sample_token (scan size)");
    cub = aligned(std::max(sort_bytes, scan_bytes));
    total = 3 * floats + 2 * ints + cub;
  }
};

}  // namespace

std::size_t sampling_workspace_bytes(std::int64_t vocab) { return SamplingLayout(vocab).total; }

void sample_token(const float* logits, std::int64_t vocab, const TokenSampling& sampling, void* workspace,
                  std::int32_t* token, cudaStream_t stream) {
  if (vocab <= 0) fail("sample_token: no logits");
  if (sampling.temperature <= 0.0f) {
    argmax_kernel<<<1, kArgmaxThreads, 0, stream>>>(logits, vocab, token);
    check(cudaGetLastError(), "sample_token (greedy)");
    return;
  }
  if (!(sampling.top_p > 0.0f && sampling.top_p <= 1.0f)) fail("top_p must be within (0, 1]");
  if (sampling.top_k < 0) fail("top_k must not be negative");
  const SamplingLayout layout(vocab);
  auto* base = static_cast<char*>(workspace);
  auto* sorted = reinterpret_cast<float*>(base);
  auto* probabilities = reinterpret_cast<float*>(base + layout.floats);
  auto* cumulative = reinterpret_cast<float*>(base + 2 * layout.floats);
  auto* ids = reinterpret_cast<std::int32_t*>(base + 3 * layout.floats);
  auto* sorted_ids = reinterpret_cast<std::int32_t*>(base + 3 * layout.floats + layout.ints);
  void* cub_scratch = base + 3 * layout.floats + 2 * layout.ints;
  std::size_t cub_bytes = layout.cub;

  iota_kernel<<<grid_for(vocab), kThreads, 0, stream>>>(ids, vocab);
  check(cub::DeviceRadixSort::SortPairsDescending(cub_scratch, cub_bytes, logits, sorted, ids, sorted_ids, vocab, 0,
                                                  32, stream),
        "sample_token (sort)");
  const std::int64_t keep = sampling.top_k > 0 ? std::min<std::int64_t>(sampling.top_k, vocab) : vocab;
  scaled_probabilities_kernel<<<grid_for(vocab), kThreads, 0, stream>>>(sorted, keep, vocab, sampling.temperature,
                                                                         probabilities);
  cub_bytes = layout.cub;
  check(cub::DeviceScan::InclusiveSum(cub_scratch, cub_bytes, probabilities, cumulative, vocab, stream),
        "sample_token (scan)");
  draw_kernel<<<1, 1, 0, stream>>>(cumulative, sorted_ids, keep, sampling.top_p, sampling.seed, sampling.draw,
                                   token);
  check(cudaGetLastError(), "sample_token");
}

}  // namespace lightdesk::cuda
