// Device code of the chunked lightning-attention prefill on tensor cores (bf16 q/k/v, float32
// state), included by lightning.cu, which plans and launches it.
//
// The rows are cut into chunks of kChunk rows, and the chunks into `segments` runs of
// chunks_per_segment consecutive chunks. With λ = exp(-s) per head, three launches:
//   1. segment_state_kernel, for every (head, segment) in parallel: the state the segment's
//      rows alone leave, S ← λ^m S + Σ_t λ^(m-1-t) k_tᵀ v_t over its chunks from S = 0,
//      float32 into the workspace.
//   2. scan_segment_states_kernel, per state element, sequentially over the segments: the
//      state at each segment's start (replacing the workspace entry) and the final state.
//   3. segment_output_kernel, for every (head, segment) in parallel: from the state at the
//      segment's start, chunk after chunk, the output
//        o_t = λ^(t+1) q_t S + Σ_{j≤t} λ^(t-j) (q_t·k_j) v_j      (t, j rows of the chunk)
//      then the running state update as in 1.
// Each head is a scan over its chunks; with 8 heads that is 8 scans, far too few to fill the
// GPU. Segments multiply the scans, at the cost of a second state update per chunk (launches
// 1 and 3) and a workspace of segments × heads × d × d floats (no state per chunk is stored).
// A thread block covers all value columns of its head, its warps splitting them in two halves,
// so each chunk's keys (and queries) cross from L2 into shared memory once: launch 1 of a
// 64-head 64K prefill took 1.14 ms so against 1.25 with a block per 64 columns, launch 3 the
// same 2.33 ms either way (H200).
// Precision: launch 1 splits each decayed key into two bf16 parts (16 significant bits), so the
// state that the session continues from stays within about 1e-6 of float32 arithmetic; in
// launch 3 the running state only feeds the segment's bf16 outputs, so one part suffices there,
// and the state enters Q S rounded to bf16 like the other operands. A segment whose state
// reaches the final state decayed by λ^(rows after it) ≤ 2^-32 feeds only later segments'
// outputs there, and launch 1 gives it one part too (MiniMax-Text-01's first layers decay so
// over a few thousand rows; its last layers hardly decay, and keep two parts).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "common.cuh"
#include "tensor_core.cuh"

