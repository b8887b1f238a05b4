// Lightning (linear) attention: block-wise prefill continuing from a float32 state (decode:
// lightning_decode.cu).
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

// Rows per block of the prefill, and value columns per thread block: the grid splits each
// head's value dimension into slices of kValueSlice columns, since the state's columns
// [·, e] depend only on the value columns e.
constexpr int kBlockRows = 64;
constexpr int kValueSlice = 32;

struct PrefillShared {
  // Offsets in floats into dynamic shared memory. Q and K rows are padded by one float, so the
  // score loop, where a warp reads K at 32 consecutive rows, hits 32 different banks.
  int row_stride, q, k, v, state, scores, decay, total;
  __host__ __device__ explicit PrefillShared(int d)
      : row_stride(d + 1),
        q(0),
        k(kBlockRows * row_stride),
        v(2 * kBlockRows * row_stride),
        state(v + kBlockRows * kValueSlice),
        scores(state + d * kValueSlice),
        decay(scores + kBlockRows * kBlockRows),
        total(decay + kBlockRows + 1) {}
};

// The 256 threads form a 16 x 16 grid (tx, ty); each computes a register tile of every product,
// rows ty + 16 a and columns tx + 16 b, so each value read from shared memory feeds several
// FMAs and a warp's reads fall in distinct banks or are broadcasts.
constexpr int kGrid = 16;
static_assert(kGrid * kGrid == kThreads, "the prefill maps its threads on a 16 x 16 grid");
constexpr int kRowTiles = kBlockRows / kGrid;         // 4: rows of a block per thread
constexpr int kColumnTiles = kValueSlice / kGrid;     // 2: value columns per thread
constexpr int kStateTiles = kMaxHeadDim / kGrid;      // 8: state rows per thread

// The float32 prefill, on CUDA cores (float32 products, as exact as the CPU reference).
// Grid (heads, value slices). For each block of m rows, with decay λ = exp(-s):
//   out_t = λ^(t+1) q_t S + Σ_{j≤t} λ^(t-j) (q_t·k_j) v_j
//   S ← λ^m S + Σ_t λ^(m-1-t) k_tᵀ v_t
template <typename T>
__global__ void __launch_bounds__(kThreads) lightning_prefill_kernel(const T* qkv, std::int64_t rows, int heads, int d,
                                                                    const float* slopes, float* state, T* out) {
  extern __shared__ float shared[];
  const PrefillShared layout(d);
  const int ld = layout.row_stride;
  float* Q = shared + layout.q;          // [kBlockRows, ld]
  float* K = shared + layout.k;          // [kBlockRows, ld]
  float* V = shared + layout.v;          // [kBlockRows, kValueSlice]
  float* S = shared + layout.state;      // [d, kValueSlice]
  float* P = shared + layout.scores;     // [kBlockRows, kBlockRows]
  float* decay = shared + layout.decay;  // [kBlockRows + 1]

  const int h = blockIdx.x;
  const int e0 = blockIdx.y * kValueSlice;
  const int width = min(kValueSlice, d - e0);
  const int tx = threadIdx.x % kGrid, ty = threadIdx.x / kGrid;
  const std::int64_t qkv_stride = std::int64_t{heads} * 3 * d;
  const std::int64_t out_stride = std::int64_t{heads} * d;
  float* state_h = state + std::int64_t{h} * d * d;

  for (int i = threadIdx.x; i <= kBlockRows; i += blockDim.x) decay[i] = expf(-(slopes[h] * static_cast<float>(i)));
  // Columns past `width` stay zero, so every tile computes on defined values.
  for (int idx = threadIdx.x; idx < d * kValueSlice; idx += blockDim.x) {
    const int i = idx / kValueSlice, e = idx % kValueSlice;
    S[idx] = e < width ? state_h[i * d + e0 + e] : 0.0f;
  }

  for (std::int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int m = static_cast<int>(min(std::int64_t{kBlockRows}, rows - r0));
    __syncthreads();  // the previous block's readers are done with Q, K, V, P
    // Rows past m (the last, ragged block) are zero.
    for (int idx = threadIdx.x; idx < kBlockRows * d; idx += blockDim.x) {
      const int t = idx / d, i = idx % d;
      const T* row = qkv + (r0 + t) * qkv_stride + std::int64_t{h} * 3 * d;
      Q[t * ld + i] = t < m ? load(row + i) : 0.0f;
      K[t * ld + i] = t < m ? load(row + d + i) : 0.0f;
    }
    for (int idx = threadIdx.x; idx < kBlockRows * kValueSlice; idx += blockDim.x) {
      const int t = idx / kValueSlice, e = idx % kValueSlice;
      V[idx] = t < m && e < width ? load(qkv + (r0 + t) * qkv_stride + std::int64_t{h} * 3 * d + 2 * d + e0 + e) : 0.0f;
    }
    __syncthreads();

    // Scores P = causal, decayed Q Kᵀ.
    {
      float acc[kRowTiles][kRowTiles] = {};
      for (int i = 0; i < d; ++i) {
        float q[kRowTiles], k[kRowTiles];
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a) {
          q[a] = Q[(ty + kGrid * a) * ld + i];
          k[a] = K[(tx + kGrid * a) * ld + i];
        }
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a)
#pragma unroll
          for (int b = 0; b < kRowTiles; ++b) acc[a][b] += q[a] * k[b];
      }
#pragma unroll
      for (int a = 0; a < kRowTiles; ++a)
#pragma unroll
        for (int b = 0; b < kRowTiles; ++b) {
          const int t = ty + kGrid * a, j = tx + kGrid * b;
          P[t * kBlockRows + j] = j <= t ? acc[a][b] * decay[t - j] : 0.0f;
        }
    }
    __syncthreads();

    // Output: inter-block (Q S, decayed) plus intra-block (P V).
    {
      float inter[kRowTiles][kColumnTiles] = {}, intra[kRowTiles][kColumnTiles] = {};
      for (int i = 0; i < d; ++i) {
        float q[kRowTiles], sv[kColumnTiles];
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a) q[a] = Q[(ty + kGrid * a) * ld + i];
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) sv[c] = S[i * kValueSlice + tx + kGrid * c];
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a)
#pragma unroll
          for (int c = 0; c < kColumnTiles; ++c) inter[a][c] += q[a] * sv[c];
      }
      for (int j = 0; j < m; ++j) {
        float p[kRowTiles], v[kColumnTiles];
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a) p[a] = P[(ty + kGrid * a) * kBlockRows + j];
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) v[c] = V[j * kValueSlice + tx + kGrid * c];
#pragma unroll
        for (int a = 0; a < kRowTiles; ++a)
