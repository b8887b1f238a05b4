// Row-wise and elementwise kernels: conversions, embedding, RMSNorm, activations, RoPE.
#include <cmath>

#include <cstdint>

#include "common.cuh"

namespace lightdesk::cuda {

namespace {

template <typename In, typename Out>
__global__ void convert_kernel(const In* in, std::int64_t n, Out* out) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    store(out + i, load(in + i));
}


template <typename T>
__global__ void fill_uniform_kernel(T* out, std::int64_t n, std::uint64_t seed, float low, float high) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const float unit = static_cast<float>(splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(i))) >> 40) * 0x1p-24f;
    store(out + i, low + (high - low) * unit);
  }
}

template <typename T>
__global__ void embed_kernel(const T* table, const std::int32_t* tokens, std::int64_t width, T* out) {
  const T* src = table + std::int64_t{tokens[blockIdx.x]} * width;
  T* dst = out + std::int64_t{blockIdx.x} * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// One block per row; the sum of squares in float32 (the CPU sums in double: the difference is
// far below bf16 resolution and near float32 rounding for the widths used).
template <typename T>
__global__ void rms_norm_kernel(const T* x, std::int64_t width, const float* weight, float eps, T* y) {
  const T* xr = x + std::int64_t{blockIdx.x} * width;
  T* yr = y + std::int64_t{blockIdx.x} * width;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = load(xr + i);
    sum += v * v;
  }
  const float inv = 1.0f / sqrtf(block_sum(sum) / static_cast<float>(width) + eps);
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) store(yr + i, weight[i] * (load(xr + i) * inv));
}

// A vocabulary-split table's rows first_row.. first_row + table_rows - 1: other tokens get zeros.
template <typename T>
__global__ void embed_part_kernel(const T* table, std::int64_t first_row, std::int64_t table_rows,
                                  const std::int32_t* tokens, std::int64_t width, T* out) {
  const std::int64_t row = std::int64_t{tokens[blockIdx.x]} - first_row;
  T* dst = out + std::int64_t{blockIdx.x} * width;
  if (row < 0 || row >= table_rows) {
    for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) store(dst + i, 0.0f);
    return;
  }
  const T* src = table + row * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// One block per row, as rms_norm_kernel sums.
template <typename T>
__global__ void sum_squares_kernel(const T* x, std::int64_t width, float* sums) {
  const T* xr = x + std::int64_t{blockIdx.x} * width;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = load(xr + i);
    sum += v * v;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = sum;
}

// rms_norm_kernel's scaling with the row's sum of squares given (over norm_width channels).
template <typename T>
__global__ void rms_norm_by_sums_kernel(const T* x, std::int64_t width, const float* sums, float norm_width,
                                        const float* weight, float eps, T* y) {
  const T* xr = x + std::int64_t{blockIdx.x} * width;
  T* yr = y + std::int64_t{blockIdx.x} * width;
  const float inv = 1.0f / sqrtf(sums[blockIdx.x] / norm_width + eps);
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) store(yr + i, weight[i] * (load(xr + i) * inv));
}

__device__ __forceinline__ float sigmoid_f(float v) { return 1.0f / (1.0f + expf(-v)); }

template <typename T>
__global__ void silu_kernel(T* x, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    store(x + i, silu_f(load(x + i)));
}

template <typename T>
__global__ void sigmoid_gate_kernel(T* x, const T* gate, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    store(x + i, load(x + i) * sigmoid_f(load(gate + i)));
}

template <typename T>
__global__ void scaled_sum_kernel(const T* a, float alpha, const T* b, float beta, std::int64_t n, T* out) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    store(out + i, load(a + i) * alpha + load(b + i) * beta);
}

// One thread per 16-byte piece of out when the rows allow (WholePieces), else per element.
template <typename T, bool WholePieces>
__global__ void swiglu_kernel(const T* gate_up, std::int64_t rows, std::int64_t width, T* out) {
  constexpr int kPiece = WholePieces ? 16 / sizeof(T) : 1;
  const std::int64_t pieces_per_row = width / kPiece, n = rows * pieces_per_row;
  for (std::int64_t p = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; p < n;
       p += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t r = p / pieces_per_row, c = p % pieces_per_row * kPiece;
    const T* gate = gate_up + r * 2 * width + c;
    T* result = out + r * width + c;
    if constexpr (WholePieces) {
      const uint4 gates = *reinterpret_cast<const uint4*>(gate), ups = *reinterpret_cast<const uint4*>(gate + width);
      uint4 piece;
      const T* g = reinterpret_cast<const T*>(&gates);
      const T* u = reinterpret_cast<const T*>(&ups);
      T* y = reinterpret_cast<T*>(&piece);
#pragma unroll
      for (int e = 0; e < kPiece; ++e) store(y + e, silu_f(load(g + e)) * load(u + e));
      *reinterpret_cast<uint4*>(result) = piece;
    } else {
      store(result, silu_f(load(gate)) * load(gate + width));
    }
  }
}

// One block per row, one thread per (head, rotated pair).
template <typename T>
__global__ void rope_kernel(T* x, int heads, int head_dim, int rotary_dim, float theta, Position first_position) {
  const int half = rotary_dim / 2;
  const float pos = static_cast<float>(first_position.get() + blockIdx.x);
  T* row = x + std::int64_t{blockIdx.x} * heads * head_dim;
  for (int item = threadIdx.x; item < heads * half; item += blockDim.x) {
    const int h = item / half, i = item % half;
    // Same float32 formula as cpu::apply_rope.
    const float inv_freq = 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(rotary_dim));
    const float angle = pos * inv_freq;
    const float c = cosf(angle), s = sinf(angle);
    T* v = row + h * head_dim;
    const float a = load(v + i), b = load(v + i + half);
    store(v + i, a * c - b * s);
    store(v + i + half, b * c + a * s);
  }
}

}  // namespace