namespace lightdesk::cuda::lightning_chunked {

using namespace tensor_core;  // the mma, ldmatrix and cp.async helpers (tensor_core.cuh)

constexpr int kChunk = 64;         // rows per chunk
constexpr int kDim = kMaxHeadDim;  // q/k/v width in shared memory (zero-padded past d)
constexpr int kSlice = 64;         // value columns (and state columns) per warp
constexpr int kWarps = 8;          // kRowGroups x (kDim / kSlice)
constexpr int kRowGroups = 4;      // warps along the state's rows and the chunk's rows
constexpr int kBlockThreads = kWarps * 32;
constexpr int kDimPieces = kDim / 8;  // 16-byte pieces per q/k/v row and state row
constexpr int kStateRowsPerWarp = kDim / kRowGroups;     // 32 state rows (key dims) per warp
constexpr int kOutputRowsPerWarp = kChunk / kRowGroups;  // 16 rows of a chunk's output per warp
constexpr int kStages = 3;  // chunks in shared memory: this one and the next two arriving
static_assert(kOutputRowsPerWarp == 16 && kStateRowsPerWarp == 32 && kWarps == kRowGroups * (kDim / kSlice),
              "the warp tiles below are written for these");

struct Problem {
  const bf16* qkv;  // [rows, heads * 3d], per head [q | k | v]
  bf16* out;        // [rows, heads * d]
  const float* slopes;
  float* state;           // [heads, d, d]: the state before the rows, then after them
  float* segment_states;  // workspace [segments, heads, d, d]
  std::int64_t rows;
  int heads, d;
  int chunks_per_segment, segments;
};

// One chunk's rows in shared memory, swizzled.
struct KeyValueTile {
  uint4 k[kChunk * kDimPieces];
  uint4 v[kChunk * kDimPieces];
};
struct StateShared {
  KeyValueTile tile[kStages];
  float decay[kChunk + 1];
};
struct OutputShared {
  KeyValueTile tile[kStages];
  uint4 q[kStages][kChunk * kDimPieces];
  uint4 state[2][kDim * kDimPieces];  // bf16 S [key dim, value]: read for this chunk, written for the next
  float decay[kChunk + 1];
};

// Lane roles in the fragments (tensor_core.cuh), and the warp's tiles: state rows
// state_row0.. (32) and value columns slice0.. (64). Its output rows are row tile
// output_tile of each chunk; the two warps of a multiprocessor's scheduler (warps w and w + 4)
// take tiles w and 3 - w, since tile r's causal part costs r + 1 and each scheduler so gets
// the same work.
struct Lane {
  int warp, quad_row, quad_col, matrix, matrix_row;
  int state_row0, slice0, slice_piece0, output_tile;
  __device__ Lane()
      : warp(threadIdx.x / 32),
        quad_row(threadIdx.x % 32 / 4),
        quad_col(2 * (threadIdx.x % 4)),
        matrix(threadIdx.x % 32 / 8),
        matrix_row(threadIdx.x % 8),
        state_row0(warp % kRowGroups * kStateRowsPerWarp),
        slice0(warp / kRowGroups * kSlice),
        slice_piece0(slice0 / 8),
        output_tile(warp < kRowGroups ? warp : kWarps - 1 - warp) {}
};

// Where a thread block works: a head over a segment's chunks.
struct Work {
  int head;
  std::int64_t first_chunk, end_chunk;
  __device__ explicit Work(const Problem& p)
      : head(blockIdx.x),
        first_chunk(std::int64_t{blockIdx.y} * p.chunks_per_segment),
        end_chunk(min(first_chunk + p.chunks_per_segment, (p.rows + kChunk - 1) / kChunk)) {}
};

__device__ __forceinline__ int chunk_rows(const Problem& p, std::int64_t chunk) {
  return static_cast<int>(min(std::int64_t{kChunk}, p.rows - chunk * kChunk));
}

// Starts the copies of a chunk's keys and values (and queries when q is given), zeros past the
// chunk's rows and past d, as one group of copies (also when the chunk is past the segment's
// end: then the group is empty, and every iteration waits for the same count of groups).
__device__ void load_chunk(const Problem& p, const Work& w, std::int64_t chunk, KeyValueTile& tile, uint4* q) {
  if (chunk < w.end_chunk) {
    const std::int64_t stride = std::int64_t{p.heads} * 3 * p.d;
    const int rows = chunk_rows(p, chunk);
    const bf16* base = p.qkv + chunk * kChunk * stride + std::int64_t{w.head} * 3 * p.d;
    const int pieces = p.d / 8;
    for (int i = threadIdx.x; i < kChunk * kDimPieces; i += kBlockThreads) {
      const int r = i / kDimPieces, c = i % kDimPieces;
      const bool valid = r < rows && c < pieces;
      const bf16* row = valid ? base + r * stride + c * 8 : p.qkv;
      const int at = swizzled<kDimPieces>(r, c);
      copy_piece(&tile.k[at], row + (valid ? p.d : 0), valid);
      copy_piece(&tile.v[at], row + (valid ? 2 * p.d : 0), valid);
      if (q) copy_piece(&q[at], row, valid);
    }
  }
  commit_copies();
}

__device__ void fill_decay(const Problem& p, int head, float* decay) {
  for (int i = threadIdx.x; i <= kChunk; i += kBlockThreads) decay[i] = expf(-(p.slopes[head] * static_cast<float>(i)));
}

// The warp's part of the state, float32 accumulators: rows (key dims) state_row0 + 16 · tile +
// quad_row (+8 for elements 2, 3), columns slice0 + 8 · n + quad_col (+1).
using StateFragments = float[2][kSlice / 8][4];

// S ← λ^m S + Kᵀ diag(λ^(m-1-t)) V for a chunk of m rows: the decayed keys, kParts bf16 parts
// each, are the A operand (Kᵀ through transposed loads), the bf16 values the B operand.
template <int kParts>
__device__ void update_state(StateFragments& state, const KeyValueTile& tile, const float* decay, int m,
                             const Lane& lane) {
  const float keep = decay[m];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < kSlice / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) state[mt][n][e] *= keep;
#pragma unroll
  for (int ks = 0; ks < kChunk / 16; ++ks) {
    // This thread's A elements multiply tokens t, t + 1 (registers 0, 1) and t + 8, t + 9 (2, 3).
    const int t = 16 * ks + lane.quad_col;
    float weight[4];
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int token = t + (x / 2) * 8 + x % 2;
      weight[x] = token < m ? decay[m - 1 - token] : 0.0f;
    }
    std::uint32_t a[2][kParts][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      std::uint32_t keys[4];
      load_matrix_x4_transposed(keys, &tile.k[swizzled<kDimPieces>(16 * ks + 8 * (lane.matrix / 2) + lane.matrix_row,
                                                                   (lane.state_row0 + 16 * mt) / 8 + lane.matrix % 2)]);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float2 key = unpack(keys[r]);
        float lo = key.x * weight[(r / 2) * 2], hi = key.y * weight[(r / 2) * 2 + 1];
#pragma unroll
        for (int part = 0; part < kParts; ++part) {
          a[mt][part][r] = pack(lo, hi);
          const float2 rounded = unpack(a[mt][part][r]);
          lo -= rounded.x;
          hi -= rounded.y;
        }
      }
    }
