// Lightning attention decode: one token for each sequence of a batch, in one launch.
#include <cstdint>
#include <string>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

// Warps per block. Each takes every kDecodeRowGroups-th state row, and their partial outputs
// are summed at the end: many short loops in flight rather than one long one per column.
constexpr int kDecodeRowGroups = 8;
constexpr int kRowsPerGroup = kMaxHeadDim / kDecodeRowGroups;
// Blocks (heads x sequences) from which each block covers whole rows with 16-byte loads rather
// than a 32-column slice with 4-byte loads: below it the slices' four times as many blocks are
// what keeps all SMs reading (132 on an H100 or H200); above it the wide loads need fewer
// instructions for the same bytes.
constexpr std::int64_t kWideMinBlocks = 256;

// N consecutive floats, loaded and stored as one access (16 bytes for N = 4).
template <int N>
struct alignas(sizeof(float) * N) Columns {
  float v[N];
};

// Grid (heads, column slices of 32 N, sequences). Lane l of a warp owns the N columns from
// slice + N l of its rows. The thread's whole strip of the state is loaded into registers
// before anything waits (for q and k in shared memory) or is written back, so all its loads
// are in flight at once.
//   S = exp(-s) S + kᵀv,  o = q S
template <typename T, int N>
__global__ void __launch_bounds__(kDecodeRowGroups * 32)
    lightning_decode_kernel(const T* qkv, int heads, int d, const float* slopes, LightningStates states, T* out) {
  __shared__ float qk[2 * kMaxHeadDim];
  __shared__ Columns<N> partial[kDecodeRowGroups][32];
  const int h = blockIdx.x;
  const int sequence = static_cast<int>(blockIdx.z);
  const std::int64_t head_row = std::int64_t{sequence} * heads + h;  // this head's row of qkv and of out
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
  const int e0 = (static_cast<int>(blockIdx.y) * 32 + lane) * N;
  const bool has_columns = e0 < d;
  const T* row = qkv + head_row * 3 * d;
  float* S = states.of(sequence) + std::int64_t{h} * d * d + e0;
  Columns<N> s[kRowsPerGroup];
  float v[N];
  if (has_columns) {
#pragma unroll
    for (int r = 0; r < kRowsPerGroup; ++r) {
      const int i = group + r * kDecodeRowGroups;
      if (i < d) s[r] = *reinterpret_cast<const Columns<N>*>(S + i * d);
    }
#pragma unroll
    for (int c = 0; c < N; ++c) v[c] = load(row + 2 * d + e0 + c);
  }
  for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) qk[i] = load(row + i);
  __syncthreads();
  Columns<N> acc{};
  if (has_columns) {
    const float ratio = expf(-slopes[h]);
#pragma unroll
    for (int r = 0; r < kRowsPerGroup; ++r) {
      const int i = group + r * kDecodeRowGroups;
      if (i < d) {
#pragma unroll
        for (int c = 0; c < N; ++c) {
          s[r].v[c] = ratio * s[r].v[c] + qk[d + i] * v[c];
          acc.v[c] += qk[i] * s[r].v[c];
        }
        *reinterpret_cast<Columns<N>*>(S + i * d) = s[r];
      }
    }
  }
  partial[group][lane] = acc;
  __syncthreads();
  const int column = threadIdx.x;  // of the slice
  const int e = static_cast<int>(blockIdx.y) * 32 * N + column;
  if (column < 32 * N && e < d) {
    float total = 0.0f;
    for (int g = 0; g < kDecodeRowGroups; ++g) total += partial[g][column / N].v[column % N];
    store(out + head_row * d + e, total);
  }
}

template <typename T, int N>
void launch_decode(const T* qkv, int batch, int heads, int d, const float* slopes, LightningStates states, T* out,
                   cudaStream_t stream) {
  constexpr int kSlice = 32 * N;
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((d + kSlice - 1) / kSlice),
                  static_cast<unsigned>(batch));
  lightning_decode_kernel<T, N><<<grid, kDecodeRowGroups * 32, 0, stream>>>(qkv, heads, d, slopes, states, out);
}

}  // namespace

template <typename T>
void lightning_decode(const T* qkv, int batch, int heads, int head_dim, const float* slopes, LightningStates states,
                      T* out, cudaStream_t stream) {
  check_head_dim(head_dim, "lightning_decode");
  if (batch < 0 || batch > kMaxLightningDecodeBatch)
    fail("lightning_decode: batch " + std::to_string(batch) + " is outside 0.." +
         std::to_string(kMaxLightningDecodeBatch));
  if (batch == 0 || heads == 0) return;
  // The wide loads need every row 16-byte aligned: a table's states are so by contract, a
  // strided array's are checked here.
  constexpr int kWide = 4;
  const bool rows_aligned =
      head_dim % kWide == 0 &&
      (states.table || (reinterpret_cast<std::uintptr_t>(states.base) % (kWide * sizeof(float)) == 0 &&
                        states.stride % kWide == 0));
  if (rows_aligned && std::int64_t{heads} * batch >= kWideMinBlocks)
    launch_decode<T, kWide>(qkv, batch, heads, head_dim, slopes, states, out, stream);
  else
    launch_decode<T, 1>(qkv, batch, heads, head_dim, slopes, states, out, stream);
  check(cudaGetLastError(), "lightning_decode");
}

template <typename T>
void lightning_decode(const T* qkv, int heads, int head_dim, const float* slopes, float* state, T* out,
                      cudaStream_t stream) {
  lightning_decode(qkv, 1, heads, head_dim, slopes, LightningStates{state}, out, stream);
}

#define LIGHTDESK_INSTANTIATE(T)                                                                               \
  template void lightning_decode<T>(const T*, int, int, int, const float*, LightningStates, T*, cudaStream_t); \
  template void lightning_decode<T>(const T*, int, int, const float*, float*, T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
