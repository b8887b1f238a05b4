// Kernels of the CLIP vision tower (cuda_vision_ops.h): layouts for the GEMMs (patch unfolding,
// head split and merge), LayerNorm, bias with GELU or residual, row softmax.
#include <cmath>

#include "common.cuh"
#include "lightdesk/cuda_vision_ops.h"

namespace lightdesk::cuda {

namespace {

// Grid-stride loop over n elements.
#define LIGHTDESK_FOR_EACH_INDEX(i, n)                                                       \
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += std::int64_t{gridDim.x} * blockDim.x)

template <typename T>
__global__ void unfold_patches_kernel(const float* pixels, std::int64_t tiles, int image_size, int patch, T* out) {
  const int side = image_size / patch;
  const std::int64_t patch_width = 3 * patch * patch, patches = std::int64_t{side} * side;
  LIGHTDESK_FOR_EACH_INDEX(i, tiles * patches * patch_width) {
    const std::int64_t n = i / patch_width, t = n / patches;
    const int e = static_cast<int>(i % patch_width), p = static_cast<int>(n % patches);
    const int c = e / (patch * patch), y = e / patch % patch, x = e % patch;
    const int row = p / side * patch + y, column = p % side * patch + x;
    store(out + i, pixels[((t * 3 + c) * image_size + row) * image_size + column]);
  }
}

template <typename T>
__global__ void assemble_tokens_kernel(const T* patch_embeddings, const float* class_embedding, const float* positions,
                                       std::int64_t tiles, std::int64_t patches, std::int64_t width, T* out) {
  const std::int64_t tokens = patches + 1;
  LIGHTDESK_FOR_EACH_INDEX(i, tiles * tokens * width) {
    const std::int64_t r = i / width, c = i % width, t = r / tokens, n = r % tokens;
    const float value = n == 0 ? class_embedding[c] : load(patch_embeddings + (t * patches + n - 1) * width + c);
    store(out + i, value + positions[n * width + c]);
  }
}

// The sum over the block (blockDim.x a multiple of 32, at most kThreads), returned to every thread.
__device__ float block_sum(float v) {
  __shared__ float partial[kThreads / 32];
  v = warp_sum(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
  return total;
}

// One block per row; mean first, then the variance around it (no cancellation).
template <typename T>
__global__ void layer_norm_kernel(const T* x, std::int64_t width, const float* weight, const float* bias, float eps,
                                  T* y) {
  const T* xr = x + std::int64_t{blockIdx.x} * width;
  T* yr = y + std::int64_t{blockIdx.x} * width;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) sum += load(xr + i);
  const float mean = block_sum(sum) / static_cast<float>(width);
  float squares = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float d = load(xr + i) - mean;
    squares += d * d;
  }
  const float inv = rsqrtf(block_sum(squares) / static_cast<float>(width) + eps);
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x)
    store(yr + i, (load(xr + i) - mean) * inv * weight[i] + bias[i]);
}

__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

template <typename T>
__global__ void add_bias_kernel(T* y, std::int64_t rows, std::int64_t width, const float* bias, Activation activation) {
  LIGHTDESK_FOR_EACH_INDEX(i, rows * width) {
    const float v = load(y + i) + bias[i % width];
    store(y + i, activation == Activation::Gelu ? gelu(v) : v);
  }
}

template <typename T>
__global__ void add_bias_residual_kernel(const T* y, std::int64_t rows, std::int64_t width, const float* bias,
                                         T* residual) {
  LIGHTDESK_FOR_EACH_INDEX(i, rows * width) store(residual + i, load(residual + i) + (load(y + i) + bias[i % width]));
}

template <typename T>
__global__ void split_heads_kernel(const T* qkv, const float* bias, std::int64_t tiles, std::int64_t tokens, int heads,
                                   int head_dim, T* q, T* k, T* v) {
  const std::int64_t width = std::int64_t{heads} * head_dim;
  LIGHTDESK_FOR_EACH_INDEX(i, tiles * tokens * 3 * width) {
    const std::int64_t r = i / (3 * width), c = i % (3 * width);
    const std::int64_t part = c / width, h = c % width / head_dim, j = c % head_dim;
    const std::int64_t t = r / tokens, n = r % tokens;
    T* target = part == 0 ? q : part == 1 ? k : v;
    store(target + ((t * heads + h) * tokens + n) * head_dim + j, load(qkv + i) + bias[c]);
  }
}

template <typename T>
__global__ void merge_heads_kernel(const T* o, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim,
                                   T* out) {
  const std::int64_t width = std::int64_t{heads} * head_dim;
  LIGHTDESK_FOR_EACH_INDEX(i, tiles * tokens * width) {
    const std::int64_t r = i / width, c = i % width, h = c / head_dim, j = c % head_dim;
    const std::int64_t t = r / tokens, n = r % tokens;
    out[i] = o[((t * heads + h) * tokens + n) * head_dim + j];
  }
}

constexpr int kRowsPerBlock = kThreads / 32;