#pragma unroll
    for (int nn = 0; nn < kSlice / 16; ++nn) {
      std::uint32_t b[4];
      load_matrix_x4_transposed(b, &tile.v[swizzled<kDimPieces>(16 * ks + lane.matrix_row + (lane.matrix % 2) * 8,
                                                                lane.slice_piece0 + 2 * nn + lane.matrix / 2)]);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int part = 0; part < kParts; ++part) {
          mma(state[mt][2 * nn], a[mt][part], b[0], b[1]);
          mma(state[mt][2 * nn + 1], a[mt][part], b[2], b[3]);
        }
    }
  }
}

// Calls f(row, column, mt, n, e) for each state element this thread holds: row (key dim) and
// column (value) of StateFragments element [mt][n][e].
template <typename F>
__device__ __forceinline__ void for_each_state_element(const Lane& lane, F&& f) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < kSlice / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        f(lane.state_row0 + 16 * mt + lane.quad_row + 8 * (e / 2), lane.slice0 + 8 * n + lane.quad_col + e % 2, mt, n,
          e);
}

// The pipeline of both segment kernels: the segment's first two chunks start arriving; at each
// chunk the one two ahead starts into the stage the previous chunk has left.
__device__ __forceinline__ int stage_of(const Work& w, std::int64_t chunk) {
  return static_cast<int>((chunk - w.first_chunk) % kStages);
}

// ln 2^32: past this exponent of the decay, a segment's state is negligible in the final state.
constexpr float kNegligibleDecayExponent = 22.18f;

// Launch 1. Grid (heads, segments). Two blocks per multiprocessor (at most 128 registers).
__global__ void __launch_bounds__(kBlockThreads, 2) segment_state_kernel(Problem p) {
  extern __shared__ uint4 shared_memory[];
  auto& shared = *reinterpret_cast<StateShared*>(shared_memory);
  const Work w(p);
  const Lane lane;
  const std::int64_t rows_after = max(std::int64_t{0}, p.rows - w.end_chunk * kChunk);
  const bool exact = p.slopes[w.head] * static_cast<float>(rows_after) < kNegligibleDecayExponent;
  fill_decay(p, w.head, shared.decay);
  for (int ahead = 0; ahead < kStages - 1; ++ahead)
    load_chunk(p, w, w.first_chunk + ahead, shared.tile[ahead], nullptr);
  StateFragments state = {};
  for (std::int64_t chunk = w.first_chunk; chunk < w.end_chunk; ++chunk) {
    wait_copies<kStages - 2>();
    __syncthreads();  // this chunk is in; every warp is done with the previous one's stage
    load_chunk(p, w, chunk + kStages - 1, shared.tile[stage_of(w, chunk + kStages - 1)], nullptr);
    if (exact)
      update_state<2>(state, shared.tile[stage_of(w, chunk)], shared.decay, chunk_rows(p, chunk), lane);
    else
      update_state<1>(state, shared.tile[stage_of(w, chunk)], shared.decay, chunk_rows(p, chunk), lane);
  }
  float* out = p.segment_states + (std::int64_t{blockIdx.y} * p.heads + w.head) * p.d * p.d;
  for_each_state_element(lane, [&](int row, int column, int mt, int n, int e) {
    if (row < p.d && column < p.d) out[row * p.d + column] = state[mt][n][e];
  });
}