#pragma unroll
          for (int c = 0; c < kColumnTiles; ++c) intra[a][c] += p[a] * v[c];
      }
#pragma unroll
      for (int a = 0; a < kRowTiles; ++a)
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) {
          const int t = ty + kGrid * a, e = tx + kGrid * c;
          if (t < m && e < width)
            store(out + (r0 + t) * out_stride + std::int64_t{h} * d + e0 + e, inter[a][c] * decay[t + 1] + intra[a][c]);
        }
    }
    __syncthreads();

    // State: S ← λ^m S + Σ_t λ^(m-1-t) k_tᵀ v_t, each thread on its own tile.
    {
      float acc[kStateTiles][kColumnTiles];
#pragma unroll
      for (int a = 0; a < kStateTiles; ++a)
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) {
          const int i = ty + kGrid * a;
          acc[a][c] = i < d ? S[i * kValueSlice + tx + kGrid * c] * decay[m] : 0.0f;
        }
      for (int t = 0; t < m; ++t) {
        const float weight = decay[m - 1 - t];
        float k[kStateTiles], v[kColumnTiles];
#pragma unroll
        for (int a = 0; a < kStateTiles; ++a) {
          const int i = ty + kGrid * a;
          k[a] = i < d ? K[t * ld + i] * weight : 0.0f;
        }
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) v[c] = V[t * kValueSlice + tx + kGrid * c];
#pragma unroll
        for (int a = 0; a < kStateTiles; ++a)
#pragma unroll
          for (int c = 0; c < kColumnTiles; ++c) acc[a][c] += k[a] * v[c];
      }
#pragma unroll
      for (int a = 0; a < kStateTiles; ++a)
