#include "lightdesk/cpu_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lightdesk::cpu {

void linear(const float* x, std::int64_t rows, std::int64_t in, const float* w, std::int64_t out, float* y) {
  if (rows == 0 || out == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(out),
              static_cast<blasint>(in), 1.0f, x, static_cast<blasint>(in), w, static_cast<blasint>(in), 0.0f, y,
              static_cast<blasint>(out));
}

void rms_norm(const float* x, std::int64_t rows, std::int64_t width, const float* weight, float eps, float* y,
              ThreadPool& pool) {
  pool.parallel_for(rows, [&](std::int64_t r) {
    const float* xr = x + r * width;
    float* yr = y + r * width;
    double sum = 0.0;
    for (std::int64_t i = 0; i < width; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(width)) + eps);
    for (std::int64_t i = 0; i < width; ++i) yr[i] = weight[i] * (xr[i] * inv);
  });
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void apply_rope(float* x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
                std::int64_t first_position) {
  if (rotary_dim == 0) return;
  const int half = rotary_dim / 2;
  std::vector<float> inv_freq(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i)
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(rotary_dim));
  std::vector<float> cos_row(static_cast<std::size_t>(half)), sin_row(static_cast<std::size_t>(half));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float pos = static_cast<float>(first_position + r);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cos_row[i] = std::cos(angle);
      sin_row[i] = std::sin(angle);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos_row[i] - b * sin_row[i];
        v[i + half] = b * cos_row[i] + a * sin_row[i];
      }
    }
  }
}

std::vector<float> decay_table(float slope, int count) {
  std::vector<float> table(static_cast<std::size_t>(count));
  for (int k = 0; k < count; ++k) table[k] = std::exp(-(slope * static_cast<float>(k)));
  return table;
}

void lightning_prefill(const float* qkv, std::int64_t rows, int heads, int head_dim, std::span<const float> slopes,
                       int block, float* state, float* out, ThreadPool& pool) {
  const int d = head_dim;
  const std::int64_t qkv_stride = std::int64_t{heads} * 3 * d;
  const std::int64_t out_stride = std::int64_t{heads} * d;
  pool.parallel_for(heads, [&](std::int64_t h) {
    const std::vector<float> decay = decay_table(slopes[h], block + 1);
    float* S = state + h * d * d;
    std::vector<float> qs(static_cast<std::size_t>(d)), intra(static_cast<std::size_t>(d));
    std::vector<float> scores(static_cast<std::size_t>(block));
    for (std::int64_t r0 = 0; r0 < rows; r0 += block) {
      const int m = static_cast<int>(std::min<std::int64_t>(block, rows - r0));
      for (int t = 0; t < m; ++t) {
        const float* q = qkv + (r0 + t) * qkv_stride + h * 3 * d;
        float* o = out + (r0 + t) * out_stride + h * d;
        // Inter-block: the state of everything before this block, decayed to row t.
        for (int i = 0; i < d; ++i) qs[i] = q[i] * decay[t + 1];
        std::fill(o, o + d, 0.0f);
        for (int i = 0; i < d; ++i) {
          const float qi = qs[i];
          const float* Si = S + i * d;
          for (int e = 0; e < d; ++e) o[e] += qi * Si[e];
        }
        // Intra-block: causal, decayed q·k within the block.
        for (int j = 0; j <= t; ++j) {
          const float* k = qkv + (r0 + j) * qkv_stride + h * 3 * d + d;
          float dot = 0.0f;
          for (int i = 0; i < d; ++i) dot += q[i] * k[i];
          scores[j] = dot * decay[t - j];
        }
        std::fill(intra.begin(), intra.end(), 0.0f);
        for (int j = 0; j <= t; ++j) {
          const float* v = qkv + (r0 + j) * qkv_stride + h * 3 * d + 2 * d;
          const float a = scores[j];
          for (int e = 0; e < d; ++e) intra[e] += a * v[e];
        }
        for (int e = 0; e < d; ++e) o[e] += intra[e];
      }
      // State after the block: S·exp(-s m) + Σ_t exp(-s (m-1-t)) k_tᵀ v_t.
      const float block_decay = decay[m];
      for (int i = 0; i < d * d; ++i) S[i] *= block_decay;
      for (int t = 0; t < m; ++t) {
        const float* k = qkv + (r0 + t) * qkv_stride + h * 3 * d + d;
        const float* v = k + d;
        const float kd = decay[m - 1 - t];
        for (int i = 0; i < d; ++i) {
          const float ki = k[i] * kd;
          float* Si = S + i * d;
          for (int e = 0; e < d; ++e) Si[e] += ki * v[e];
        }
      }
    }
  });
}

void lightning_decode(const float* qkv, int heads, int head_dim, std::span<const float> slopes, float* state,
                      float* out, ThreadPool& pool) {
  const int d = head_dim;
  pool.parallel_for(heads, [&](std::int64_t h) {
    const float* q = qkv + h * 3 * d;
    const float* k = q + d;
    const float* v = q + 2 * d;
    float* S = state + h * d * d;
    float* o = out + h * d;
    const float ratio = std::exp(-(slopes[h] * 1.0f));
    std::fill(o, o + d, 0.0f);
    for (int i = 0; i < d; ++i) {
      float* Si = S + i * d;
      for (int e = 0; e < d; ++e) Si[e] = ratio * Si[e] + k[i] * v[e];
      const float qi = q[i];
      for (int e = 0; e < d; ++e) o[e] += qi * Si[e];
    }
  });
}