// Launch 2. Grid (state elements / (4 kScanThreads), heads): each thread scans 4 consecutive
// elements (16-byte accesses), and reads kScanBatch segments' entries before it writes any. With
// one 4-byte read in flight per thread, waiting on each, this launch took 0.82 ms of a 64-head
// prefill with 17 segments (H200); 4-byte reads 8 ahead 0.15 ms; so, 0.07 ms with 18.
constexpr int kScanThreads = 256;
constexpr int kScanBatch = 8;
__global__ void __launch_bounds__(kScanThreads) scan_segment_states_kernel(Problem p) {
  const int h = blockIdx.y;
  const std::int64_t elements = std::int64_t{p.d} * p.d;  // a multiple of 64: d is a multiple of 8
  const std::int64_t i = std::int64_t{blockIdx.x} * kScanThreads + threadIdx.x;
  if (i >= elements / 4) return;
  const std::int64_t segment_rows = std::int64_t{p.chunks_per_segment} * kChunk;
  const float slope = p.slopes[h];
  const float segment_decay = expf(-(slope * static_cast<float>(segment_rows)));
  const float last_decay = expf(-(slope * static_cast<float>(p.rows - (p.segments - 1) * segment_rows)));
  const std::int64_t segment_stride = std::int64_t{p.heads} * elements / 4;
  float4* entries = reinterpret_cast<float4*>(p.segment_states + h * elements) + i;
  float4& final_state = reinterpret_cast<float4*>(p.state + h * elements)[i];
  float4 s = final_state;
  for (int first = 0; first < p.segments; first += kScanBatch) {
    float4 local[kScanBatch];
#pragma unroll
    for (int j = 0; j < kScanBatch; ++j)
      if (first + j < p.segments) local[j] = entries[(first + j) * segment_stride];
#pragma unroll
    for (int j = 0; j < kScanBatch; ++j) {
      const int g = first + j;
      if (g < p.segments) {
        entries[g * segment_stride] = s;
        const float decay = g + 1 < p.segments ? segment_decay : last_decay;
        s = make_float4(decay * s.x + local[j].x, decay * s.y + local[j].y, decay * s.z + local[j].z,
                        decay * s.w + local[j].w);
      }
    }
  }
  final_state = s;
}

