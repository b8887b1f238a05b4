// Causal GQA softmax attention over a (paged) K/V cache, prefill and decode. bf16 runs on tensor
// cores: for prefill the warpgroup-MMA kernel of flash_attention_hopper.cuh on sm_90a, else the
// mma.sync kernel of flash_attention.cuh; for decode the kernel of flash_decode.cuh. float32 (the
// checking mode) and odd head sizes run on a CUDA-core kernel: the tensor cores would round its
// operands to bf16 or tf32, and the check wants float32 products. One kernel merges the key
// splits of all four.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_hopper.cuh"
#include "flash_decode.cuh"

namespace lightdesk::cuda {
namespace {

constexpr int kAttentionWarps = 4;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

// Keys per thread block of the CUDA-core kernel when a row's keys are split over several blocks.
constexpr std::int64_t kKeysPerSplit = 1024;

// Grid (query row × head, key splits). Each warp runs an online softmax over every
// kAttentionWarps-th key of the block's split, each lane holding dims lane, lane + 32, ...; the
// warps' partial results are merged at the end. With one split the block writes the output;
// with several it writes its unnormalised output to partial_out [item, split, d] and its max
// (log2 domain) and sum to partial_stats [item, split, 2], item = row × heads + head, for
// combine_splits_kernel.
template <typename T>
__global__ void softmax_attention_kernel(const T* q, int heads, int kv_heads, int d, Position position,
                                         KvCacheView<const T> kv, T* out, float* partial_out, float* partial_stats) {
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

  __shared__ float warp_maxima[kAttentionWarps], warp_sum_exp[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_maxima[warp] = running_max;
    warp_sum_exp[warp] = running_sum;
  }
#pragma unroll
  for (int c = 0; c < kDimsPerLane; ++c) warp_acc[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  float block_max = -INFINITY;
  for (int w = 0; w < kAttentionWarps; ++w) block_max = fmaxf(block_max, warp_maxima[w]);
  float total = 0.0f;
  for (int w = 0; w < kAttentionWarps; ++w)
    if (warp_maxima[w] != -INFINITY) total += warp_sum_exp[w] * expf(warp_maxima[w] - block_max);
  const std::int64_t item_split = std::int64_t{blockIdx.x} * gridDim.y + blockIdx.y;
  float* partial = gridDim.y > 1 ? partial_out + item_split * d : nullptr;
  if (partial && threadIdx.x == 0) {
    partial_stats[2 * item_split] = block_max * 1.4426950408889634f;  // log2 e; -inf: no visible key
    partial_stats[2 * item_split + 1] = total;
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w)
      if (warp_maxima[w] != -INFINITY) o += warp_acc[w][i] * expf(warp_maxima[w] - block_max);
    if (partial)
      partial[i] = o;
    else
      store(out + t * q_stride + std::int64_t{h} * d + i, o / total);
  }
}

// Merges the splits' partial softmaxes (partial_out [item, split, d] unnormalised,
// partial_stats [item, split, {max in the log2 domain, sum}]) into out [item, d], for every
// attention kernel here. Grid (items, runs of kCombineDims dims); each warp of a block takes
// every kCombineWarps-th split, so the block's loads of one split's dims are one coalesced run
// and several splits are in flight at once.
constexpr int kCombineDims = 32, kCombineWarps = 8;
template <typename T>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_splits_kernel(const float* partial_out,
                                                                            const float* partial_stats, int splits,
                                                                            int d, T* out) {
  __shared__ float warp_maxima[kCombineWarps], warp_totals[kCombineWarps];
  __shared__ float warp_outputs[kCombineWarps][kCombineDims];
  const std::int64_t item = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int dim = blockIdx.y * kCombineDims + lane;
  const float* stats = partial_stats + item * splits * 2;
  const float* parts = partial_out + item * splits * d;
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the splits' results (a programmatic dependent launch)

  float max_score = -INFINITY;  // -inf: a split that saw no key
  for (int s = threadIdx.x; s < splits; s += kCombineWarps * 32) max_score = fmaxf(max_score, stats[2 * s]);
  max_score = warp_max(max_score);
  if (lane == 0) warp_maxima[warp] = max_score;
  __syncthreads();
  for (int w = 0; w < kCombineWarps; ++w) max_score = fmaxf(max_score, warp_maxima[w]);

  float total = 0.0f, o = 0.0f;
#pragma unroll 4
  for (int s = warp; s < splits; s += kCombineWarps) {
    const float m = stats[2 * s];
    if (m == -INFINITY) continue;
    const float weight = exp2f(m - max_score);
    total += weight * stats[2 * s + 1];
    if (dim < d) o += weight * parts[std::int64_t{s} * d + dim];
  }
  warp_outputs[warp][lane] = o;
  if (lane == 0) warp_totals[warp] = total;
  __syncthreads();
  if (warp != 0 || dim >= d) return;
  total = 0.0f;
  o = 0.0f;
  for (int w = 0; w < kCombineWarps; ++w) {
    total += warp_totals[w];
    o += warp_outputs[w][lane];
  }
  store(out + item * d + dim, o / total);
}

// Rows ↔ cache positions, one thread per element; a null keys or values pointer skips that side.
template <typename T, typename Rows>
__global__ void write_kv_rows_kernel(const Rows* keys, const Rows* values, std::int64_t count, Position position,
                                     std::int64_t kv_width, KvCacheView<T> kv) {
  const std::int64_t first = position.get();
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count * kv_width;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t offset = kv.row_offset(first + i / kv_width, kv_width) + i % kv_width;
    if (keys) store(kv.keys + offset, load(keys + i));
    if (values) store(kv.values + offset, load(values + i));
  }
}
template <typename T, typename Rows>
__global__ void read_kv_rows_kernel(KvCacheView<const T> kv, std::int64_t first, std::int64_t count,
                                    std::int64_t kv_width, Rows* keys, Rows* values) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count * kv_width;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t offset = kv.row_offset(first + i / kv_width, kv_width) + i % kv_width;
    if (keys) store(keys + i, load(kv.keys + offset));
    if (values) store(values + i, load(kv.values + offset));
  }
}

