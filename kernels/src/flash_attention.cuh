// Device code shared by the tensor-core softmax attention kernels (the packed rows, a block's
// keys, the online-softmax row update, the result rows), and the mma.sync prefill kernel (flash
// attention 2, bf16 operands, float32 online softmax) for GPUs without sm_90a. The prefill on
// Hopper is flash_attention_hopper.cuh, decode flash_decode.cuh; attention.cu plans and launches
// them.
//
// Query rows are packed with their GQA group: a thread block works on one KV head and a tile of
// (query position, query head of the group) pairs, so each K/V tile it loads from memory serves
// every query head of the group (8 at MiniMax's 64/8). Decode (one position, 8 heads: one
// 16-row tile) has a kernel of its own, flash_decode.cuh. When the row tiles do not fill the GPU
// the keys are split over thread blocks and attention.cu's combine_splits_kernel merges the
// splits' partial softmaxes.
#pragma once

#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "common.cuh"
#include "tensor_core.cuh"

namespace lightdesk::cuda::flash {

// The kernels work on head_dim padded to kDim (zero-filled), in 16-byte pieces of 8 bf16.
constexpr int kDim = kMaxHeadDim;
constexpr int kPiecesPerRow = kDim / 8;
constexpr int kKeysPerTile = 64;
constexpr int kMmaRows = 16;

// What one launch computes: `rows` query positions first_position.. over the keys of `kv`.
struct Problem {
  const bf16* q;  // [rows, heads * d]
  KvCacheView<const bf16> kv;
  bf16* out;  // [rows, heads * d]
  std::int64_t rows;
  Position first_position;
  int heads, kv_heads, d;
  int key_tiles_per_split;  // prefill kernels: the keys split over gridDim.z blocks in runs of this many tiles
  // Several splits: [item, split, d] unnormalised and [item, split, {max (log2 domain), sum}],
  // item = query position · heads + head.
  float* partial_out;
  float* partial_stats;
};

// Shared memory: rows of kDim bf16 as 16-byte pieces, swizzled (tensor_core.cuh).
__device__ __forceinline__ int swizzled(int row, int piece) { return tensor_core::swizzled<kPiecesPerRow>(row, piece); }
using namespace tensor_core;  // the mma, ldmatrix and cp.async helpers (tensor_core.cuh)

// The packed rows of a tile: packed row r is query position r / group, head kv_head · group + r % group.
struct PackedRow {
  std::int64_t position;  // query index in 0..rows-1 (or past it: padding)
  int head;
};
__device__ __forceinline__ PackedRow unpack(std::int64_t packed, int group, int kv_head) {
  return {packed / group, kv_head * group + static_cast<int>(packed % group)};
}

// kWarps warps of kWarpRowTiles · 16 packed rows each: every K/V fragment a warp loads from
// shared memory serves kWarpRowTiles products.
template <int kWarps, int kWarpRowTiles>
struct SharedTiles {
  static constexpr int kRowsPerWarp = kWarpRowTiles * kMmaRows;
  static constexpr int kRows = kWarps * kRowsPerWarp;
  uint4 q[kRows * kPiecesPerRow];
  uint4 k[2][kKeysPerTile * kPiecesPerRow];
  uint4 v[2][kKeysPerTile * kPiecesPerRow];
};

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// What one thread block of a flash kernel covers: its packed rows (query positions × the heads of
// the group) and its split of the keys.
struct BlockKeys {
  int group, kv_head;
  std::int64_t first_position;  // of the launch's first query row
  std::int64_t first_packed, packed_rows;
  std::int64_t split_begin, keys_end;  // keys of the split that some row of the block sees
  int key_tiles;
};
// Grid (packed-row tiles of rows_per_block, KV heads, key splits).
__device__ __forceinline__ BlockKeys block_keys(const Problem& p, int rows_per_block, int keys_per_tile) {
  BlockKeys b;
  b.group = p.heads / p.kv_heads;
  b.kv_head = blockIdx.y;
  b.first_position = p.first_position.get();
  // Tiles of later positions see more keys: start them first.
  b.first_packed = std::int64_t{gridDim.x - 1 - blockIdx.x} * rows_per_block;
  b.packed_rows = p.rows * b.group;
  const std::int64_t last_position =
      unpack(min(b.first_packed + rows_per_block, b.packed_rows) - 1, b.group, b.kv_head).position;
  b.split_begin = std::int64_t{blockIdx.z} * p.key_tiles_per_split * keys_per_tile;
  b.keys_end = min(b.split_begin + std::int64_t{p.key_tiles_per_split} * keys_per_tile,
                   b.first_position + last_position + 1);
  b.key_tiles = b.keys_end > b.split_begin
                    ? static_cast<int>((b.keys_end - b.split_begin + keys_per_tile - 1) / keys_per_tile)
                    : 0;
  return b;
}
// The last key packed row `packed` sees, counted from the split's first (32 bits save registers).
__device__ __forceinline__ int row_limit(const BlockKeys& b, std::int64_t packed) {
  return static_cast<int>(
      min(b.first_position + unpack(packed, b.group, b.kv_head).position - b.split_begin, std::int64_t{INT_MAX}));
}

// Over the quad of lanes that holds one accumulator row (lanes 4 r .. 4 r + 3).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Online softmax: raises a row's running maximum (of the unscaled scores; scale > 0) to a tile's;
// `base` is subtracted from the tile's scaled scores (log2 domain), `correction` scales the row's
// earlier sum and output. A row that has seen no key yet keeps everything at zero.
struct RowRescale {
  float base, correction;
};
__device__ __forceinline__ RowRescale raise_row_max(float& row_max, float tile_max, float scale) {
  const float new_max = fmaxf(row_max, tile_max);
  const float base = new_max == -INFINITY ? 0.0f : new_max * scale;
  const RowRescale rescale{base, fast_exp2(row_max * scale - base)};
  row_max = new_max;
  return rescale;
}

// One row's online-softmax step over kTiles score tiles of 8 keys, in this thread's two columns
// of each (c[2 · half], c[2 · half + 1] of mma's C layout, column quad_col + e of a tile):
// where `masked`, keys past `limit` (both counted like first_key) become -inf; the row's max and
// sum move on (raise_row_max), its output accumulators (the same half of kDim / 8 tiles) are
// rescaled, and the scores become their weights exp2(s · scale − max · scale).
template <int kTiles>
__device__ __forceinline__ void online_softmax_row(float (&s)[kTiles][4], int half, bool masked, int first_key,
                                                   int quad_col, int limit, float scale, float& row_max,
                                                   float& row_sum, float (&out)[kDim / 8][4]) {
  float tile_max = -INFINITY;
#pragma unroll
  for (int n = 0; n < kTiles; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float& v = s[n][2 * half + e];
      if (masked && first_key + 8 * n + quad_col + e > limit) v = -INFINITY;
      tile_max = fmaxf(tile_max, v);
    }
  const RowRescale rescale = raise_row_max(row_max, quad_max(tile_max), scale);
  float sum = 0.0f;
#pragma unroll
  for (int n = 0; n < kTiles; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float& v = s[n][2 * half + e];
      v = fast_exp2(fmaf(v, scale, -rescale.base));
      sum += v;
    }
  row_sum = row_sum * rescale.correction + sum;
#pragma unroll
  for (int n = 0; n < kDim / 8; ++n) {
    out[n][2 * half] *= rescale.correction;
    out[n][2 * half + 1] *= rescale.correction;
  }
}

// Packed row `packed` of the block's result, from the thread's columns 8 n + quad_col + e,
// value(n, e): with one split the normalised row in bf16, else the split's unnormalised float32
// row and, from the quad's first lane, its maximum (log2 domain; -inf: the split holds no key the
// row sees) and sum, at item position · heads + head, split blockIdx.z (Problem's layout).
template <typename Value>
__device__ __forceinline__ void write_row(const Problem& p, const BlockKeys& b, std::int64_t packed, int quad_col,
                                          bool first_lane, float max_log2, float sum, Value value) {
  if (packed >= b.packed_rows) return;
  const PackedRow row = unpack(packed, b.group, b.kv_head);
  const std::int64_t item = row.position * p.heads + row.head;
  if (gridDim.z == 1) {
    bf16* o = p.out + item * p.d;
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n)
      if (8 * n + quad_col < p.d)
        *reinterpret_cast<__nv_bfloat162*>(o + 8 * n + quad_col) =
            __floats2bfloat162_rn(value(n, 0) / sum, value(n, 1) / sum);
  } else {
    const std::int64_t partial = item * gridDim.z + blockIdx.z;
    float* o = p.partial_out + partial * p.d;
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n)
      if (8 * n + quad_col < p.d) *reinterpret_cast<float2*>(o + 8 * n + quad_col) = make_float2(value(n, 0), value(n, 1));
    if (first_lane) {
      p.partial_stats[2 * partial] = max_log2;
      p.partial_stats[2 * partial + 1] = sum;
    }
  }
}