// One warp per row.
template <typename T>
__global__ void softmax_rows_kernel(T* x, std::int64_t rows, std::int64_t width, std::int64_t row_stride) {
  const std::int64_t row = std::int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  T* xr = x + row * row_stride;
  const unsigned lane = threadIdx.x % 32;
  float top = -INFINITY;
  for (std::int64_t i = lane; i < width; i += 32) top = fmaxf(top, load(xr + i));
  for (int offset = 16; offset > 0; offset /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
  float sum = 0.0f;
  for (std::int64_t i = lane; i < width; i += 32) sum += expf(load(xr + i) - top);
  const float inv = 1.0f / warp_sum(sum);
  for (std::int64_t i = lane; i < width; i += 32) store(xr + i, expf(load(xr + i) - top) * inv);
}

#undef LIGHTDESK_FOR_EACH_INDEX

}  // namespace

template <typename T>
void unfold_patches(const float* pixels, std::int64_t tiles, int image_size, int patch, T* out, cudaStream_t stream) {
  const std::int64_t n = tiles * image_size * image_size * 3;
  unfold_patches_kernel<<<grid_for(n), kThreads, 0, stream>>>(pixels, tiles, image_size, patch, out);
  check(cudaGetLastError(), "unfold_patches");
}

template <typename T>
void assemble_tokens(const T* patch_embeddings, const float* class_embedding, const float* positions,
                     std::int64_t tiles, std::int64_t patches, std::int64_t width, T* out, cudaStream_t stream) {
  assemble_tokens_kernel<<<grid_for(tiles * (patches + 1) * width), kThreads, 0, stream>>>(
      patch_embeddings, class_embedding, positions, tiles, patches, width, out);
  check(cudaGetLastError(), "assemble_tokens");
}

template <typename T>
void layer_norm(const T* x, std::int64_t rows, std::int64_t width, const float* weight, const float* bias, float eps,
                T* y, cudaStream_t stream) {
  if (rows == 0) return;
  layer_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, width, weight, bias, eps, y);
  check(cudaGetLastError(), "layer_norm");
}

template <typename T>
void add_bias(T* y, std::int64_t rows, std::int64_t width, const float* bias, Activation activation,
              cudaStream_t stream) {
  add_bias_kernel<<<grid_for(rows * width), kThreads, 0, stream>>>(y, rows, width, bias, activation);
  check(cudaGetLastError(), "add_bias");
}

template <typename T>
void add_bias_residual(const T* y, std::int64_t rows, std::int64_t width, const float* bias, T* residual,
                       cudaStream_t stream) {
  add_bias_residual_kernel<<<grid_for(rows * width), kThreads, 0, stream>>>(y, rows, width, bias, residual);
  check(cudaGetLastError(), "add_bias_residual");
}

template <typename T>
void split_heads(const T* qkv, const float* bias, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim,
                 T* q, T* k, T* v, cudaStream_t stream) {
  split_heads_kernel<<<grid_for(tiles * tokens * 3 * heads * head_dim), kThreads, 0, stream>>>(
      qkv, bias, tiles, tokens, heads, head_dim, q, k, v);
  check(cudaGetLastError(), "split_heads");
}

template <typename T>
void merge_heads(const T* o, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim, T* out,
                 cudaStream_t stream) {
  merge_heads_kernel<<<grid_for(tiles * tokens * heads * head_dim), kThreads, 0, stream>>>(o, tiles, tokens, heads,
                                                                                          head_dim, out);
  check(cudaGetLastError(), "merge_heads");
}

template <typename T>
void softmax_rows(T* x, std::int64_t rows, std::int64_t width, std::int64_t row_stride, cudaStream_t stream) {
  if (rows == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  softmax_rows_kernel<<<blocks, kThreads, 0, stream>>>(x, rows, width, row_stride);
  check(cudaGetLastError(), "softmax_rows");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                   \
  template void unfold_patches<T>(const float*, std::int64_t, int, int, T*, cudaStream_t);                         \
  template void assemble_tokens<T>(const T*, const float*, const float*, std::int64_t, std::int64_t, std::int64_t, \
                                   T*, cudaStream_t);                                                              \
  template void layer_norm<T>(const T*, std::int64_t, std::int64_t, const float*, const float*, float, T*,         \
                              cudaStream_t);                                                                       \
  template void add_bias<T>(T*, std::int64_t, std::int64_t, const float*, Activation, cudaStream_t);              \
  template void add_bias_residual<T>(const T*, std::int64_t, std::int64_t, const float*, T*, cudaStream_t);        \
  template void split_heads<T>(const T*, const float*, std::int64_t, std::int64_t, int, int, T*, T*, T*,           \
                               cudaStream_t);                                                                      \
  template void merge_heads<T>(const T*, std::int64_t, std::int64_t, int, int, T*, cudaStream_t);                  \
  template void softmax_rows<T>(T*, std::int64_t, std::int64_t, std::int64_t, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
