// Causal GQA softmax attention over a (paged) K/V cache, prefill and decode. bf16 runs on tensor
// cores: the warpgroup-MMA kernel of flash_attention_hopper.cuh for prefill on sm_90a, the one-warp
// mma.sync kernel of flash_attention.cuh for decode (and for prefill on other GPUs). float32 (the
// checking mode) and odd head sizes run on a CUDA-core kernel: the tensor cores would round its
// operands to bf16 or tf32, and the check wants float32 products.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_hopper.cuh"

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
__global__ void softmax_attention_kernel(const T* q, int heads, int kv_heads, int d, Position position,
                                         KvCacheView<const T> kv, T* out, float* partials) {
  const std::int64_t first_position = position.get();
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
    const std::int64_t offset = kv.row_offset(j, kv_stride) + std::int64_t{g} * d;
    const T* k = kv.keys + offset;
    const T* v = kv.values + offset;
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

// Rows ↔ cache positions, one thread per element; a null keys or values pointer skips that side.
template <typename T>
__global__ void write_kv_rows_kernel(const T* keys, const T* values, std::int64_t count, Position position,
                                     std::int64_t kv_width, KvCacheView<T> kv) {
  const std::int64_t first = position.get();
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count * kv_width;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t offset = kv.row_offset(first + i / kv_width, kv_width) + i % kv_width;
    if (keys) kv.keys[offset] = keys[i];
    if (values) kv.values[offset] = values[i];
  }
}
template <typename T>
__global__ void read_kv_rows_kernel(KvCacheView<const T> kv, std::int64_t first, std::int64_t count,
                                    std::int64_t kv_width, T* keys, T* values) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count * kv_width;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t offset = kv.row_offset(first + i / kv_width, kv_width) + i % kv_width;
    if (keys) keys[i] = kv.keys[offset];
    if (values) values[i] = kv.values[offset];
  }
}

// Which kernel a launch takes, how it splits the keys over thread blocks, and the workspace
// the splits' partial results need: the same answer for planning and for running.
enum class Kernel { FlashOneWarp, FlashHopper, CudaCores };
struct Plan {
  Kernel kernel = Kernel::CudaCores;
  std::int64_t splits = 1;
  int key_tiles_per_split = 0;  // flash kernels
  std::size_t workspace_bytes = 0;
};

// A flash kernel with its launch shape.
struct FlashKernel {
  void (*kernel)(flash::Problem);
  int threads;
  int rows_per_block;  // packed rows
  int keys_per_tile;
  std::size_t shared_bytes;
};
FlashKernel flash_kernel(Kernel kernel) {
  if (kernel == Kernel::FlashHopper)
    return {flash::flash_attention_hopper_kernel, flash::kHopperThreads, flash::kHopperRows, flash::kHopperKeys,
            flash::kHopperSharedBytes};
  using Tiles = flash::SharedTiles<1, 1>;
  return {flash::flash_attention_kernel<1, 1>, 32, Tiles::kRows, flash::kKeysPerTile, sizeof(Tiles)};
}

// The warpgroup-MMA kernel exists in the sm_90a machine code only (not in the PTX that newer GPUs
// compile).
bool runs_sm90a() {
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  return major == 9 && minor == 0;
}

Plan plan_flash(Kernel kernel, std::int64_t rows, std::int64_t first_position, int kv_heads, int group, int d) {
  const FlashKernel k = flash_kernel(kernel);
  const std::int64_t packed_rows = rows * group;
  const std::int64_t row_tiles = (packed_rows + k.rows_per_block - 1) / k.rows_per_block;
  const std::int64_t key_tiles = (first_position + rows + k.keys_per_tile - 1) / k.keys_per_tile;
  check(cudaFuncSetAttribute(k.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(k.shared_bytes)),
        "softmax_attention (shared memory)");
  int blocks_per_multiprocessor = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_multiprocessor, k.kernel, k.threads, k.shared_bytes),
        "softmax_attention (occupancy)");
  // Split the keys when the row tiles alone do not fill the GPU twice (decode, short chunks after
  // a long context), keeping at least 4 key tiles per split. Two waves of thread blocks: decode
  // at 128K context took 0.175 ms so, 0.224 ms with one wave and 0.227 ms with four (H200).
  constexpr std::int64_t kWaves = 2;
  const std::int64_t wanted_blocks = kWaves * blocks_per_multiprocessor * multiprocessors();
  const std::int64_t blocks = row_tiles * kv_heads;
  std::int64_t splits = blocks >= wanted_blocks ? 1 : std::min((wanted_blocks + blocks - 1) / blocks, key_tiles / 4);
  splits = std::clamp<std::int64_t>(splits, 1, 65535);
  Plan plan{kernel};
  plan.key_tiles_per_split = static_cast<int>((key_tiles + splits - 1) / splits);
  plan.splits = (key_tiles + plan.key_tiles_per_split - 1) / plan.key_tiles_per_split;
  if (plan.splits > 1)
    plan.workspace_bytes = static_cast<std::size_t>(kv_heads * packed_rows * plan.splits * (d + 2)) * sizeof(float);
  return plan;
}