template <typename T>
void from_float(const float* in, std::int64_t n, T* out, cudaStream_t stream) {
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(in, n, out);
  check(cudaGetLastError(), "from_float");
}

template <typename T>
void to_float(const T* in, std::int64_t n, float* out, cudaStream_t stream) {
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(in, n, out);
  check(cudaGetLastError(), "to_float");
}

template <typename T>
void fill_uniform(T* out, std::int64_t n, std::uint64_t seed, float low, float high, cudaStream_t stream) {
  fill_uniform_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, n, seed, low, high);
  check(cudaGetLastError(), "fill_uniform");
}

template <typename T>
void embed_rows(const T* table, const std::int32_t* tokens, std::int64_t rows, std::int64_t width, T* out,
                cudaStream_t stream) {
  if (rows == 0) return;
  embed_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(table, tokens, width, out);
  check(cudaGetLastError(), "embed_rows");
}

template <typename T>
void rms_norm(const T* x, std::int64_t rows, std::int64_t width, const float* weight, float eps, T* y,
              cudaStream_t stream) {
  if (rows == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, width, weight, eps, y);
  check(cudaGetLastError(), "rms_norm");
}

template <typename T>
void embed_part_rows(const T* table, std::int64_t first_row, std::int64_t table_rows, const std::int32_t* tokens,
                     std::int64_t rows, std::int64_t width, T* out, cudaStream_t stream) {
  if (rows == 0) return;
  embed_part_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(table, first_row, table_rows, tokens, width,
                                                                           out);
  check(cudaGetLastError(), "embed_part_rows");
}

template <typename T>
void sum_squares(const T* x, std::int64_t rows, std::int64_t width, float* sums, cudaStream_t stream) {
  if (rows == 0) return;
  sum_squares_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, width, sums);
  check(cudaGetLastError(), "sum_squares");
}

template <typename T>
void rms_norm_by_sums(const T* x, std::int64_t rows, std::int64_t width, const float* sums, std::int64_t norm_width,
                      const float* weight, float eps, T* y, cudaStream_t stream) {
  if (rows == 0) return;
  rms_norm_by_sums_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      x, width, sums, static_cast<float>(norm_width), weight, eps, y);
  check(cudaGetLastError(), "rms_norm_by_sums");
}

template <typename T>
void silu(T* x, std::int64_t n, cudaStream_t stream) {
  silu_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n);
  check(cudaGetLastError(), "silu");
}

template <typename T>
void sigmoid_gate(T* x, const T* gate, std::int64_t n, cudaStream_t stream) {
  sigmoid_gate_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, gate, n);
  check(cudaGetLastError(), "sigmoid_gate");
}

template <typename T>
void scaled_sum(const T* a, float alpha, const T* b, float beta, std::int64_t n, T* out, cudaStream_t stream) {
  scaled_sum_kernel<<<grid_for(n), kThreads, 0, stream>>>(a, alpha, b, beta, n, out);
  check(cudaGetLastError(), "scaled_sum");
}

template <typename T>
void swiglu(const T* gate_up, std::int64_t rows, std::int64_t width, T* out, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  constexpr int kPiece = 16 / sizeof(T);
  if (whole_pieces<T>(width, gate_up, out))
    swiglu_kernel<T, true><<<grid_for(rows * width / kPiece), kThreads, 0, stream>>>(gate_up, rows, width, out);
  else
    swiglu_kernel<T, false><<<grid_for(rows * width), kThreads, 0, stream>>>(gate_up, rows, width, out);
  check(cudaGetLastError(), "swiglu");
}

template <typename T>
void rope(T* x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta, Position first_position,
          cudaStream_t stream) {
  if (rows == 0 || rotary_dim == 0) return;
  rope_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, heads, head_dim, rotary_dim, theta,
                                                                      first_position);
  check(cudaGetLastError(), "rope");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                \
  template void from_float<T>(const float*, std::int64_t, T*, cudaStream_t);                                   \
  template void to_float<T>(const T*, std::int64_t, float*, cudaStream_t);                                     \
  template void fill_uniform<T>(T*, std::int64_t, std::uint64_t, float, float, cudaStream_t);                  \
  template void embed_rows<T>(const T*, const std::int32_t*, std::int64_t, std::int64_t, T*, cudaStream_t);    \
  template void rms_norm<T>(const T*, std::int64_t, std::int64_t, const float*, float, T*, cudaStream_t);       \
  template void embed_part_rows<T>(const T*, std::int64_t, std::int64_t, const std::int32_t*, std::int64_t,       \
                                   std::int64_t, T*, cudaStream_t);                                             \
  template void sum_squares<T>(const T*, std::int64_t, std::int64_t, float*, cudaStream_t);                     \
  template void rms_norm_by_sums<T>(const T*, std::int64_t, std::int64_t, const float*, std::int64_t,           \
                                    const float*, float, T*, cudaStream_t);                                     \
  template void silu<T>(T*, std::int64_t, cudaStream_t);                                                        \
  template void sigmoid_gate<T>(T*, const T*, std::int64_t, cudaStream_t);                                      \
  template void scaled_sum<T>(const T*, float, const T*, float, std::int64_t, T*, cudaStream_t);                \
  template void swiglu<T>(const T*, std::int64_t, std::int64_t, T*, cudaStream_t);                              \
  template void rope<T>(T*, std::int64_t, int, int, int, float, Position, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
