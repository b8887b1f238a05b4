// The CLIP vision tower's operations on an NVIDIA GPU (MiniMax-VL-01's image path), with the
// conventions of cuda_ops.h: row-major, T is float or bf16, arithmetic in float32, work enqueued
// on `stream`. Vectors (LayerNorm weights, biases, embeddings) are float32 whatever T is.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lightdesk/cuda_ops.h"

namespace lightdesk::cuda {

// The patches of pixel tiles [tiles, 3, image_size, image_size] (float32) as rows
// [tiles * (image_size / patch)², 3 * patch * patch], each in (channel, y, x) order, the order of
// the patch convolution's weight, so that the embedding is one GEMM.
template <typename T>
void unfold_patches(const float* pixels, std::int64_t tiles, int image_size, int patch, T* out, cudaStream_t stream);

// The token rows of each tile: out[t, 0] = class_embedding + positions[0] and
// out[t, 1 + p] = patch_embeddings[t, p] + positions[1 + p]; out is [tiles * (patches + 1), width].
template <typename T>
void assemble_tokens(const T* patch_embeddings, const float* class_embedding, const float* positions,
                     std::int64_t tiles, std::int64_t patches, std::int64_t width, T* out, cudaStream_t stream);

// y = (x − mean) / sqrt(variance + eps) · weight + bias over each row (biased variance, as
// torch.nn.LayerNorm); y may alias x.
template <typename T>
void layer_norm(const T* x, std::int64_t rows, std::int64_t width, const float* weight, const float* bias, float eps,
                T* y, cudaStream_t stream);

enum class Activation { None, Gelu };  // Gelu: the exact one, x/2 · (1 + erf(x/√2))

// y[r, c] = activation(y[r, c] + bias[c]).
template <typename T>
void add_bias(T* y, std::int64_t rows, std::int64_t width, const float* bias, Activation activation,
              cudaStream_t stream);

// residual[r, c] += y[r, c] + bias[c].
template <typename T>
void add_bias_residual(const T* y, std::int64_t rows, std::int64_t width, const float* bias, T* residual,
                       cudaStream_t stream);

// qkv [tiles * tokens, 3 * heads * head_dim] (q | k | v, heads side by side) plus bias
// [3 * heads * head_dim] to q, k, v [tiles * heads, tokens, head_dim] each: every (tile, head) a
// contiguous matrix for the batched attention GEMMs.
template <typename T>
void split_heads(const T* qkv, const float* bias, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim,
                 T* q, T* k, T* v, cudaStream_t stream);

// The inverse layout change: o [tiles * heads, tokens, head_dim] to out [tiles * tokens, heads * head_dim].
template <typename T>
void merge_heads(const T* o, std::int64_t tiles, std::int64_t tokens, int heads, int head_dim, T* out,
                 cudaStream_t stream);

// Softmax over the first `width` values of each row of x [rows, row_stride], in place (float32
// inside; with bf16 scores this rounds where PyTorch's eager bf16 attention does).
template <typename T>
void softmax_rows(T* x, std::int64_t rows, std::int64_t width, std::int64_t row_stride, cudaStream_t stream);

}  // namespace lightdesk::cuda