template <typename T>
Plan plan_attention(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads, int head_dim) {
  check_head_dim(head_dim, "softmax_attention");
  if (kv_heads <= 0 || heads % kv_heads != 0)
    fail("softmax_attention: " + std::to_string(heads) + " query heads do not group over " +
         std::to_string(kv_heads) + " KV heads");
  const int group = heads / kv_heads;
  if (std::is_same_v<T, bf16> && head_dim % 8 == 0) {
    // One warp of 16 packed rows when that holds every row, as in decode.
    const bool one_warp = rows * group <= flash::kMmaRows || !runs_sm90a();
    return plan_flash(one_warp ? Kernel::FlashOneWarp : Kernel::FlashHopper, rows, first_position, kv_heads, group,
                      head_dim);
  }
  // Few (row, head) pairs, as in decode, cannot fill the GPU: split their keys over thread
  // blocks too, and merge the partial softmaxes in a second kernel.
  constexpr std::int64_t kEnoughBlocks = 1024;
  const std::int64_t items = rows * heads;
  Plan plan;
  plan.splits = items >= kEnoughBlocks
                    ? 1
                    : std::min<std::int64_t>((first_position + rows + kKeysPerSplit - 1) / kKeysPerSplit, 65535);
  if (plan.splits > 1) plan.workspace_bytes = static_cast<std::size_t>(items * plan.splits * (head_dim + 2)) * sizeof(float);
  return plan;
}

void launch_flash(flash::Problem problem, const Plan& plan, float* workspace, cudaStream_t stream) {
  const FlashKernel k = flash_kernel(plan.kernel);
  const std::int64_t packed_rows = problem.rows * (problem.heads / problem.kv_heads);
  problem.key_tiles_per_split = plan.key_tiles_per_split;
  problem.partial_out = workspace;
  problem.partial_stats = plan.splits > 1 ? workspace + problem.kv_heads * packed_rows * plan.splits * problem.d : nullptr;
  const dim3 grid(static_cast<unsigned>((packed_rows + k.rows_per_block - 1) / k.rows_per_block),
                  static_cast<unsigned>(problem.kv_heads), static_cast<unsigned>(plan.splits));
  k.kernel<<<grid, k.threads, k.shared_bytes, stream>>>(problem);
  if (plan.splits > 1)
    flash::flash_combine_kernel<<<static_cast<unsigned>(problem.kv_heads * packed_rows), 128, 0, stream>>>(
        problem, static_cast<int>(plan.splits));
}

}  // namespace

template <typename T>
std::size_t softmax_attention_workspace_bytes(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads,
                                              int head_dim) {
  return rows == 0 ? 0 : plan_attention<T>(rows, first_position, heads, kv_heads, head_dim).workspace_bytes;
}

template <typename T>
void softmax_attention(const T* q, std::int64_t rows, Position first_position, KvCacheView<const T> kv, int heads,
                       int kv_heads, int head_dim, T* out, cudaStream_t stream, void* workspace,
                       std::size_t workspace_bytes) {
  const Plan plan = plan_attention<T>(rows, first_position.value, heads, kv_heads, head_dim);
  if (rows == 0) return;
  const StreamWorkspace split(plan.workspace_bytes, workspace, workspace_bytes, stream, "softmax_attention (split workspace)");
  if constexpr (std::is_same_v<T, bf16>) {
    const flash::Problem problem{q, kv, out, rows, first_position, heads, kv_heads, head_dim, 0, nullptr, nullptr};
    if (plan.kernel != Kernel::CudaCores) launch_flash(problem, plan, split.floats(), stream);
  }
  if (plan.kernel == Kernel::CudaCores) {
    const std::int64_t items = rows * heads;
    const dim3 grid(static_cast<unsigned>(items), static_cast<unsigned>(plan.splits));
    softmax_attention_kernel<<<grid, kAttentionWarps * 32, 0, stream>>>(q, heads, kv_heads, head_dim, first_position,
                                                                         kv, out, split.floats());
    if (plan.splits > 1)
      softmax_combine_kernel<<<static_cast<unsigned>(items), kMaxHeadDim, 0, stream>>>(
          split.floats(), static_cast<int>(plan.splits), heads, head_dim, out);
  }
  check(cudaGetLastError(), "softmax_attention");
}

template <typename T>
void write_kv_rows(const T* keys, const T* values, std::int64_t count, Position first, std::int64_t kv_width,
                   KvCacheView<T> kv, cudaStream_t stream) {
  if (count == 0) return;
  write_kv_rows_kernel<<<grid_for(count * kv_width), kThreads, 0, stream>>>(keys, values, count, first, kv_width, kv);
  check(cudaGetLastError(), "write_kv_rows");
}

template <typename T>
void read_kv_rows(KvCacheView<const T> kv, std::int64_t first, std::int64_t count, std::int64_t kv_width, T* keys,
                  T* values, cudaStream_t stream) {
  if (count == 0) return;
  read_kv_rows_kernel<<<grid_for(count * kv_width), kThreads, 0, stream>>>(kv, first, count, kv_width, keys, values);
  check(cudaGetLastError(), "read_kv_rows");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                  \
  template void softmax_attention<T>(const T*, std::int64_t, Position, KvCacheView<const T>, int, int, int, T*,     \
                                     cudaStream_t, void*, std::size_t);                                           \
  template std::size_t softmax_attention_workspace_bytes<T>(std::int64_t, std::int64_t, int, int, int);           \
  template void write_kv_rows<T>(const T*, const T*, std::int64_t, Position, std::int64_t, KvCacheView<T>,         \
                                 cudaStream_t);                                                                   \
  template void read_kv_rows<T>(KvCacheView<const T>, std::int64_t, std::int64_t, std::int64_t, T*, T*,           \
                                cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
