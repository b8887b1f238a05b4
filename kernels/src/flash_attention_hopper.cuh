// The bf16 prefill of the softmax attention on Hopper (sm_90a): flash attention on warpgroup MMA
// with warp specialisation, in the manner of FlashAttention-3. Included by attention.cu.
//
// A thread block works on one KV head and 128 packed rows (flash_attention.cuh: query positions ×
// the heads of the group), in three warpgroups:
// - the producer copies 128-key tiles of K and V into shared memory (cp.async, one row address
//   per key, so any page size works), kHopperStages deep; each tile's `k_full` or `v_full`
//   mbarrier completes once its copies have landed, without holding the producer up;
// - two consumers of 64 rows each run S = Q Kᵀ (wgmma, both operands in shared memory), the
//   online softmax on S in registers, and O += P V (wgmma with P from registers, V read
//   transposed from its [key][dim] rows), and release K and V through `k_empty` and `v_empty`.
// Each consumer issues S(t) = Q K(t) and O += P(t-1) V(t-1) together (16 wgmma back to back),
// then runs the softmax of S(t); the two consumers take turns at issuing (named barriers), so
// one's softmax overlaps the other's products. The producer gives most of its registers to the
// consumers (setmaxnreg), which hold S, P and O (64 + 32 + 64 per thread).
#pragma once

#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "flash_attention.cuh"
#include "hopper.cuh"

