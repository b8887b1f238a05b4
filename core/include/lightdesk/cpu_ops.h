// The model's operations on the CPU in float32: the reference every other backend is checked
// against. Matrices are row-major; weights are [out, in] as torch.nn.Linear stores them.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "lightdesk/thread_pool.h"

namespace lightdesk::cpu {

// y[rows, out] = x[rows, in] · w[out, in]ᵀ  (BLAS).
void linear(const float* x, std::int64_t rows, std::int64_t in, const float* w, std::int64_t out, float* y);

// y = weight * x / sqrt(mean(x²) + eps) over each row of `width`; y may alias x.
void rms_norm(const float* x, std::int64_t rows, std::int64_t width, const float* weight, float eps, float* y,
              ThreadPool& pool);

float silu(float x);
float sigmoid(float x);

// Rotate-half RoPE on the first `rotary_dim` dims of each head of rows [rows, heads * head_dim];
// row r has position first_position + r.
void apply_rope(float* x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
                std::int64_t first_position);

// exp(-(slope * k)) for k = 0..count-1: the decay table every lightning formula reads.
std::vector<float> decay_table(float slope, int count);

// Lightning attention of a chunk of `rows` tokens for all heads, continuing from `state`
// ([heads, head_dim, head_dim], updated in place). qkv is the SiLU-activated projection,
// [rows, heads * 3 * head_dim] with per head [q | k | v]; out is [rows, heads * head_dim].
// The block algorithm with blocks of `block` rows (the result does not depend on it).
void lightning_prefill(const float* qkv, std::int64_t rows, int heads, int head_dim, std::span<const float> slopes,
                       int block, float* state, float* out, ThreadPool& pool);
// One token through the recurrence S = exp(-s) S + kᵀv, o = q S.
void lightning_decode(const float* qkv, int heads, int head_dim, std::span<const float> slopes, float* state,
                      float* out, ThreadPool& pool);

// Causal softmax attention of `rows` new queries [rows, heads * head_dim] at positions
// first_position.. over a cache of first_position + rows keys and values
// [positions, kv_heads * head_dim] (the new rows already appended). GQA: query head h reads
// kv head h / (heads / kv_heads). Scale head_dim^-0.5.
void softmax_attention(const float* q, std::int64_t rows, std::int64_t first_position, const float* keys,
                       const float* values, int heads, int kv_heads, int head_dim, float* out, ThreadPool& pool);

// row[0..count) = softmax(row[0..count)), count >= 1 (cpu_softmax_row.cpp: vectorised exp).
void softmax_row(float* row, std::int64_t count);

// Router: softmax over experts in float32, the top k (lower index first on ties), renormalised.
// Writes k expert ids and weights per row.
void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, int* expert_ids, float* weights);

struct ExpertMatrices {
  const float* w1;  // [width, hidden]
  const float* w3;  // [width, hidden]
  const float* w2;  // [hidden, width]
};

// out[rows, hidden] = Σ_k weight_k · w2(silu(w1 x) ⊙ w3 x) over each row's chosen experts,
// accumulated in increasing expert order like the reference. An expert whose w1 is null is
// another rank's: its rows' shares are left out.
void moe_experts(const float* x, std::int64_t rows, std::int64_t hidden, std::int64_t width,
                 std::span<const ExpertMatrices> experts, int k, const int* expert_ids, const float* weights,
                 float* out, ThreadPool& pool);
// The same with `experts` experts whose matrices come from matrices(e), asked only for an
// expert some row chose, once per call and valid until the next ask (experts kept in another
// format give float32 copies, one expert at a time).
void moe_experts(const float* x, std::int64_t rows, std::int64_t hidden, std::int64_t width, std::size_t experts,
                 const std::function<ExpertMatrices(std::size_t expert)>& matrices, int k, const int* expert_ids,
                 const float* weights, float* out, ThreadPool& pool);

}  // namespace lightdesk::cpu