// Launch 3. Grid (heads, segments), one block per multiprocessor (255 registers a thread).
// Warp w computes row tile lane.output_tile of each chunk's output and its part of the running
// state, both in its value columns.
__global__ void __launch_bounds__(kBlockThreads, 1) segment_output_kernel(Problem p) {
  extern __shared__ uint4 shared_memory[];
  auto& shared = *reinterpret_cast<OutputShared*>(shared_memory);
  const Work w(p);
  const Lane lane;
  fill_decay(p, w.head, shared.decay);
  for (int ahead = 0; ahead < kStages - 1; ++ahead)
    load_chunk(p, w, w.first_chunk + ahead, shared.tile[ahead], shared.q[ahead]);

  StateFragments state;
  const float* start = p.segment_states + (std::int64_t{blockIdx.y} * p.heads + w.head) * p.d * p.d;
  for_each_state_element(lane, [&](int row, int column, int mt, int n, int e) {
    state[mt][n][e] = row < p.d && column < p.d ? start[row * p.d + column] : 0.0f;
  });
  // The bf16 copy of the state, the B operand of Q S.
  const auto store_state = [&](uint4* bf16_state) {
    for_each_state_element(lane, [&](int row, int column, int mt, int n, int e) {
      if (e % 2 == 0)
        reinterpret_cast<std::uint32_t*>(&bf16_state[swizzled<kDimPieces>(row, lane.slice_piece0 + n)])[lane.quad_col / 2] =
            pack(state[mt][n][e], state[mt][n][e + 1]);
    });
  };
  store_state(shared.state[0]);

  const std::int64_t out_stride = std::int64_t{p.heads} * p.d;
  const int tile_row0 = lane.output_tile * kOutputRowsPerWarp;
  const int first_row = tile_row0 + lane.quad_row;  // and first_row + 8
  for (std::int64_t chunk = w.first_chunk; chunk < w.end_chunk; ++chunk) {
    const int buffer = static_cast<int>(chunk - w.first_chunk) & 1;
    const int m = chunk_rows(p, chunk);
    wait_copies<kStages - 2>();
    __syncthreads();  // this chunk and its state are in; every warp is done with the previous chunk's buffers
    const int ahead = stage_of(w, chunk + kStages - 1);
    load_chunk(p, w, chunk + kStages - 1, shared.tile[ahead], shared.q[ahead]);
    const KeyValueTile& tile = shared.tile[stage_of(w, chunk)];
    const uint4* q_tile = shared.q[stage_of(w, chunk)];
    const uint4* state_tile = shared.state[buffer];

    // scores = Q Kᵀ (key tiles past the warp's rows are masked anyway), out = Q S.
    float scores[kChunk / 8][4] = {}, out[kSlice / 8][4] = {};
#pragma unroll
    for (int ks = 0; ks < kDim / 16; ++ks) {
      std::uint32_t q[4];
      load_matrix_x4(q, &q_tile[swizzled<kDimPieces>(tile_row0 + lane.matrix_row + (lane.matrix % 2) * 8,
                                                     2 * ks + lane.matrix / 2)]);
#pragma unroll
      for (int nn = 0; nn < kChunk / 16; ++nn) {
        if (nn > lane.output_tile) break;
        std::uint32_t b[4];
        load_matrix_x4(b, &tile.k[swizzled<kDimPieces>(16 * nn + lane.matrix_row + (lane.matrix / 2) * 8,
                                                       2 * ks + lane.matrix % 2)]);
        mma(scores[2 * nn], q, b[0], b[1]);
        mma(scores[2 * nn + 1], q, b[2], b[3]);
      }
#pragma unroll
      for (int nn = 0; nn < kSlice / 16; ++nn) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(b, &state_tile[swizzled<kDimPieces>(16 * ks + lane.matrix_row + (lane.matrix % 2) * 8,
                                                                       lane.slice_piece0 + 2 * nn + lane.matrix / 2)]);
        mma(out[2 * nn], q, b[0], b[1]);
        mma(out[2 * nn + 1], q, b[2], b[3]);
      }
    }
    // Row t's state term decays by λ^(t+1); score (t, j) by λ^(t-j), zero past the diagonal.
#pragma unroll
    for (int n = 0; n < kChunk / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = first_row + 8 * (e / 2), j = 8 * n + lane.quad_col + e % 2;
        scores[n][e] = j <= t ? scores[n][e] * shared.decay[t - j] : 0.0f;
      }
#pragma unroll
    for (int n = 0; n < kSlice / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) out[n][e] *= shared.decay[first_row + 8 * (e / 2) + 1];
    // out += scores V, the scores from their accumulators (mma's A layout, in pairs).
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      if (kk > lane.output_tile) break;
      const std::uint32_t p_frag[4] = {pack(scores[2 * kk][0], scores[2 * kk][1]),
                                       pack(scores[2 * kk][2], scores[2 * kk][3]),
                                       pack(scores[2 * kk + 1][0], scores[2 * kk + 1][1]),
                                       pack(scores[2 * kk + 1][2], scores[2 * kk + 1][3])};
#pragma unroll
      for (int nn = 0; nn < kSlice / 16; ++nn) {
        std::uint32_t b[4];
        load_matrix_x4_transposed(b, &tile.v[swizzled<kDimPieces>(16 * kk + lane.matrix_row + (lane.matrix % 2) * 8,
                                                                  lane.slice_piece0 + 2 * nn + lane.matrix / 2)]);
        mma(out[2 * nn], p_frag, b[0], b[1]);
        mma(out[2 * nn + 1], p_frag, b[2], b[3]);
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = first_row + 8 * half;
      if (t >= m) continue;
      bf16* row = p.out + (chunk * kChunk + t) * out_stride + std::int64_t{w.head} * p.d + lane.slice0;
#pragma unroll
      for (int n = 0; n < kSlice / 8; ++n)
        if (lane.slice0 + 8 * n < p.d)
          *reinterpret_cast<__nv_bfloat162*>(row + 8 * n + lane.quad_col) =
              __floats2bfloat162_rn(out[n][2 * half], out[n][2 * half + 1]);
    }

    if (chunk + 1 < w.end_chunk) {
      update_state<1>(state, tile, shared.decay, m, lane);
      store_state(shared.state[buffer ^ 1]);
    }
  }
}

}  // namespace lightdesk::cuda::lightning_chunked
