// Device code of decode-shaped softmax attention (flash decoding on mma.sync, bf16 operands,
// float32 online softmax): per KV head at most one 16-row tile of packed query rows (8 query
// heads × 1 position at MiniMax's 64/8), over a long run of keys. Included by attention.cu,
// which plans and launches it.
//
// One 16-row tile does little arithmetic per key, so the time is the K/V read. A thread block
// takes kDecodeHeadsPerBlock KV heads and a run of keys, through a ring of kDecodeStages stages
// filled by cp.async kDecodeStages − 1 stages ahead of the arithmetic; a stage holds
// kDecodeKeysPerStage cache rows of the block's heads (contiguous in memory). Each head has
// kDecodeWarpsPerHead warps, each running its own online softmax over 16 keys of every stage
// (one k-step of P·V); a head's warps are merged at the end. The keys are split over gridDim.y
// blocks in even runs of whole stages sized from the position read on the device, so a CUDA
// graph planned for a longer cache stays right and balanced while the sequence grows into it.
#pragma once

#include "flash_attention.cuh"

namespace lightdesk::cuda::flash {

// Two heads of 4 warps and 3 stages of 64 keys (200 KiB of shared memory): one block per
// multiprocessor, and 4 head pairs × 33 splits fill the 132 of an H200 in one wave. Measured
// there at 128K keys (64/8 heads, share of the copy bandwidth): 84.0-84.8 %; one head × 4 warps
// × 4 stages (16 splits: 128 blocks) 84.4-84.7 %; 2 × 4 × 2 stages 83.8-84.4 %; 4 heads × 2
// warps 81.8 %; 8 heads × 1 warp (16-key stages) 81.6 %; a head's 4 warps × 3 stages at two
// blocks per multiprocessor 81.2 %; two waves of blocks 75-77 %.
constexpr int kDecodeHeadsPerBlock = 2;
constexpr int kDecodeWarpsPerHead = 4;
constexpr int kDecodeStages = 3;
constexpr int kDecodeWarps = kDecodeHeadsPerBlock * kDecodeWarpsPerHead;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kKeysPerWarp = kMmaRows;  // one k-step of P·V
constexpr int kDecodeKeysPerStage = kDecodeWarpsPerHead * kKeysPerWarp;

struct DecodeShared {
  uint4 q[kDecodeHeadsPerBlock][kMmaRows * kPiecesPerRow];
  uint4 k[kDecodeStages][kDecodeHeadsPerBlock][kDecodeKeysPerStage * kPiecesPerRow];
  uint4 v[kDecodeStages][kDecodeHeadsPerBlock][kDecodeKeysPerStage * kPiecesPerRow];
};
// The warps' results, merged through the same shared memory once no copy targets it.
struct DecodeMerge {
  float out[kDecodeWarps][kMmaRows][kDim];  // unnormalised
  float max[kDecodeWarps][kMmaRows];        // log2 domain; -inf: no key seen
  float sum[kDecodeWarps][kMmaRows];
};
static_assert(sizeof(DecodeMerge) <= sizeof(DecodeShared), "the merge reuses the stage buffers");

// Grid (groups of kDecodeHeadsPerBlock KV heads, key splits); p.rows · group <= kMmaRows. With
// several splits each block writes its partial softmaxes for combine_splits_kernel
// (attention.cu): p.partial_out [item, split, d] and p.partial_stats [item, split, {max (log2
// domain), sum}], item = position · heads + head.
__global__ void __launch_bounds__(kDecodeThreads, 1) flash_decode_kernel(Problem p) {
  // The combine may be placed now: it waits for this grid's results (griddepcontrol.wait).
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  extern __shared__ uint4 shared_memory[];
  auto& tiles = *reinterpret_cast<DecodeShared*>(shared_memory);

  const int group = p.heads / p.kv_heads;
  const int first_kv_head = blockIdx.x * kDecodeHeadsPerBlock;
  const int block_kv_heads = min(kDecodeHeadsPerBlock, p.kv_heads - first_kv_head);
  const int splits = gridDim.y, split = blockIdx.y;
  const std::int64_t first_position = p.first_position.get();
  const std::int64_t packed_rows = p.rows * group;
  const std::int64_t q_stride = std::int64_t{p.heads} * p.d;
  const std::int64_t kv_stride = std::int64_t{p.kv_heads} * p.d;
  const int pieces = p.d / 8;

  // This split's keys: the visible ones, dealt out in whole stages, within one stage of even.
  const std::int64_t keys_visible = first_position + p.rows;
  const std::int64_t stages_visible = (keys_visible + kDecodeKeysPerStage - 1) / kDecodeKeysPerStage;
  const std::int64_t split_begin = stages_visible * split / splits * kDecodeKeysPerStage;
  const std::int64_t keys_end = min(stages_visible * (split + 1) / splits * kDecodeKeysPerStage, keys_visible);
  const int key_tiles =
      keys_end > split_begin ? static_cast<int>((keys_end - split_begin + kDecodeKeysPerStage - 1) / kDecodeKeysPerStage)
                             : 0;

  // Each thread copies one piece of one head in every few key rows: a warp's 32 copies are
  // contiguous bytes of a row. A stage lies inside one page (pages hold a multiple of
  // kDecodeKeysPerStage positions); the page of the next stage to load is looked up one stage
  // early, so that read of the page table is not waited for.
  const int piece = threadIdx.x % kPiecesPerRow;
  const int copy_head = threadIdx.x / kPiecesPerRow % kDecodeHeadsPerBlock;
  const int first_row = threadIdx.x / (kPiecesPerRow * kDecodeHeadsPerBlock);
  constexpr int kRowsPerPass = kDecodeThreads / (kPiecesPerRow * kDecodeHeadsPerBlock);
  const bool copies = copy_head < block_kv_heads && piece < pieces;
  const std::int64_t head_offset = std::int64_t{first_kv_head + copy_head} * p.d + piece * 8;
  auto stage_offset = [&](int tile) {
    return tile < key_tiles
               ? p.kv.row_offset(split_begin + std::int64_t{tile} * kDecodeKeysPerStage, kv_stride) + head_offset
               : 0;
  };
  std::int64_t next_offset = stage_offset(0);
  auto load_stage = [&](int tile) {
    const int stage = tile % kDecodeStages;
    const std::int64_t key0 = split_begin + std::int64_t{tile} * kDecodeKeysPerStage;
    const std::int64_t offset0 = next_offset;
    next_offset = stage_offset(tile + 1);
#pragma unroll
    for (int pass = 0; pass < kDecodeKeysPerStage / kRowsPerPass; ++pass) {
      const int r = first_row + pass * kRowsPerPass;
      const std::int64_t offset = offset0 + std::int64_t{r} * kv_stride;
      const bool valid = copies && key0 + r < keys_end;
      copy_piece(&tiles.k[stage][copy_head][swizzled(r, piece)], valid ? p.kv.keys + offset : p.kv.keys, valid);
      copy_piece(&tiles.v[stage][copy_head][swizzled(r, piece)], valid ? p.kv.values + offset : p.kv.values, valid);
    }
  };

  // Copy groups: the query tiles, then one per stage, kDecodeStages − 1 ahead (empty past the last).
  for (int i = threadIdx.x; i < kDecodeHeadsPerBlock * kMmaRows * kPiecesPerRow; i += kDecodeThreads) {
    const int head = i / (kMmaRows * kPiecesPerRow), r = i / kPiecesPerRow % kMmaRows, c = i % kPiecesPerRow;
    const PackedRow row = unpack(r, group, first_kv_head + head);
    const bool valid = head < block_kv_heads && r < packed_rows && c < pieces;
    const bf16* src = p.q + row.position * q_stride + std::int64_t{row.head} * p.d + c * 8;
    copy_piece(&tiles.q[head][swizzled(r, c)], valid ? src : p.q, valid);
  }
  commit_copies();
#pragma unroll
  for (int tile = 0; tile < kDecodeStages - 1; ++tile) {
    if (tile < key_tiles) load_stage(tile);
    commit_copies();
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int head = warp / kDecodeWarpsPerHead, key_warp = warp % kDecodeWarpsPerHead;
  const int kv_head = first_kv_head + head;
  const bool computes = head < block_kv_heads;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
  const int matrix = lane / 8, matrix_row = lane % 8;
  wait_copies<kDecodeStages - 1>();  // the query tiles
  __syncthreads();
  std::uint32_t q_frag[kDim / 16][4];
#pragma unroll
  for (int k = 0; k < kDim / 16; ++k)
    load_matrix_x4(q_frag[k], &tiles.q[head][swizzled(matrix_row + (matrix % 2) * 8, 2 * k + matrix / 2)]);

  // This thread's rows are quad_row (slot 0) and quad_row + 8 (slot 1); limit: the last key
  // each sees, counted from split_begin (32 bits save registers).
  int limit[2];
#pragma unroll
  for (int slot = 0; slot < 2; ++slot)
    limit[slot] = static_cast<int>(
        min(first_position + unpack(quad_row + 8 * slot, group, kv_head).position - split_begin, std::int64_t{INT_MAX}));
  // Scores in the log2 domain: exp2(s · log2 e / sqrt(d)) = exp(s / sqrt(d)).
  const float scale = 1.4426950408889634f * rsqrtf(static_cast<float>(p.d));
  float out[kDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int tile = 0; tile < key_tiles; ++tile) {
    wait_copies<kDecodeStages - 2>();
    __syncthreads();  // this stage has landed for every thread; every warp is done with the last one
    if (tile + kDecodeStages - 1 < key_tiles) load_stage(tile + kDecodeStages - 1);
    commit_copies();
    if (!computes) continue;
    const int stage = tile % kDecodeStages;
    const int first_row_of_warp = kKeysPerWarp * key_warp;
    const int warp_key = tile * kDecodeKeysPerStage + first_row_of_warp;  // from split_begin

    // S = Q Kᵀ over the warp's 16 keys.
    float s[2][4] = {};
#pragma unroll
    for (int k = 0; k < kDim / 16; ++k) {
      std::uint32_t b[4];
      load_matrix_x4(b, &tiles.k[stage][head][swizzled(first_row_of_warp + matrix_row + (matrix / 2) * 8,
                                                        2 * k + matrix % 2)]);
      mma(s[0], q_frag[k], b[0], b[1]);
      mma(s[1], q_frag[k], b[2], b[3]);
    }

    // Online softmax; keys past a row's position (or past the split) are masked.
    const bool masked = warp_key + kKeysPerWarp - 1 > min(limit[0], limit[1]);
#pragma unroll
    for (int slot = 0; slot < 2; ++slot)
      online_softmax_row(s, slot, masked, warp_key, quad_col, limit[slot], scale, row_max[slot], row_sum[slot], out);

    // O += P V: the score accumulators are mma's A layout, in pairs.
    const std::uint32_t p_frag[4] = {pack(s[0][0], s[0][1]), pack(s[0][2], s[0][3]), pack(s[1][0], s[1][1]),
                                     pack(s[1][2], s[1][3])};
#pragma unroll
    for (int n = 0; n < kDim / 16; ++n) {
      std::uint32_t b[4];
      load_matrix_x4_transposed(b, &tiles.v[stage][head][swizzled(first_row_of_warp + matrix_row + (matrix % 2) * 8,
                                                                  2 * n + matrix / 2)]);
      mma(out[2 * n], p_frag, b[0], b[1]);
      mma(out[2 * n + 1], p_frag, b[2], b[3]);
    }
  }
  wait_copies<0>();
  __syncthreads();  // no copy targets shared memory and every warp is done with the stages

  auto& merge = *reinterpret_cast<DecodeMerge*>(shared_memory);
#pragma unroll
  for (int slot = 0; slot < 2; ++slot) {
    const int r = quad_row + 8 * slot;
    const float sum = quad_sum(row_sum[slot]);
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n)
      *reinterpret_cast<float2*>(&merge.out[warp][r][8 * n + quad_col]) =
          make_float2(out[n][2 * slot], out[n][2 * slot + 1]);
    if (lane % 4 == 0) {
      merge.max[warp][r] = row_max[slot] * scale;
      merge.sum[warp][r] = sum;
    }
  }
  __syncthreads();

  // A head's warps merged, one element of its output per thread and step.
  for (int i = threadIdx.x; i < block_kv_heads * kMmaRows * kDim; i += kDecodeThreads) {
    const int merged_head = i / (kMmaRows * kDim), r = i / kDim % kMmaRows, c = i % kDim;
    if (r >= packed_rows || c >= p.d) continue;
    const int first_warp = merged_head * kDecodeWarpsPerHead;
    float block_max = -INFINITY;
#pragma unroll
    for (int w = first_warp; w < first_warp + kDecodeWarpsPerHead; ++w) block_max = fmaxf(block_max, merge.max[w][r]);
    float total = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = first_warp; w < first_warp + kDecodeWarpsPerHead; ++w)
      if (merge.max[w][r] != -INFINITY) {
        const float weight = fast_exp2(merge.max[w][r] - block_max);
        total += merge.sum[w][r] * weight;
        o += merge.out[w][r][c] * weight;
      }
    const PackedRow row = unpack(r, group, first_kv_head + merged_head);
    const std::int64_t item = row.position * p.heads + row.head;
    if (splits == 1) {
      p.out[item * p.d + c] = __float2bfloat16_rn(o / total);
    } else {
      const std::int64_t partial = item * splits + split;
      p.partial_out[partial * p.d + c] = o;
      if (c == 0) {
        p.partial_stats[2 * partial] = block_max;  // -inf: the split holds no key this row sees
        p.partial_stats[2 * partial + 1] = total;
      }
    }
  }
}

}  // namespace lightdesk::cuda::flash
