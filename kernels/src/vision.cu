// Kernels of the CLIP vision tower (cuda_vision_ops.h): layouts for the GEMMs (patch unfolding,
// head split and merge), LayerNorm, bias with GELU or residual, row softmax.
#include <cmath>

#include "common.cuh"
#include "lightdesk/cuda_vision_ops.h"

namespace lightdesk::cuda {

namespace {

// The layout and bias kernels run one block per row, its threads over the columns: the row's
// coordinates are divided out once per block, and the column arithmetic stays in 32 bits (64-bit
// division per element cost more than the memory traffic at ViT-L sizes).

// Row n is patch n % patches of tile n / patches.
template <typename T>
__global__ void unfold_patches_kernel(const float* pixels, int image_size, int patch, T* out) {
  const int side = image_size / patch, patches = side * side, patch_width = 3 * patch * patch;
  const std::int64_t n = blockIdx.x, t = n / patches;
  const int p = static_cast<int>(n % patches);
  const float* tile = pixels + t * 3 * image_size * image_size;
  T* row = out + n * patch_width;
  for (int e = threadIdx.x; e < patch_width; e += blockDim.x) {
    const int c = e / (patch * patch), y = e / patch % patch, x = e % patch;
    store(row + e,
          tile[(static_cast<std::int64_t>(c) * image_size + p / side * patch + y) * image_size + p % side * patch + x]);
  }
}

template <typename T>
__global__ void assemble_tokens_kernel(const T* patch_embeddings, const float* class_embedding, const float* positions,
                                       std::int64_t patches, int width, T* out) {
  const std::int64_t r = blockIdx.x, t = r / (patches + 1), n = r % (patches + 1);
  const T* embedding = n == 0 ? nullptr : patch_embeddings + (t * patches + n - 1) * width;
  const float* position = positions + n * width;
  T* row = out + r * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x)
    store(row + c, (embedding ? load(embedding + c) : class_embedding[c]) + position[c]);
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
__global__ void add_bias_kernel(T* y, int width, const float* bias, Activation activation) {
  T* row = y + std::int64_t{blockIdx.x} * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    const float v = load(row + c) + bias[c];
    store(row + c, activation == Activation::Gelu ? gelu(v) : v);
  }
}

template <typename T>
__global__ void add_bias_residual_kernel(const T* y, int width, const float* bias, T* residual) {
  const std::int64_t offset = std::int64_t{blockIdx.x} * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x)
    store(residual + offset + c, load(residual + offset + c) + (load(y + offset + c) + bias[c]));
}

// Row r of qkv is token r % tokens of tile r / tokens.
template <typename T>
__global__ void split_heads_kernel(const T* qkv, const float* bias, std::int64_t tokens, int heads, int head_dim, T* q,
                                   T* k, T* v) {
  const int width = heads * head_dim;
  const std::int64_t r = blockIdx.x, t = r / tokens, n = r % tokens;
  const T* row = qkv + r * 3 * width;
  for (int c = threadIdx.x; c < 3 * width; c += blockDim.x) {
    const int part = c / width, h = c % width / head_dim, j = c % head_dim;
    T* target = part == 0 ? q : part == 1 ? k : v;
    store(target + ((t * heads + h) * tokens + n) * head_dim + j, load(row + c) + bias[c]);
  }
}

template <typename T>
__global__ void merge_heads_kernel(const T* o, std::int64_t tokens, int heads, int head_dim, T* out) {
  const int width = heads * head_dim;
  const std::int64_t r = blockIdx.x, t = r / tokens, n = r % tokens;
  T* row = out + r * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x)
    row[c] = o[((t * heads + c / head_dim) * tokens + n) * head_dim + c % head_dim];
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
  top = warp_max(top);
  float sum = 0.0f;
  for (std::int64_t i = lane; i < width; i += 32) sum += expf(load(xr + i) - top);
  const float inv = 1.0f / warp_sum(sum);
  for (std::int64_t i = lane; i < width; i += 32) store(xr + i, expf(load(xr + i) - top) * inv);
}

}  // namespace

template <typename T>
void unfold_patches(const float* pixels, std::int64_t tiles, int image_size, int patch, T* out, cudaStream_t stream) {
  const std::int64_t rows = tiles * (image_size / patch) * (image_size / patch);
  if (rows == 0) return;
  unfold_patches_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(pixels, image_size, patch, out);
  check(cudaGetLastError(), "unfold_patches");
}

template <typename T>
void assemble_tokens(const T* patch_embeddings, const float* class_embedding, const float* positions,
                     std::int64_t tiles, std::int64_t patches, std::int64_t width, T* out, cudaStream_t stream) {
  if (tiles == 0) return;
  assemble_tokens_kernel<<<static_cast<unsigned>(tiles * (patches + 1)), kThreads, 0, stream>>>(
      patch_embeddings, class_embedding, positions, patches, static_cast<int>(width), out);
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
  if (rows == 0) return;
  add_bias_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(y, static_cast<int>(width), bias, activation);
  check(cudaGetLastError(), "add_bias");
}

template <typename T>
void add_bias_residual(const T* y, std::int64_t rows, std::int64_t width, const float* bias, T* residual,
                       cudaStream_t stream) {
  if (rows == 0) return;
  add_bias_residual_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(y, static_cast<int>(width), bias,
                                                                                 residual);
  check(cudaGetLastError(), "add_bias_residual");
}

template <typename T>
void split_heads(const T* qkv, const float* bias, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim,
                 T* q, T* k, T* v, cudaStream_t stream) {
  if (tiles * tokens == 0) return;
  split_heads_kernel<<<static_cast<unsigned>(tiles * tokens), kThreads, 0, stream>>>(qkv, bias, tokens, heads, head_dim,
                                                                                     q, k, v);
  check(cudaGetLastError(), "split_heads");
}

template <typename T>
void merge_heads(const T* o, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim, T* out,
                 cudaStream_t stream) {
  if (tiles * tokens == 0) return;
  merge_heads_kernel<<<static_cast<unsigned>(tiles * tokens), kThreads, 0, stream>>>(o, tokens, heads, head_dim, out);
  check(cudaGetLastError(), "merge_heads");
}

template <typename T>
void softmax_rows(T* x, std::int64_t rows, std::int64_t width, std::int64_t row_stride, cudaStream_t stream) {
  if (rows == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  softmax_rows_kernel<<<blocks, kThreads, 0, stream>>>(x, rows, width, row_stride);
  check(cudaGetLastError(), "softmax_rows");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                       \
  template void unfold_patches<T>(const float*, std::int64_t, int, int, T*, cudaStream_t);                             \
  template void assemble_tokens<T>(const T*, const float*, const float*, std::int64_t, std::int64_t, std::int64_t, T*, \
                                   cudaStream_t);                                                                      \
  template void layer_norm<T>(const T*, std::int64_t, std::int64_t, const float*, const float*, float, T*,             \
                              cudaStream_t);                                                                           \
  template void add_bias<T>(T*, std::int64_t, std::int64_t, const float*, Activation, cudaStream_t);                   \
  template void add_bias_residual<T>(const T*, std::int64_t, std::int64_t, const float*, T*, cudaStream_t);            \
  template void split_heads<T>(const T*, const float*, std::int64_t, std::int64_t, int, int, T*, T*, T*,               \
                               cudaStream_t);                                                                          \
  template void merge_heads<T>(const T*, std::int64_t, std::int64_t, int, int, T*, cudaStream_t);                      \
  template void softmax_rows<T>(T*, std::int64_t, std::int64_t, std::int64_t, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