namespace lightdesk::cuda::flash {

constexpr int kHopperRows = 128;  // packed rows per thread block
constexpr int kHopperKeys = 128;  // keys per K/V tile
// K/V tiles in flight: 3 took 0.536 / 7.01 / 30.8 ms at 4K / 16K / 32K tokens, 2 took 0.547 /
// 7.15 / 31.6 ms (H200, the benchmark's 64/8 heads).
constexpr int kHopperStages = 3;
constexpr int kConsumers = 2;  // warpgroups of 64 rows
constexpr int kConsumerRows = kHopperRows / kConsumers;
constexpr int kHopperThreads = (kConsumers + 1) * hopper::kWarpgroupThreads;
// Registers per thread after the hand-over: 40 · 128 + 232 · 256 <= 64K, the multiprocessor's file.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;

// Matrices of kDim (128) bf16 columns, in two 128-byte-swizzled column blocks (hopper.cuh).
struct HopperTiles {
  static constexpr int kTileBytes = kHopperKeys * kDim * 2;
  alignas(hopper::kSwizzleAtomBytes) unsigned char q[kHopperRows * kDim * 2];
  alignas(hopper::kSwizzleAtomBytes) unsigned char k[kHopperStages][kTileBytes];
  alignas(hopper::kSwizzleAtomBytes) unsigned char v[kHopperStages][kTileBytes];
  std::uint64_t k_full[kHopperStages], v_full[kHopperStages];    // the stage's tile has landed
  std::uint64_t k_empty[kHopperStages], v_empty[kHopperStages];  // both consumers are done with it
};
// Dynamic shared memory starts 16-byte aligned: room to align the tiles to a swizzle atom.
constexpr std::size_t kHopperSharedBytes = sizeof(HopperTiles) + hopper::kSwizzleAtomBytes;
static_assert(kHopperSharedBytes <= 227 * 1024, "a Hopper thread block has at most 227 KB of shared memory");

// Grid (packed-row tiles, KV heads, key splits), as flash_attention_kernel's.
__global__ void __launch_bounds__(kHopperThreads, 1) flash_attention_hopper_kernel(Problem p) {
#if defined(LIGHTDESK_HOPPER_WGMMA)
  using namespace hopper;
  extern __shared__ unsigned char shared_bytes[];
  const std::uint32_t misalignment = shared_address(shared_bytes) % kSwizzleAtomBytes;
  auto& tiles = *reinterpret_cast<HopperTiles*>(shared_bytes + (kSwizzleAtomBytes - misalignment) % kSwizzleAtomBytes);

  const BlockKeys b = block_keys(p, kHopperRows, kHopperKeys);
  const std::int64_t kv_stride = std::int64_t{p.kv_heads} * p.d;
  const int pieces = p.d / 8;

  const int warpgroup = threadIdx.x / kWarpgroupThreads;
  const int thread = threadIdx.x % kWarpgroupThreads;
  if (threadIdx.x == 0) {
    for (int stage = 0; stage < kHopperStages; ++stage) {
      barrier_init(&tiles.k_full[stage], kWarpgroupThreads);
      barrier_init(&tiles.v_full[stage], kWarpgroupThreads);
      barrier_init(&tiles.k_empty[stage], kConsumers * kWarpgroupThreads);
      barrier_init(&tiles.v_empty[stage], kConsumers * kWarpgroupThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warpgroup == 0) {
    // Producer: thread t copies piece t % 16 of rows t / 16 + 8 i; a warp covers two whole rows.
    // Pages hold at least 64 positions and tiles start at multiples of 128: a tile's keys come in
    // runs of 64 inside one page, one page-table look-up each, and a thread's rows in a run are
    // a fixed stride apart in memory and in the swizzled tile (the same row % 8).
    release_registers<kProducerRegisters>();
    constexpr int kRun = 1 << kMinKvPageShift;
    static_assert(kHopperKeys % kRun == 0, "tiles split into whole runs of a page");
    const int piece = thread % kPiecesPerRow, first_row = thread / kPiecesPerRow;
    constexpr int kRowStep = kWarpgroupThreads / kPiecesPerRow;
    const bool piece_valid = piece < pieces;
    const std::uint32_t first_offset = swizzled_offset(kHopperKeys, first_row, piece);
    const std::int64_t row_step = kRowStep * kv_stride;
    // Each tile's `full` barrier completes when every producer thread's copies of it have landed;
    // the consumers fence them for wgmma (hopper.cuh).
    auto copy_tile = [&](const bf16* source, unsigned char* tile_memory, std::int64_t key0, std::uint64_t* full) {
      auto copy_runs = [&](auto checked_rows) {
        constexpr bool kChecked = decltype(checked_rows)::value;
#pragma unroll
        for (int run = 0; run < kHopperKeys / kRun; ++run) {
          const std::int64_t run_key = key0 + run * kRun + first_row;
          // Keys past the split's end are zeros (masked: no row of the tile sees them); a run
          // past it has no page.
          const bf16* from = source;
          if (!kChecked || key0 + run * kRun < b.keys_end)
            from += p.kv.row_offset(run_key, kv_stride) + std::int64_t{b.kv_head} * p.d + piece * 8;
#pragma unroll
          for (int i = 0; i < kRun / kRowStep; ++i) {
            const bool valid = !kChecked || (piece_valid && run_key + i * kRowStep < b.keys_end);
            copy_piece(
                reinterpret_cast<uint4*>(tile_memory + first_offset + (run * kRun + i * kRowStep) * kSwizzleRowBytes),
                valid ? from + i * row_step : source, valid);
          }
        }
      };
      // Whole tiles of full rows (all but the last tile, at head_dim 128) skip the checks.
      if (piece_valid && key0 + kHopperKeys <= b.keys_end)
        copy_runs(std::false_type{});
      else
        copy_runs(std::true_type{});
      barrier_arrive_on_copies(full);
    };
    for (int tile = 0; tile < b.key_tiles; ++tile) {
      const int stage = tile % kHopperStages, round = tile / kHopperStages;
      const std::int64_t key0 = b.split_begin + std::int64_t{tile} * kHopperKeys;
      if (round > 0) barrier_wait(&tiles.k_empty[stage], (round - 1) & 1);
      copy_tile(p.kv.keys, tiles.k[stage], key0, &tiles.k_full[stage]);
      if (round > 0) barrier_wait(&tiles.v_empty[stage], (round - 1) & 1);
      copy_tile(p.kv.values, tiles.v[stage], key0, &tiles.v_full[stage]);
    }
    // No copy may still target shared memory when the thread exits.
    commit_copies();
    wait_copies<0>();
  } else {
    claim_registers<kConsumerRegisters>();
    const int consumer = warpgroup - 1;
    const int warp = thread / 32, lane = thread % 32;
    const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
    const std::int64_t first_row = b.first_packed + consumer * kConsumerRows;

    // The consumer's 64 rows of Q.
    const std::int64_t q_stride = std::int64_t{p.heads} * p.d;
    for (int i = thread; i < kConsumerRows * kPiecesPerRow; i += kWarpgroupThreads) {
      const int r = consumer * kConsumerRows + i / kPiecesPerRow, c = i % kPiecesPerRow;
      const std::int64_t packed = b.first_packed + r;
      const PackedRow row = unpack(packed, b.group, b.kv_head);
      const bool valid = packed < b.packed_rows && c < pieces;
      const bf16* src = p.q + row.position * q_stride + std::int64_t{row.head} * p.d + c * 8;
      copy_piece(reinterpret_cast<uint4*>(tiles.q + swizzled_offset(kHopperRows, r, c)), valid ? src : p.q, valid);
    }
    commit_copies();
    wait_copies<0>();
    fence_shared_for_async_proxy();
    named_barrier_sync(1 + consumer, kWarpgroupThreads);

    // This thread's rows: quad_row + 8 h of the warp's 16 (the accumulator layout, hopper.cuh).
    const std::int64_t row0 = first_row + 16 * warp + quad_row;
    const int limit[2] = {row_limit(b, row0), row_limit(b, row0 + 8)};  // last key each row sees
    // Tiles past this key (counted from split_begin) cross the diagonal of some row.
    const int first_limit = row_limit(b, first_row);
    // Scores in the log2 domain: exp2(s · log2 e / sqrt(d)) = exp(s / sqrt(d)).
    const float scale = 1.4426950408889634f * rsqrtf(static_cast<float>(p.d));

    float out[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) out[i] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    float s[64];
    std::uint32_t probabilities[kHopperKeys / 16][4];

    constexpr std::uint32_t kColumnBlockBytes = HopperTiles::kTileBytes / 2;  // 128 rows × 64 columns
    static_assert(kHopperRows == kHopperKeys, "Q and K/V tiles share the column-block stride");
    const std::uint32_t q_address = shared_address(tiles.q) + consumer * kConsumerRows * kSwizzleRowBytes;

    // Descriptors of the first stage's tiles; the steps and stages only move the start address.
    const std::uint64_t q_descriptor = matrix_descriptor(q_address, 16, kSwizzleAtomBytes);
    const std::uint64_t k_descriptor = matrix_descriptor(shared_address(tiles.k[0]), 16, kSwizzleAtomBytes);
    const std::uint64_t v_descriptor =
        matrix_descriptor(shared_address(tiles.v[0]), kColumnBlockBytes, kSwizzleAtomBytes);
    // S = Q Kᵀ, 16 dims a step: both K-major, the step's 32 bytes inside the swizzled rows.
    auto issue_scores = [&](int stage) {
      const std::uint64_t k_stage = advance(k_descriptor, stage * HopperTiles::kTileBytes);
#pragma unroll
      for (int step = 0; step < kDim / 16; ++step) {
        const std::uint32_t at = (step / 4) * kColumnBlockBytes + (step % 4) * 32;
        wgmma_64x128x16(s, advance(q_descriptor, at), advance(k_stage, at), step > 0);
      }
      wgmma_commit();
    };
    // O += P V: V MN-major, rows of 16 keys a step, its two 64-dim column blocks kColumnBlockBytes apart.
    auto issue_values = [&](int stage) {
      const std::uint64_t v_stage = advance(v_descriptor, stage * HopperTiles::kTileBytes);
#pragma unroll
      for (int step = 0; step < kHopperKeys / 16; ++step)
        wgmma_64x128x16(out, probabilities[step], advance(v_stage, step * 16 * kSwizzleRowBytes), true);
      wgmma_commit();
    };
    // The consumers take turns at issuing products: each waits for its turn (the other's arrival)
    // and passes it on; the second consumer starts by passing the first turn. (Without turns:
    // 1-2 % slower at 4K and 16K tokens, H200.)
    const int my_turn = 3 + consumer, other_turn = 3 + (1 - consumer);
    constexpr int kTurnThreads = kConsumers * kWarpgroupThreads;

    // Keys past a row's position score -inf; only tiles crossing the diagonal have such keys, and
    // only they pay for the comparisons.
    auto mask_scores = [&](int tile) {
      if (tile * kHopperKeys + kHopperKeys - 1 <= first_limit) return;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Compared with the column offsets 8 j + e alone: no per-column registers.
        const int tile_limit = limit[h] - tile * kHopperKeys - quad_col;
#pragma unroll
        for (int j = 0; j < kHopperKeys / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (8 * j + e > tile_limit) s[4 * j + 2 * h + e] = -INFINITY;
      }
    };
    // Online softmax of S in place (P, unnormalised); returns each row's correction of the
    // earlier output.
    auto softmax = [&](float (&correction)[2]) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Four partial maxima and sums: short dependency chains (two warps share a scheduler).
        float partial[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < kHopperKeys / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) partial[(2 * j + e) % 4] = fmaxf(partial[(2 * j + e) % 4], s[4 * j + 2 * h + e]);
        const float tile_max = fmaxf(fmaxf(partial[0], partial[1]), fmaxf(partial[2], partial[3]));
        const RowRescale rescale = raise_row_max(row_max[h], quad_max(tile_max), scale);
        correction[h] = rescale.correction;
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < kHopperKeys / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[4 * j + 2 * h + e];
            v = fast_exp2(fmaf(v, scale, -rescale.base));
            partial[(2 * j + e) % 4] += v;
          }
        row_sum[h] = row_sum[h] * correction[h] + ((partial[0] + partial[1]) + (partial[2] + partial[3]));
      }
    };
    // P as the register A operand: the accumulator pairs of 16 keys are the A fragment.
    auto pack_probabilities = [&] {
#pragma unroll
      for (int step = 0; step < kHopperKeys / 16; ++step)
#pragma unroll
        for (int i = 0; i < 4; ++i) probabilities[step][i] = pack(s[8 * step + 2 * i], s[8 * step + 2 * i + 1]);
    };

    if (b.key_tiles > 0) {
      if (consumer == 1) named_barrier_arrive(other_turn, kTurnThreads);
      float correction[2];
      barrier_wait(&tiles.k_full[0], 0);
      fence_shared_for_async_proxy();
      named_barrier_sync(my_turn, kTurnThreads);
      wgmma_fence();
      issue_scores(0);
      named_barrier_arrive(other_turn, kTurnThreads);
      wgmma_wait<0>();
      keep_registers(s);
      barrier_arrive(&tiles.k_empty[0]);
      mask_scores(0);
      softmax(correction);  // the output is still zero: nothing to correct
      pack_probabilities();

      for (int tile = 1; tile < b.key_tiles; ++tile) {
        const int stage = tile % kHopperStages, previous = (tile - 1) % kHopperStages;
        barrier_wait(&tiles.k_full[stage], (tile / kHopperStages) & 1);
        barrier_wait(&tiles.v_full[previous], ((tile - 1) / kHopperStages) & 1);
        fence_shared_for_async_proxy();
        named_barrier_sync(my_turn, kTurnThreads);
        wgmma_fence();
        issue_scores(stage);
        issue_values(previous);
        named_barrier_arrive(other_turn, kTurnThreads);
        wgmma_wait<1>();
        keep_registers(s);
        barrier_arrive(&tiles.k_empty[stage]);
        // ptxas waits for P(t-1) V(t-1) before this softmax (the softmax rewrites the S
        // accumulators in place, which it does not do while products are in flight): the
        // tensor cores stay busy through the other consumer's products meanwhile. (A softmax
        // into a second P buffer that overlaps the product measured slower: 0.80-0.83x cuDNN
        // against 0.87-0.94x, H200, its code twice the size.)
        mask_scores(tile);
        softmax(correction);
        wgmma_wait<0>();
        keep_registers(out);
        keep_registers(probabilities);
        barrier_arrive(&tiles.v_empty[previous]);
#pragma unroll
        for (int j = 0; j < kDim / 8; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) out[4 * j + i] *= correction[i / 2];
        pack_probabilities();
      }

      const int last = (b.key_tiles - 1) % kHopperStages;
      barrier_wait(&tiles.v_full[last], ((b.key_tiles - 1) / kHopperStages) & 1);
      fence_shared_for_async_proxy();
      named_barrier_sync(my_turn, kTurnThreads);
      wgmma_fence();
      issue_values(last);
      // The second consumer's last turn has no taker.
      if (consumer == 0) named_barrier_arrive(other_turn, kTurnThreads);
      wgmma_wait<0>();
      keep_registers(out);
      barrier_arrive(&tiles.v_empty[last]);
    }

#pragma unroll
    for (int h = 0; h < 2; ++h)
      write_row(p, b, row0 + 8 * h, quad_col, lane % 4 == 0, row_max[h] * scale, quad_sum(row_sum[h]),
                [&](int n, int e) { return out[4 * n + 2 * h + e]; });
  }
#else
  __trap();  // launched only on sm_90a devices (attention.cu)
#endif
}

}  // namespace lightdesk::cuda::flash
