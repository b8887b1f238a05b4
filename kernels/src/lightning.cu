// Lightning (linear) attention: prefill continuing from a float32 state (decode:
// lightning_decode.cu). bf16 with head_dim a multiple of 8 runs the chunked tensor-core prefill
// of lightning_chunked.cuh; float32 (the checking mode) and other head sizes the CUDA-core
// kernel below.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "lightning_chunked.cuh"

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

// The CUDA-core prefill (float32 products, as exact as the CPU reference), sequential over the
// blocks of each (head, value slice).
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

// How the chunked prefill divides its rows, and the workspace it needs: the same answer for
// planning and for running.
struct ChunkedPlan {
  int segments = 0, chunks_per_segment = 0;  // no segments: the CUDA-core kernel
  std::size_t workspace_bytes = 0;
};

// Segments: enough (head, segment) blocks for kMinWaves to kMaxWaves waves of launch 3's
// blocks, of at least kMinChunksPerSegment chunks each, so that loading each segment's start
// state stays a small part of its work; among those, the count that needs the fewest rounds of
// blocks times chunks per block (plus about one chunk of overhead per block): a last round
// that leaves multiprocessors idle costs as much as a full one. Measured (H200, two bf16 parts
// in every segment's state pass), 64 heads at 256K tokens: 17 segments (8.2 waves, 9 rounds)
// 14.0 ms, 33 (16 waves) 12.96 ms, 66 13.46 ms; at 64K tokens: 17 or 32 segments 3.61 ms, 9
// 3.76 ms; 8 heads at 1M tokens: 66 segments 6.44 ms, 132 6.57 ms, 261 6.80 ms. Segments of 4
// chunks took 0.86 ms at 4K against 0.46 with 8 (with an earlier, slower scan).
constexpr std::int64_t kMinWaves = 8, kMaxWaves = 16;
constexpr std::int64_t kMinChunksPerSegment = 8;
constexpr std::int64_t kBlockOverheadChunks = 1;

template <typename T>
ChunkedPlan plan_prefill(std::int64_t rows, int heads, int head_dim, const LaunchLimits& limits) {
  check_head_dim(head_dim, "lightning_prefill");
  namespace lc = lightning_chunked;
  ChunkedPlan plan;
  if (!std::is_same_v<T, bf16> || head_dim % 8 != 0 || rows == 0) return plan;
  const std::int64_t chunks = (rows + lc::kChunk - 1) / lc::kChunk;
  const std::int64_t slots = std::int64_t{limits.lightning_prefill_blocks} * limits.multiprocessors;
  const auto ceil_div = [](std::int64_t a, std::int64_t b) { return (a + b - 1) / b; };
  const std::int64_t most = std::max<std::int64_t>(1, chunks / kMinChunksPerSegment);
  std::int64_t best_cost = -1;
  for (std::int64_t wanted = std::min(most, ceil_div(kMinWaves * slots, heads));
       wanted <= std::min(most, ceil_div(kMaxWaves * slots, heads)); ++wanted) {
    const std::int64_t chunks_per_segment = ceil_div(chunks, wanted), segments = ceil_div(chunks, chunks_per_segment);
    const std::int64_t cost = ceil_div(segments * heads, slots) * (chunks_per_segment + kBlockOverheadChunks);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      plan.chunks_per_segment = static_cast<int>(chunks_per_segment);
      plan.segments = static_cast<int>(segments);
    }
  }
  plan.workspace_bytes = static_cast<std::size_t>(plan.segments) * heads * head_dim * head_dim * sizeof(float);
  return plan;
}

}  // namespace

void query_lightning_limits(LaunchLimits& limits) {
  namespace lc = lightning_chunked;
  check(cudaFuncSetAttribute(lc::segment_output_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             sizeof(lc::OutputShared)),
        "lightning_prefill (shared memory)");
  check(cudaFuncSetAttribute(lc::segment_state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             sizeof(lc::StateShared)),
        "lightning_prefill (shared memory)");
  // The CUDA-core kernel's shared memory grows with head_dim: the limit for the largest.
  const auto cuda_core_bytes = static_cast<int>(PrefillShared(kMaxHeadDim).total * sizeof(float));
  check(cudaFuncSetAttribute(lightning_prefill_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             cuda_core_bytes),
        "lightning_prefill (shared memory size)");
  check(cudaFuncSetAttribute(lightning_prefill_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             cuda_core_bytes),
        "lightning_prefill (shared memory size)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.lightning_prefill_blocks, lc::segment_output_kernel,
                                                      lc::kBlockThreads, sizeof(lc::OutputShared)),
        "lightning_prefill (occupancy)");
}

template <typename T>
std::size_t lightning_prefill_workspace_bytes(std::int64_t rows, int heads, int head_dim, const LaunchLimits& limits) {
  return plan_prefill<T>(rows, heads, head_dim, limits).workspace_bytes;
}

template <typename T>
void lightning_prefill(const T* qkv, std::int64_t rows, int heads, int head_dim, const float* slopes, float* state,
                       T* out, const LaunchLimits& limits, cudaStream_t stream, void* workspace,
                       std::size_t workspace_bytes) {
  const ChunkedPlan plan = plan_prefill<T>(rows, heads, head_dim, limits);
  if (rows == 0) return;
  // 16-byte copies from qkv, 4-byte stores to out, 16-byte accesses to the state (and to the
  // workspace: a caller's that is not so aligned is left unused).
  const bool aligned = reinterpret_cast<std::uintptr_t>(qkv) % 16 == 0 && reinterpret_cast<std::uintptr_t>(out) % 4 == 0 &&
                       reinterpret_cast<std::uintptr_t>(state) % 16 == 0;
  if constexpr (std::is_same_v<T, bf16>) {
    if (plan.segments > 0 && aligned) {
      namespace lc = lightning_chunked;
      const bool workspace_aligned = reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0;
      const StreamWorkspace segment_states(plan.workspace_bytes, workspace, workspace_aligned ? workspace_bytes : 0,
                                           stream, "lightning_prefill (segment states)");
      const lc::Problem problem{qkv, out, slopes, state, segment_states.floats(), rows, heads, head_dim,
                                plan.chunks_per_segment, plan.segments};
      const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(plan.segments));
      lc::segment_state_kernel<<<grid, lc::kBlockThreads, sizeof(lc::StateShared), stream>>>(problem);
      const dim3 scan_grid(static_cast<unsigned>((head_dim * head_dim / 4 + lc::kScanThreads - 1) / lc::kScanThreads),
                           static_cast<unsigned>(heads));
      lc::scan_segment_states_kernel<<<scan_grid, lc::kScanThreads, 0, stream>>>(problem);
      lc::segment_output_kernel<<<grid, lc::kBlockThreads, sizeof(lc::OutputShared), stream>>>(problem);
      check(cudaGetLastError(), "lightning_prefill");
      return;
    }
  }
  const auto bytes = static_cast<std::size_t>(PrefillShared(head_dim).total) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((head_dim + kValueSlice - 1) / kValueSlice));
  lightning_prefill_kernel<<<grid, kThreads, bytes, stream>>>(qkv, rows, heads, head_dim, slopes, state, out);
  check(cudaGetLastError(), "lightning_prefill");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                            \
  template void lightning_prefill<T>(const T*, std::int64_t, int, int, const float*, float*, T*, const LaunchLimits&, \
                                     cudaStream_t, void*, std::size_t);                                              \
  template std::size_t lightning_prefill_workspace_bytes<T>(std::int64_t, int, int, const LaunchLimits&);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