// Which kernel a launch takes, how it splits the keys over thread blocks, and the workspace
// the splits' partial results need: the same answer for planning and for running.
enum class Kernel { FlashDecode, FlashHopper, FlashWide, CudaCores };
struct Plan {
  Kernel kernel = Kernel::CudaCores;
  std::int64_t splits = 1;
  int key_tiles_per_split = 0;  // the prefill flash kernels (the decode kernel sizes its splits itself)
  std::size_t workspace_bytes = 0;
};

// The mma.sync prefill kernel, for GPUs without sm_90a.
using WideTiles = flash::SharedTiles<4, 2>;
constexpr auto flash_wide_kernel = flash::flash_attention_kernel<4, 2>;
constexpr int kWideThreads = 4 * 32;

std::size_t split_workspace_bytes(std::int64_t items, std::int64_t splits, int d) {
  return splits > 1 ? static_cast<std::size_t>(items * splits * (d + 2)) * sizeof(float) : 0;
}

// The decode kernel: one thread block per (group of KV heads, split), as many as fit on the GPU
// at once and no more (a second, partial wave would leave most multiprocessors idle at its end),
// so that every block streams the same number of keys at the same time; at least 4 stages each.
int decode_head_groups(int kv_heads) {
  return (kv_heads + flash::kDecodeHeadsPerBlock - 1) / flash::kDecodeHeadsPerBlock;
}

Plan plan_decode(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads, int d,
                 const LaunchLimits& limits) {
  constexpr std::int64_t kMinStagesPerSplit = 4;
  const std::int64_t stages = (first_position + rows + flash::kDecodeKeysPerStage - 1) / flash::kDecodeKeysPerStage;
  const std::int64_t resident_blocks = std::int64_t{limits.attention_decode_blocks} * limits.multiprocessors;
  Plan plan{Kernel::FlashDecode};
  plan.splits = std::clamp<std::int64_t>(
      std::min(resident_blocks / decode_head_groups(kv_heads), stages / kMinStagesPerSplit), 1, 65535);
  plan.workspace_bytes = split_workspace_bytes(rows * heads, plan.splits, d);
  return plan;
}

// A prefill flash kernel's tiles: packed rows per thread block, keys per K/V tile.
struct PrefillTiles {
  int rows_per_block, keys_per_tile;
};
PrefillTiles prefill_tiles(Kernel kernel) {
  return kernel == Kernel::FlashHopper ? PrefillTiles{flash::kHopperRows, flash::kHopperKeys}
                                       : PrefillTiles{WideTiles::kRows, flash::kKeysPerTile};
}