#pragma unroll
        for (int c = 0; c < kColumnTiles; ++c) {
          const int i = ty + kGrid * a;
          if (i < d) S[i * kValueSlice + tx + kGrid * c] = acc[a][c];
        }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
    const int i = idx / width, e = idx % width;
    state_h[i * d + e0 + e] = S[i * kValueSlice + e];
  }
}

// The bf16 prefill runs its products on tensor cores (WMMA 16x16x16, bf16 in, float32
// accumulation). Grid (heads, value slices of kMmaSlice columns); per block of 64 rows:
//   scores  P = (Q Kᵀ ⊙ causal decay)            64 x 64,  k = d
//   output  O = diag(λ^(t+1)) Q S + P V           64 x slice
//   state   S = λ^m S + Kᵀ diag(λ^(m-1-t)) V      d x slice, kept in float32 shared memory
// Every float32 operand of a product (the state in Q S, the decayed scores in P V, the decayed
// V in the state update) is split into kParts bf16 parts, one product each, so the products
// keep float32's 24 bits and the state, which carries every earlier token, stays as exact as
// the float32 reference's (relative error 1e-7 with three parts, 1e-6 with two, in the kernel tests).
constexpr int kMmaSlice = 64;
constexpr int kParts = 3;
constexpr int kTile = 16;
constexpr int kWarps = kThreads / 32;
constexpr int kTileColumns = kMmaSlice / kTile;  // 4 column tiles of a slice
constexpr int kTileRows = kBlockRows / kTile;    // 4 row tiles of a block
static_assert(kTileRows * kTileColumns == 2 * kWarps, "each warp computes two tiles of a 64 x 64 product");

struct MmaShared {
  // Offsets in bytes into dynamic shared memory; rows padded by 8 bf16 / 4 floats (16 bytes)
  // against bank conflicts, every region and tile 32-byte aligned as WMMA requires.
  int padded_d, ld_qk, ld_slice, ld_float;
  // A split operand is kParts planes of rows x ld_slice bf16.
  int q, k, v, v_decayed, state_parts, state, scores_f32, scores_parts, out_f32, decay, total;
  __host__ __device__ explicit MmaShared(int d)
      : padded_d((d + kTile - 1) / kTile * kTile),
        ld_qk(padded_d + 8),
        ld_slice(kMmaSlice + 8),
        ld_float(kMmaSlice + 4),
        q(0),
        k(q + kBlockRows * ld_qk * 2),
        v(k + kBlockRows * ld_qk * 2),
        v_decayed(v + kBlockRows * ld_slice * 2),
        state_parts(v_decayed + kParts * kBlockRows * ld_slice * 2),
        state(state_parts + kParts * padded_d * ld_slice * 2),
        scores_f32(state + padded_d * ld_float * 4),
        scores_parts(scores_f32 + kBlockRows * ld_float * 4),
        out_f32(scores_parts + kParts * kBlockRows * ld_slice * 2),
        decay(out_f32 + kBlockRows * ld_float * 4),
        total(decay + (kBlockRows + 1) * 4) {}
};

// Rows [0, kBlockRows) x columns [0, padded) of a bf16 tile from global rows (row stride
// `stride`), zero past `rows` and `columns`, one element per copy: for row starts that are not
// 16-byte aligned.
__device__ void load_tile(bf16* dst, int ld, const bf16* src, std::int64_t stride, int rows, int columns,
                          int padded) {
  for (int idx = threadIdx.x; idx < kBlockRows * padded; idx += blockDim.x) {
    const int t = idx / padded, c = idx % padded;
    dst[t * ld + c] = t < rows && c < columns ? src[t * stride + c] : __float2bfloat16_rn(0.0f);
  }
}

// The same tile in 16-byte pieces (columns a multiple of 8, row starts aligned), in two steps so
// the next block's pieces travel from global memory into registers while this block computes:
// this thread's pieces are kThreads apart in row-major order.
constexpr int kQkPieces = kBlockRows * kMaxHeadDim / 8 / kThreads;  // 4 per thread for Q, 4 for K
constexpr int kValuePieces = kBlockRows * kMmaSlice / 8 / kThreads;  // 2 for the V slice