void softmax_attention(const float* q, std::int64_t rows, std::int64_t first_position, const float* keys,
                       const float* values, int heads, int kv_heads, int head_dim, float* out, ThreadPool& pool) {
  if (rows == 0) return;
  const int d = head_dim;
  const int group = heads / kv_heads;
  const std::int64_t q_stride = std::int64_t{heads} * d;
  const std::int64_t kv_stride = std::int64_t{kv_heads} * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Blocks of query rows go through two BLAS GEMMs (scores = Q·Kᵀ, out = P·V) over the keys the
  // block's last row sees; a per-row loop would be scalar code and some 20× slower at long
  // contexts. The block is sized to keep its score matrix near 16 MiB at any context length.
  constexpr std::int64_t kScoreBudget = std::int64_t{1} << 22;
  const std::int64_t block_rows = std::clamp<std::int64_t>(kScoreBudget / (first_position + rows), 1, 64);
  std::vector<float> scores(static_cast<std::size_t>(block_rows * (first_position + rows)));
  for (std::int64_t t0 = 0; t0 < rows; t0 += block_rows) {
    const std::int64_t block = std::min(block_rows, rows - t0);
    const std::int64_t keys_seen = first_position + t0 + block;
    for (int h = 0; h < heads; ++h) {
      const int g = h / group;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(block),
                  static_cast<blasint>(keys_seen), d, scale, q + t0 * q_stride + h * d,
                  static_cast<blasint>(q_stride), keys + g * d, static_cast<blasint>(kv_stride), 0.0f,
                  scores.data(), static_cast<blasint>(keys_seen));
      // Causal softmax of each row in place; the keys a row must not see get probability 0.
      pool.parallel_for(block, [&](std::int64_t r) {
        float* row = scores.data() + r * keys_seen;
        const std::int64_t visible = first_position + t0 + r + 1;
        softmax_row(row, visible);
        std::fill(row + visible, row + keys_seen, 0.0f);
      });
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(block), d,
                  static_cast<blasint>(keys_seen), 1.0f, scores.data(), static_cast<blasint>(keys_seen),
                  values + g * d, static_cast<blasint>(kv_stride), 0.0f, out + t0 * q_stride + h * d,
                  static_cast<blasint>(q_stride));
    }
  }
}

void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, int* expert_ids, float* weights) {
  std::vector<float> probs(static_cast<std::size_t>(experts));
  std::vector<int> order(static_cast<std::size_t>(experts));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = router_logits + r * experts;
    const float max_logit = *std::max_element(x, x + experts);
    float sum = 0.0f;
    for (int e = 0; e < experts; ++e) sum += probs[e] = std::exp(x[e] - max_logit);
    for (int e = 0; e < experts; ++e) probs[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
    float top_sum = 0.0f;
    for (int i = 0; i < k; ++i) top_sum += probs[order[i]];
    for (int i = 0; i < k; ++i) {
      expert_ids[r * k + i] = order[i];
      weights[r * k + i] = probs[order[i]] / top_sum;
    }
  }
}

void moe_experts(const float* x, std::int64_t rows, std::int64_t hidden, std::int64_t width,
                 std::span<const ExpertMatrices> experts, int k, const int* expert_ids, const float* weights,
                 float* out, ThreadPool& pool) {
  moe_experts(x, rows, hidden, width, experts.size(), [&](std::size_t e) { return experts[e]; }, k, expert_ids,
              weights, out, pool);
}

void moe_experts(const float* x, std::int64_t rows, std::int64_t hidden, std::int64_t width, std::size_t experts,
                 const std::function<ExpertMatrices(std::size_t expert)>& matrices, int k, const int* expert_ids,
                 const float* weights, float* out, ThreadPool& pool) {
  std::fill(out, out + rows * hidden, 0.0f);
  std::vector<float> xe, gate, up, ye;
  std::vector<std::int64_t> members;
  std::vector<float> member_weights;
  for (std::size_t e = 0; e < experts; ++e) {
    members.clear();
    member_weights.clear();
    for (std::int64_t r = 0; r < rows; ++r)
      for (int i = 0; i < k; ++i)
        if (expert_ids[r * k + i] == static_cast<int>(e)) {
          members.push_back(r);
          member_weights.push_back(weights[r * k + i]);
        }
    const auto n = static_cast<std::int64_t>(members.size());
    if (n == 0) continue;  // none of its tokens
    const ExpertMatrices m = matrices(e);
    if (!m.w1) continue;  // another rank holds it
    xe.resize(static_cast<std::size_t>(n * hidden));
    for (std::int64_t i = 0; i < n; ++i) std::copy_n(x + members[i] * hidden, hidden, xe.data() + i * hidden);
    gate.resize(static_cast<std::size_t>(n * width));
    up.resize(static_cast<std::size_t>(n * width));
    ye.resize(static_cast<std::size_t>(n * hidden));
    linear(xe.data(), n, hidden, m.w1, width, gate.data());
    linear(xe.data(), n, hidden, m.w3, width, up.data());
    pool.parallel_for(n, [&](std::int64_t i) {
      for (std::int64_t c = 0; c < width; ++c) gate[i * width + c] = silu(gate[i * width + c]) * up[i * width + c];
    });
    linear(gate.data(), n, width, m.w2, hidden, ye.data());
    for (std::int64_t i = 0; i < n; ++i) {
      float* o = out + members[i] * hidden;
      const float w = member_weights[i];
      for (std::int64_t c = 0; c < hidden; ++c) o[c] += ye[i * hidden + c] * w;
    }
  }
}

}  // namespace lightdesk::cpu