// The Hopper kernel where the device runs it (attention_hopper_blocks > 0), else the mma.sync one.
Plan plan_prefill(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads, int d,
                  const LaunchLimits& limits) {
  const bool hopper = limits.attention_hopper_blocks > 0;
  const Kernel kernel = hopper ? Kernel::FlashHopper : Kernel::FlashWide;
  const PrefillTiles tiles = prefill_tiles(kernel);
  const int blocks_per_multiprocessor = hopper ? limits.attention_hopper_blocks : limits.attention_prefill_blocks;
  const std::int64_t packed_rows = rows * (heads / kv_heads);
  const std::int64_t row_tiles = (packed_rows + tiles.rows_per_block - 1) / tiles.rows_per_block;
  const std::int64_t key_tiles = (first_position + rows + tiles.keys_per_tile - 1) / tiles.keys_per_tile;
  // Split the keys when the row tiles alone do not fill the GPU twice (short chunks after a long
  // context), keeping at least 4 key tiles per split.
  constexpr std::int64_t kWaves = 2;
  const std::int64_t wanted_blocks = kWaves * blocks_per_multiprocessor * limits.multiprocessors;
  const std::int64_t blocks = row_tiles * kv_heads;
  std::int64_t splits = blocks >= wanted_blocks ? 1 : std::min((wanted_blocks + blocks - 1) / blocks, key_tiles / 4);
  splits = std::clamp<std::int64_t>(splits, 1, 65535);
  Plan plan{kernel};
  plan.key_tiles_per_split = static_cast<int>((key_tiles + splits - 1) / splits);
  plan.splits = (key_tiles + plan.key_tiles_per_split - 1) / plan.key_tiles_per_split;
  plan.workspace_bytes = split_workspace_bytes(rows * heads, plan.splits, d);
  return plan;
}

template <typename T>
Plan plan_attention(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads, int head_dim,
                    const LaunchLimits& limits) {
  check_head_dim(head_dim, "softmax_attention");
  if (kv_heads <= 0 || heads % kv_heads != 0)
    fail("softmax_attention: " + std::to_string(heads) + " query heads do not group over " +
         std::to_string(kv_heads) + " KV heads");
  if (std::is_same_v<T, bf16> && head_dim % 8 == 0) {
    // One 16-row tile per KV head when that holds every packed row, as in decode.
    if (rows * (heads / kv_heads) <= flash::kMmaRows)
      return plan_decode(rows, first_position, heads, kv_heads, head_dim, limits);
    return plan_prefill(rows, first_position, heads, kv_heads, head_dim, limits);
  }
  // Few (row, head) pairs, as in decode, cannot fill the GPU: split their keys over thread
  // blocks too, and merge the partial softmaxes in a second kernel.
  constexpr std::int64_t kEnoughBlocks = 1024;
  const std::int64_t items = rows * heads;
  Plan plan;
  plan.splits = items >= kEnoughBlocks
                    ? 1
                    : std::min<std::int64_t>((first_position + rows + kKeysPerSplit - 1) / kKeysPerSplit, 65535);
  plan.workspace_bytes = split_workspace_bytes(items, plan.splits, head_dim);
  return plan;
}

}  // namespace

void query_attention_limits(LaunchLimits& limits) {
  check(cudaFuncSetAttribute(flash::flash_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             sizeof(flash::DecodeShared)),
        "softmax_attention (shared memory)");
  check(cudaFuncSetAttribute(flash_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, sizeof(WideTiles)),
        "softmax_attention (shared memory)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.attention_decode_blocks, flash::flash_decode_kernel,
                                                      flash::kDecodeThreads, sizeof(flash::DecodeShared)),
        "softmax_attention (occupancy)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.attention_prefill_blocks, flash_wide_kernel,
                                                      kWideThreads, sizeof(WideTiles)),
        "softmax_attention (occupancy)");
  // The warpgroup-MMA kernel exists in the sm_90a machine code only (not in the PTX that newer
  // GPUs compile): other devices keep attention_hopper_blocks at 0.
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  limits.attention_hopper_blocks = 0;
  if (major != 9 || minor != 0) return;
  check(cudaFuncSetAttribute(flash::flash_attention_hopper_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(flash::kHopperSharedBytes)),
        "softmax_attention (shared memory)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.attention_hopper_blocks,
                                                      flash::flash_attention_hopper_kernel, flash::kHopperThreads,
                                                      flash::kHopperSharedBytes),
        "softmax_attention (occupancy)");
}

template <typename T>
std::size_t softmax_attention_workspace_bytes(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads,
                                              int head_dim, const LaunchLimits& limits) {
  return rows == 0 ? 0 : plan_attention<T>(rows, first_position, heads, kv_heads, head_dim, limits).workspace_bytes;
}

