// Lightning (linear) attention: block-wise prefill continuing from a float32 state, and decode.
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

// Grid (heads, value slices). For each block of m rows, with decay λ = exp(-s):
//   out_t = λ^(t+1) q_t S + Σ_{j≤t} λ^(t-j) (q_t·k_j) v_j
//   S ← λ^m S + Σ_t λ^(m-1-t) k_tᵀ v_t
template <typename T>
__global__ void lightning_prefill_kernel(const T* qkv, std::int64_t rows, int heads, int d, const float* slopes,
                                         float* state, T* out) {
  extern __shared__ float shared[];
  const PrefillShared layout(d);
  const int ld = layout.row_stride;
  float* Q = shared + layout.q;         // [kBlockRows, ld]
  float* K = shared + layout.k;         // [kBlockRows, ld]
  float* V = shared + layout.v;         // [kBlockRows, kValueSlice]
  float* S = shared + layout.state;     // [d, kValueSlice]
  float* P = shared + layout.scores;    // [kBlockRows, kBlockRows]
  float* decay = shared + layout.decay;  // [kBlockRows + 1]

  const int h = blockIdx.x;
  const int e0 = blockIdx.y * kValueSlice;
  const int width = min(kValueSlice, d - e0);
  const std::int64_t qkv_stride = std::int64_t{heads} * 3 * d;
  const std::int64_t out_stride = std::int64_t{heads} * d;
  float* state_h = state + std::int64_t{h} * d * d;

  for (int i = threadIdx.x; i <= kBlockRows; i += blockDim.x) decay[i] = expf(-(slopes[h] * static_cast<float>(i)));
  for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
    const int i = idx / width, e = idx % width;
    S[i * kValueSlice + e] = state_h[i * d + e0 + e];
  }

  for (std::int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int m = static_cast<int>(min(std::int64_t{kBlockRows}, rows - r0));
    __syncthreads();  // the previous block's readers are done with Q, K, V
    for (int idx = threadIdx.x; idx < m * d; idx += blockDim.x) {
      const int t = idx / d, i = idx % d;
      const T* row = qkv + (r0 + t) * qkv_stride + std::int64_t{h} * 3 * d;
      Q[t * ld + i] = load(row + i);
      K[t * ld + i] = load(row + d + i);
    }
    for (int idx = threadIdx.x; idx < m * width; idx += blockDim.x) {
      const int t = idx / width, e = idx % width;
      V[t * kValueSlice + e] = load(qkv + (r0 + t) * qkv_stride + std::int64_t{h} * 3 * d + 2 * d + e0 + e);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < m * m; idx += blockDim.x) {
      const int t = idx / m, j = idx % m;
      float dot = 0.0f;
      if (j <= t) {
        for (int i = 0; i < d; ++i) dot += Q[t * ld + i] * K[j * ld + i];
        dot *= decay[t - j];
      }
      P[t * kBlockRows + j] = dot;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < m * width; idx += blockDim.x) {
      const int t = idx / width, e = idx % width;
      float inter = 0.0f;
      for (int i = 0; i < d; ++i) inter += Q[t * ld + i] * S[i * kValueSlice + e];
      float intra = 0.0f;
      for (int j = 0; j <= t; ++j) intra += P[t * kBlockRows + j] * V[j * kValueSlice + e];
      store(out + (r0 + t) * out_stride + std::int64_t{h} * d + e0 + e, inter * decay[t + 1] + intra);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
      const int i = idx / width, e = idx % width;
      float acc = S[i * kValueSlice + e] * decay[m];
      for (int t = 0; t < m; ++t) acc += K[t * ld + i] * decay[m - 1 - t] * V[t * kValueSlice + e];
      S[i * kValueSlice + e] = acc;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
    const int i = idx / width, e = idx % width;
    state_h[i * d + e0 + e] = S[i * kValueSlice + e];
  }
}

// Grid (heads, column slices of 32). Within a block, each warp takes every kDecodeRowGroups-th
// state row for the slice's 32 columns (one column per lane, coalesced); the warps' partial
// outputs are summed at the end. Many short loops in flight rather than one long one per column.
constexpr int kDecodeRowGroups = 8;

template <typename T>
__global__ void lightning_decode_kernel(const T* qkv, int d, const float* slopes, float* state, T* out) {
  __shared__ float qk[2 * kMaxHeadDim];
  __shared__ float partial[kDecodeRowGroups][32];
  const int h = blockIdx.x;
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
  const int e = blockIdx.y * 32 + lane;
  const T* row = qkv + std::int64_t{h} * 3 * d;
  for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) qk[i] = load(row + i);
  __syncthreads();
  float acc = 0.0f;
  if (e < d) {
    const float ratio = expf(-(slopes[h] * 1.0f));
    const float v = load(row + 2 * d + e);
    float* S = state + std::int64_t{h} * d * d;
#pragma unroll 4
    for (int i = group; i < d; i += kDecodeRowGroups) {
      const float s = ratio * S[i * d + e] + qk[d + i] * v;
      S[i * d + e] = s;
      acc += qk[i] * s;
    }
  }
  partial[group][lane] = acc;
  __syncthreads();
  if (group == 0 && e < d) {
    float total = 0.0f;
    for (int g = 0; g < kDecodeRowGroups; ++g) total += partial[g][lane];
    store(out + std::int64_t{h} * d + e, total);
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
  const auto bytes = static_cast<std::size_t>(PrefillShared(head_dim).total) * sizeof(float);
  check(cudaFuncSetAttribute(lightning_prefill_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes)),
        "lightning_prefill (shared memory size)");
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((head_dim + kValueSlice - 1) / kValueSlice));
  lightning_prefill_kernel<<<grid, kThreads, bytes, stream>>>(qkv, rows, heads, head_dim, slopes, state, out);
  check(cudaGetLastError(), "lightning_prefill");
}

template <typename T>
void lightning_decode(const T* qkv, int heads, int head_dim, const float* slopes, float* state, T* out,
                      cudaStream_t stream) {
  check_head_dim(head_dim, "lightning_decode");
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((head_dim + 31) / 32));
  lightning_decode_kernel<<<grid, kDecodeRowGroups * 32, 0, stream>>>(qkv, head_dim, slopes, state, out);
  check(cudaGetLastError(), "lightning_decode");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                            \
  template void lightning_prefill<T>(const T*, std::int64_t, int, int, const float*, float*, T*, cudaStream_t); \
  template void lightning_decode<T>(const T*, int, int, const float*, float*, T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