template <int kPieces>
__device__ void fetch_tile(uint4 (&pieces)[kPieces], const bf16* src, std::int64_t stride, int rows, int columns,
                           int padded) {
  const int per_row = padded / 8;
#pragma unroll
  for (int n = 0; n < kPieces; ++n) {
    const int idx = threadIdx.x + n * kThreads, t = idx / per_row, c = (idx % per_row) * 8;
    pieces[n] = make_uint4(0, 0, 0, 0);
    if (t < rows && c < columns) pieces[n] = *reinterpret_cast<const uint4*>(src + t * stride + c);
  }
}

template <int kPieces>
__device__ void put_tile(bf16* dst, int ld, const uint4 (&pieces)[kPieces], int padded) {
  const int per_row = padded / 8;
#pragma unroll
  for (int n = 0; n < kPieces; ++n) {
    const int idx = threadIdx.x + n * kThreads, t = idx / per_row, c = (idx % per_row) * 8;
    if (t < kBlockRows) *reinterpret_cast<uint4*>(dst + t * ld + c) = pieces[n];
  }
}

// x = Σ parts in bf16 (each part the rounded remainder of the previous ones), planes `plane` apart.
__device__ __forceinline__ void split(float x, bf16* parts, int plane) {
#pragma unroll
  for (int p = 0; p < kParts; ++p) {
    const bf16 part = __float2bfloat16_rn(x);
    parts[p * plane] = part;
    x -= __bfloat162float(part);
  }
}