template <typename T>
void softmax_attention(const T* q, std::int64_t rows, Position first_position, KvCacheView<const T> kv, int heads,
                       int kv_heads, int head_dim, T* out, const LaunchLimits& limits, cudaStream_t stream,
                       void* workspace, std::size_t workspace_bytes) {
  const Plan plan = plan_attention<T>(rows, first_position.value, heads, kv_heads, head_dim, limits);
  if (rows == 0) return;
  const StreamWorkspace split(plan.workspace_bytes, workspace, workspace_bytes, stream, "softmax_attention (split workspace)");
  const std::int64_t items = rows * heads;
  float* partial_out = split.floats();
  float* partial_stats = plan.splits > 1 ? partial_out + items * plan.splits * head_dim : nullptr;
  const auto splits = static_cast<unsigned>(plan.splits);
  if constexpr (std::is_same_v<T, bf16>) {
    const flash::Problem problem{q,        kv,        out,      rows, first_position, heads, kv_heads, head_dim,
                                 plan.key_tiles_per_split, partial_out, partial_stats};
    if (plan.kernel == Kernel::FlashDecode)
      flash::flash_decode_kernel<<<dim3(static_cast<unsigned>(decode_head_groups(kv_heads)), splits),
                                   flash::kDecodeThreads, sizeof(flash::DecodeShared), stream>>>(problem);
    if (plan.kernel == Kernel::FlashHopper || plan.kernel == Kernel::FlashWide) {
      const std::int64_t packed_rows = rows * (heads / kv_heads);
      const int rows_per_block = prefill_tiles(plan.kernel).rows_per_block;
      const dim3 grid(static_cast<unsigned>((packed_rows + rows_per_block - 1) / rows_per_block),
                      static_cast<unsigned>(kv_heads), splits);
      if (plan.kernel == Kernel::FlashHopper)
        flash::flash_attention_hopper_kernel<<<grid, flash::kHopperThreads, flash::kHopperSharedBytes, stream>>>(
            problem);
      else
        flash_wide_kernel<<<grid, kWideThreads, sizeof(WideTiles), stream>>>(problem);
    }
  }
  if (plan.kernel == Kernel::CudaCores)
    softmax_attention_kernel<<<dim3(static_cast<unsigned>(items), splits), kAttentionWarps * 32, 0, stream>>>(
        q, heads, kv_heads, head_dim, first_position, kv, out, partial_out, partial_stats);
  if (plan.splits > 1) {
    // A programmatic dependent launch: the combine's blocks are placed while the splits still
    // run (the decode kernel lets them start at once) and wait at griddepcontrol.wait for the
    // splits' results, instead of launching only after the last split ends.
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(items), (head_dim + kCombineDims - 1) / kCombineDims);
    config.blockDim = dim3(kCombineWarps * 32);
    config.stream = stream;
    cudaLaunchAttribute early_launch{};
    early_launch.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    early_launch.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &early_launch;
    config.numAttrs = 1;
    check(cudaLaunchKernelEx(&config, combine_splits_kernel<T>, static_cast<const float*>(partial_out),
                             static_cast<const float*>(partial_stats), static_cast<int>(plan.splits), head_dim, out),
          "softmax_attention (combine)");
  }
  check(cudaGetLastError(), "softmax_attention");
}

template <typename T, typename Rows>
void write_kv_rows(const Rows* keys, const Rows* values, std::int64_t count, Position first, std::int64_t kv_width,
                   KvCacheView<T> kv, cudaStream_t stream) {
  if (count == 0) return;
  write_kv_rows_kernel<<<grid_for(count * kv_width), kThreads, 0, stream>>>(keys, values, count, first, kv_width, kv);
  check(cudaGetLastError(), "write_kv_rows");
}

template <typename T, typename Rows>
void read_kv_rows(KvCacheView<const T> kv, std::int64_t first, std::int64_t count, std::int64_t kv_width, Rows* keys,
                  Rows* values, cudaStream_t stream) {
  if (count == 0) return;
  read_kv_rows_kernel<<<grid_for(count * kv_width), kThreads, 0, stream>>>(kv, first, count, kv_width, keys, values);
  check(cudaGetLastError(), "read_kv_rows");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                  \
  template void softmax_attention<T>(const T*, std::int64_t, Position, KvCacheView<const T>, int, int, int, T*,     \
                                     const LaunchLimits&, cudaStream_t, void*, std::size_t);                      \
  template std::size_t softmax_attention_workspace_bytes<T>(std::int64_t, std::int64_t, int, int, int,             \
                                                            const LaunchLimits&);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

// K/V rows of the cache's type, and float32 rows of a bf16 cache (state export and import).
#define LIGHTDESK_INSTANTIATE(T, Rows)                                                                            \
  template void write_kv_rows<T, Rows>(const Rows*, const Rows*, std::int64_t, Position, std::int64_t,           \
                                       KvCacheView<T>, cudaStream_t);                                            \
  template void read_kv_rows<T, Rows>(KvCacheView<const T>, std::int64_t, std::int64_t, std::int64_t, Rows*, Rows*, \
                                      cudaStream_t);
LIGHTDESK_INSTANTIATE(float, float)
LIGHTDESK_INSTANTIATE(bf16, bf16)
LIGHTDESK_INSTANTIATE(bf16, float)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