// Grid (packed-row tiles, KV heads, key splits).
template <int kWarps, int kWarpRowTiles>
__global__ void __launch_bounds__(kWarps * 32) flash_attention_kernel(Problem p) {
  using Tiles = SharedTiles<kWarps, kWarpRowTiles>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kRows = Tiles::kRows;
  constexpr int kRowsPerWarp = Tiles::kRowsPerWarp;
  constexpr int kSlots = 2 * kWarpRowTiles;  // rows per thread: quad_row + 8 · slot of the warp's rows
  extern __shared__ uint4 shared_memory[];
  auto& tiles = *reinterpret_cast<Tiles*>(shared_memory);

  const BlockKeys b = block_keys(p, kRows, kKeysPerTile);
  const std::int64_t q_stride = std::int64_t{p.heads} * p.d;
  const std::int64_t kv_stride = std::int64_t{p.kv_heads} * p.d;
  const int pieces = p.d / 8;
  // Tiles past this key (counted from split_begin) cross the diagonal of some row.
  const int first_limit = row_limit(b, b.first_packed);

  auto load_keys_values = [&](int tile, int stage) {
    const std::int64_t key0 = b.split_begin + std::int64_t{tile} * kKeysPerTile;
    const std::int64_t offset0 = p.kv.row_offset(key0, kv_stride) + std::int64_t{b.kv_head} * p.d;
    for (int i = threadIdx.x; i < kKeysPerTile * kPiecesPerRow; i += kThreads) {
      const int r = i / kPiecesPerRow, c = i % kPiecesPerRow;
      // A tile lies inside one page (pages hold a multiple of kKeysPerTile positions).
      const std::int64_t offset = offset0 + std::int64_t{r} * kv_stride + c * 8;
      const bool valid = key0 + r < b.keys_end && c < pieces;
      copy_piece(&tiles.k[stage][swizzled(r, c)], valid ? p.kv.keys + offset : p.kv.keys, valid);
      copy_piece(&tiles.v[stage][swizzled(r, c)], valid ? p.kv.values + offset : p.kv.values, valid);
    }
  };

  for (int i = threadIdx.x; i < kRows * kPiecesPerRow; i += kThreads) {
    const int r = i / kPiecesPerRow, c = i % kPiecesPerRow;
    const std::int64_t packed = b.first_packed + r;
    const PackedRow row = unpack(packed, b.group, b.kv_head);
    const bool valid = packed < b.packed_rows && c < pieces;
    const bf16* src = p.q + row.position * q_stride + std::int64_t{row.head} * p.d + c * 8;
    copy_piece(&tiles.q[swizzled(r, c)], valid ? src : p.q, valid);
  }
  if (b.key_tiles > 0) load_keys_values(0, 0);
  commit_copies();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
  // This thread's rows: quad_row + 8 · slot of the warp's rows; slot = 2 · m + half holds the
  // accumulator elements 2 · half, 2 · half + 1 of row tile m.
  int limit[kSlots];  // last key each row sees (row_limit)
#pragma unroll
  for (int slot = 0; slot < kSlots; ++slot) limit[slot] = row_limit(b, b.first_packed + warp * kRowsPerWarp + quad_row + 8 * slot);
  // Scores in the log2 domain: exp2(s · log2 e / sqrt(d)) = exp(s / sqrt(d)).
  const float scale = 1.4426950408889634f * rsqrtf(static_cast<float>(p.d));

  float out[kWarpRowTiles][kDim / 8][4] = {};
  float row_max[kSlots], row_sum[kSlots];
#pragma unroll
  for (int slot = 0; slot < kSlots; ++slot) {
    row_max[slot] = -INFINITY;
    row_sum[slot] = 0.0f;
  }

  // ldmatrix lane addresses: lanes 8i..8i+7 give the rows of the i-th 8×8 matrix.
  const int matrix = lane / 8, matrix_row = lane % 8;

  for (int tile = 0; tile < b.key_tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < b.key_tiles) {
      load_keys_values(tile + 1, stage ^ 1);
      commit_copies();
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();

    // S = Q Kᵀ for the warp's rows and the tile's 64 keys (Q fragments re-read from shared memory:
    // registers hold the output).
    float s[kWarpRowTiles][kKeysPerTile / 8][4] = {};
#pragma unroll
    for (int k = 0; k < kDim / 16; ++k) {
      std::uint32_t q_frag[kWarpRowTiles][4];
#pragma unroll
      for (int m = 0; m < kWarpRowTiles; ++m)
        load_matrix_x4(q_frag[m], &tiles.q[swizzled(warp * kRowsPerWarp + kMmaRows * m + matrix_row + (matrix % 2) * 8,
                                                    2 * k + matrix / 2)]);
#pragma unroll
      for (int n = 0; n < kKeysPerTile / 16; ++n) {
        std::uint32_t b[4];
        load_matrix_x4(b, &tiles.k[stage][swizzled(16 * n + matrix_row + (matrix / 2) * 8, 2 * k + matrix % 2)]);
#pragma unroll
        for (int m = 0; m < kWarpRowTiles; ++m) {
          mma(s[m][2 * n], q_frag[m], b[0], b[1]);
          mma(s[m][2 * n + 1], q_frag[m], b[2], b[3]);
        }
      }
    }

    // Online softmax; keys past a row's position are masked (only tiles crossing the diagonal).
    const bool masked = tile * kKeysPerTile + kKeysPerTile - 1 > first_limit;
#pragma unroll
    for (int slot = 0; slot < kSlots; ++slot)
      online_softmax_row(s[slot / 2], slot % 2, masked, tile * kKeysPerTile, quad_col, limit[slot], scale,
                         row_max[slot], row_sum[slot], out[slot / 2]);

    // O += P V, P from the score accumulators (their layout is mma's A layout, in pairs).
#pragma unroll
    for (int k = 0; k < kKeysPerTile / 16; ++k) {
      std::uint32_t p_frag[kWarpRowTiles][4];
#pragma unroll
      for (int m = 0; m < kWarpRowTiles; ++m) {
        p_frag[m][0] = pack(s[m][2 * k][0], s[m][2 * k][1]);
        p_frag[m][1] = pack(s[m][2 * k][2], s[m][2 * k][3]);
        p_frag[m][2] = pack(s[m][2 * k + 1][0], s[m][2 * k + 1][1]);
        p_frag[m][3] = pack(s[m][2 * k + 1][2], s[m][2 * k + 1][3]);
      }
#pragma unroll
      for (int n = 0; n < kDim / 16; ++n) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(b,
                                  &tiles.v[stage][swizzled(16 * k + matrix_row + (matrix % 2) * 8, 2 * n + matrix / 2)]);
#pragma unroll
        for (int m = 0; m < kWarpRowTiles; ++m) {
          mma(out[m][2 * n], p_frag[m], b[0], b[1]);
          mma(out[m][2 * n + 1], p_frag[m], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's copies overwrite this stage
  }
  wait_copies<0>();  // no copy may still target shared memory when the block exits

#pragma unroll
  for (int slot = 0; slot < kSlots; ++slot) {
    const int m = slot / 2, half = slot % 2;
    write_row(p, b, b.first_packed + warp * kRowsPerWarp + quad_row + 8 * slot, quad_col, lane % 4 == 0,
              row_max[slot] * scale, quad_sum(row_sum[slot]), [&](int n, int e) { return out[m][n][2 * half + e]; });
  }
}

}  // namespace lightdesk::cuda::flash
