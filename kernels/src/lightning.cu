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
  // Offsets in floats into dynamic shared memory.
  int q, k, v, state, scores, decay, total;
  __host__ __device__ explicit PrefillShared(int d)
      : q(0),
        k(kBlockRows * d),
        v(2 * kBlockRows * d),
        state(2 * kBlockRows * d + kBlockRows * kValueSlice),
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
  float* Q = shared + layout.q;         // [kBlockRows, d]
  float* K = shared + layout.k;         // [kBlockRows, d]
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
      Q[t * d + i] = load(row + i);
      K[t * d + i] = load(row + d + i);
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
        for (int i = 0; i < d; ++i) dot += Q[t * d + i] * K[j * d + i];
        dot *= decay[t - j];
      }
      P[t * kBlockRows + j] = dot;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < m * width; idx += blockDim.x) {
      const int t = idx / width, e = idx % width;
      float inter = 0.0f;
      for (int i = 0; i < d; ++i) inter += Q[t * d + i] * S[i * kValueSlice + e];
      float intra = 0.0f;
      for (int j = 0; j <= t; ++j) intra += P[t * kBlockRows + j] * V[j * kValueSlice + e];
      store(out + (r0 + t) * out_stride + std::int64_t{h} * d + e0 + e, inter * decay[t + 1] + intra);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
      const int i = idx / width, e = idx % width;
      float acc = S[i * kValueSlice + e] * decay[m];
      for (int t = 0; t < m; ++t) acc += K[t * d + i] * decay[m - 1 - t] * V[t * kValueSlice + e];
      S[i * kValueSlice + e] = acc;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < d * width; idx += blockDim.x) {
    const int i = idx / width, e = idx % width;
    state_h[i * d + e0 + e] = S[i * kValueSlice + e];
  }
}

// One block per head, one thread per value column e.
template <typename T>
__global__ void lightning_decode_kernel(const T* qkv, int d, const float* slopes, float* state, T* out) {
  __shared__ float qk[2 * kMaxHeadDim];
  const int h = blockIdx.x;
  const T* row = qkv + std::int64_t{h} * 3 * d;
  for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) qk[i] = load(row + i);
  __syncthreads();
  const int e = threadIdx.x;
  if (e >= d) return;
  const float ratio = expf(-(slopes[h] * 1.0f));
  const float v = load(row + 2 * d + e);
  float* S = state + std::int64_t{h} * d * d;
  float acc = 0.0f;
  for (int i = 0; i < d; ++i) {
    const float s = ratio * S[i * d + e] + qk[d + i] * v;
    S[i * d + e] = s;
    acc += qk[i] * s;
  }
  store(out + std::int64_t{h} * d + e, acc);
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
  lightning_decode_kernel<<<static_cast<unsigned>(heads), kMaxHeadDim, 0, stream>>>(qkv, head_dim, slopes, state,
                                                                                     out);
  check(cudaGetLastError(), "lightning_decode");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                            \
  template void lightning_prefill<T>(const T*, std::int64_t, int, int, const float*, float*, T*, cudaStream_t); \
  template void lightning_decode<T>(const T*, int, int, const float*, float*, T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