__global__ void __launch_bounds__(kThreads) lightning_prefill_mma_kernel(const bf16* qkv, std::int64_t rows, int heads,
                                                                        int d, const float* slopes, float* state,
                                                                        bf16* out) {
  namespace wmma = nvcuda::wmma;
  using AccumulatorTile = wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float>;
  using RowA = wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, bf16, wmma::row_major>;
  using ColumnA = wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, bf16, wmma::col_major>;
  using RowB = wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, bf16, wmma::row_major>;
  using ColumnB = wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, bf16, wmma::col_major>;

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const MmaShared layout(d);
  const int dp = layout.padded_d, ldqk = layout.ld_qk, lds = layout.ld_slice, ldf = layout.ld_float;
  auto* Q = reinterpret_cast<bf16*>(shared_bytes + layout.q);                    // [64, ldqk]
  auto* K = reinterpret_cast<bf16*>(shared_bytes + layout.k);                    // [64, ldqk]
  auto* V = reinterpret_cast<bf16*>(shared_bytes + layout.v);                    // [64, lds]
  auto* Vd = reinterpret_cast<bf16*>(shared_bytes + layout.v_decayed);          // [kParts, 64, lds]
  auto* S_parts = reinterpret_cast<bf16*>(shared_bytes + layout.state_parts);   // [kParts, dp, lds]
  auto* S = reinterpret_cast<float*>(shared_bytes + layout.state);              // [dp, ldf]
  auto* P_f32 = reinterpret_cast<float*>(shared_bytes + layout.scores_f32);     // [64, ldf]
  auto* P = reinterpret_cast<bf16*>(shared_bytes + layout.scores_parts);        // [kParts, 64, lds]
  auto* O = reinterpret_cast<float*>(shared_bytes + layout.out_f32);            // [64, ldf]
  auto* decay = reinterpret_cast<float*>(shared_bytes + layout.decay);          // [65]

  const int h = blockIdx.x;
  const int e0 = blockIdx.y * kMmaSlice;
  const int width = min(kMmaSlice, d - e0);
  const int warp = threadIdx.x / 32;
  const int block_plane = kBlockRows * lds, state_plane = dp * lds;  // elements between split parts
  const int row_tile = warp / 2, first_column_tile = (warp % 2) * 2;  // this warp's two output tiles
  const std::int64_t qkv_stride = std::int64_t{heads} * 3 * d;
  const std::int64_t out_stride = std::int64_t{heads} * d;
  // Row starts are 16-byte aligned when d is a multiple of 8 (then so are the strides and the
  // slice starts e0, multiples of 64); then the next block is fetched ahead, into registers.
  const bool ahead = d % 8 == 0 && reinterpret_cast<std::uintptr_t>(qkv) % 16 == 0;
  uint4 q_ahead[kQkPieces], k_ahead[kQkPieces], v_ahead[kValuePieces];
  const auto fetch_block = [&](std::int64_t first_row) {
    const int block_rows = static_cast<int>(min(std::int64_t{kBlockRows}, rows - first_row));
    const bf16* block = qkv + first_row * qkv_stride + std::int64_t{h} * 3 * d;
    fetch_tile(q_ahead, block, qkv_stride, block_rows, d, dp);
    fetch_tile(k_ahead, block + d, qkv_stride, block_rows, d, dp);
    fetch_tile(v_ahead, block + 2 * d + e0, qkv_stride, block_rows, width, kMmaSlice);
  };
  if (ahead) fetch_block(0);
  float* state_h = state + std::int64_t{h} * d * d;

  for (int i = threadIdx.x; i <= kBlockRows; i += blockDim.x) decay[i] = expf(-(slopes[h] * static_cast<float>(i)));
  // State rows past d and columns past `width` stay zero.
  for (int idx = threadIdx.x; idx < dp * kMmaSlice; idx += blockDim.x) {
    const int i = idx / kMmaSlice, e = idx % kMmaSlice;
    S[i * ldf + e] = i < d && e < width ? state_h[i * d + e0 + e] : 0.0f;
  }

  for (std::int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int m = static_cast<int>(min(std::int64_t{kBlockRows}, rows - r0));
    const bf16* block = qkv + r0 * qkv_stride + std::int64_t{h} * 3 * d;
    __syncthreads();  // the previous block is done with every buffer
    if (ahead) {
      put_tile(Q, ldqk, q_ahead, dp);
      put_tile(K, ldqk, k_ahead, dp);
      put_tile(V, lds, v_ahead, kMmaSlice);
    } else {
      load_tile(Q, ldqk, block, qkv_stride, m, d, dp);
      load_tile(K, ldqk, block + d, qkv_stride, m, d, dp);
      load_tile(V, lds, block + 2 * d + e0, qkv_stride, m, width, kMmaSlice);
    }
    for (int idx = threadIdx.x; idx < dp * kMmaSlice; idx += blockDim.x) {
      const int i = idx / kMmaSlice, e = idx % kMmaSlice;
      split(S[i * ldf + e], S_parts + i * lds + e, state_plane);
    }
    __syncthreads();
    if (ahead && r0 + kBlockRows < rows) fetch_block(r0 + kBlockRows);
    for (int idx = threadIdx.x; idx < kBlockRows * kMmaSlice; idx += blockDim.x) {
      const int t = idx / kMmaSlice, e = idx % kMmaSlice;
      const float decayed = t < m ? __bfloat162float(V[t * lds + e]) * decay[m - 1 - t] : 0.0f;
      split(decayed, Vd + t * lds + e, block_plane);
    }

    // Scores Q Kᵀ (tiles right of the diagonal are masked out anyway) and the inter-block Q S.
    for (int c = 0; c < 2; ++c) {
      const int column_tile = first_column_tile + c;
      AccumulatorTile scores, inter;
      wmma::fill_fragment(scores, 0.0f);
      wmma::fill_fragment(inter, 0.0f);
      for (int kk = 0; kk < dp; kk += kTile) {
        RowA q;
        wmma::load_matrix_sync(q, Q + row_tile * kTile * ldqk + kk, ldqk);
        if (column_tile <= row_tile) {
          ColumnB k;  // Kᵀ, read from K's rows
          wmma::load_matrix_sync(k, K + column_tile * kTile * ldqk + kk, ldqk);
          wmma::mma_sync(scores, q, k, scores);
        }
#pragma unroll
        for (int p = 0; p < kParts; ++p) {
          RowB s_part;
          wmma::load_matrix_sync(s_part, S_parts + p * state_plane + kk * lds + column_tile * kTile, lds);
          wmma::mma_sync(inter, q, s_part, inter);
        }
      }
      wmma::store_matrix_sync(P_f32 + row_tile * kTile * ldf + column_tile * kTile, scores, ldf, wmma::mem_row_major);
      wmma::store_matrix_sync(O + row_tile * kTile * ldf + column_tile * kTile, inter, ldf, wmma::mem_row_major);
    }
    __syncthreads();
    // Causal decay of the scores; the inter-block part decays to each row.
    for (int idx = threadIdx.x; idx < kBlockRows * kMmaSlice; idx += blockDim.x) {
      const int t = idx / kMmaSlice, j = idx % kMmaSlice;
      split(j <= t ? P_f32[t * ldf + j] * decay[t - j] : 0.0f, P + t * lds + j, block_plane);
      O[t * ldf + j] *= decay[t + 1];
    }
    __syncthreads();

    // Intra-block output O += P V (P is lower triangular: only k tiles up to the diagonal).
    for (int c = 0; c < 2; ++c) {
      const int column_tile = first_column_tile + c;
      AccumulatorTile acc;
      wmma::load_matrix_sync(acc, O + row_tile * kTile * ldf + column_tile * kTile, ldf, wmma::mem_row_major);
      for (int kk = 0; kk <= row_tile; ++kk) {
        RowB v;
        wmma::load_matrix_sync(v, V + kk * kTile * lds + column_tile * kTile, lds);
#pragma unroll
        for (int p = 0; p < kParts; ++p) {
          RowA p_part;
          wmma::load_matrix_sync(p_part, P + p * block_plane + row_tile * kTile * lds + kk * kTile, lds);
          wmma::mma_sync(acc, p_part, v, acc);
        }
      }
      wmma::store_matrix_sync(O + row_tile * kTile * ldf + column_tile * kTile, acc, ldf, wmma::mem_row_major);
    }
    // State S = λ^m S + Kᵀ (decayed V), tiles spread over the warps.
    for (int tile = warp; tile < (dp / kTile) * kTileColumns; tile += kWarps) {
      const int i0 = (tile / kTileColumns) * kTile, c0 = (tile % kTileColumns) * kTile;
      AccumulatorTile acc;
      wmma::load_matrix_sync(acc, S + i0 * ldf + c0, ldf, wmma::mem_row_major);
#pragma unroll
      for (int x = 0; x < acc.num_elements; ++x) acc.x[x] *= decay[m];
      for (int kk = 0; kk < kBlockRows; kk += kTile) {
        ColumnA k;  // Kᵀ, read from K's rows
        wmma::load_matrix_sync(k, K + kk * ldqk + i0, ldqk);
#pragma unroll
        for (int p = 0; p < kParts; ++p) {
          RowB v_part;
          wmma::load_matrix_sync(v_part, Vd + p * block_plane + kk * lds + c0, lds);
          wmma::mma_sync(acc, k, v_part, acc);
        }
      }
      wmma::store_matrix_sync(S + i0 * ldf + c0, acc, ldf, wmma::mem_row_major);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < m * kMmaSlice; idx += blockDim.x) {
      const int t = idx / kMmaSlice, e = idx % kMmaSlice;
      if (e < width) out[(r0 + t) * out_stride + std::int64_t{h} * d + e0 + e] = __float2bfloat16_rn(O[t * ldf + e]);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
    const int i = idx / width, e = idx % width;
    state_h[i * d + e0 + e] = S[i * ldf + e];
  }
}

void check_head_dim(int head_dim, const char* what) {
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    fail(std::string(what) + ": head_dim " + std::to_string(head_dim) + " is outside 1.." +
                std::to_string(kMaxHeadDim));
}

}  // namespace

template <typename T>
void lightning_prefill(const T* qkv, std::int64_t rows, int heads, int head_dim, const float* slopes, float* state,
                       T* out, cudaStream_t stream) {
  check_head_dim(head_dim, "lightning_prefill");
  if (rows == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    const auto bytes = static_cast<std::size_t>(MmaShared(head_dim).total);
    check(cudaFuncSetAttribute(lightning_prefill_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "lightning_prefill (shared memory size)");
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((head_dim + kMmaSlice - 1) / kMmaSlice));
    lightning_prefill_mma_kernel<<<grid, kThreads, bytes, stream>>>(qkv, rows, heads, head_dim, slopes, state, out);
  } else {
    const auto bytes = static_cast<std::size_t>(PrefillShared(head_dim).total) * sizeof(float);
    check(cudaFuncSetAttribute(lightning_prefill_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "lightning_prefill (shared memory size)");
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((head_dim + kValueSlice - 1) / kValueSlice));
    lightning_prefill_kernel<<<grid, kThreads, bytes, stream>>>(qkv, rows, heads, head_dim, slopes, state, out);
  }
  check(cudaGetLastError(), "lightning_prefill");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                            \
  template void lightning_prefill<T>(const T*, std::int64_t, int, int, const float*, float*, T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
