#include "lightdesk/cpu_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace lightdesk::cpu {

void use_one_blas_thread() {
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

void linear(const float* x, std::int64_t rows, std::int64_t in, const float* w, std::int64_t out, float* y,
            ThreadPool& pool) {
  if (rows == 0 || out == 0) return;
  use_one_blas_thread();
  // Split over the pool's threads: by rows of x where there are enough, else (decode) by rows of
  // w, the output columns. Products too small to gain from a split run on the calling thread.
  constexpr std::int64_t kMinSplitProducts = std::int64_t{1} << 16;
  const std::int64_t parts =
      rows * in * out < kMinSplitProducts ? 1 : std::min<std::int64_t>(pool.size(), std::max(rows, out / 16));
  const bool by_rows = rows >= parts * 4;
  const std::int64_t extent = by_rows ? rows : out;
  pool.parallel_for(parts, [&](std::int64_t p) {
    const std::int64_t first = extent * p / parts, count = extent * (p + 1) / parts - first;
    if (count == 0) return;
    const float* xp = by_rows ? x + first * in : x;
    const float* wp = by_rows ? w : w + first * in;
    float* yp = by_rows ? y + first * out : y + first;
    const std::int64_t part_rows = by_rows ? count : rows, part_out = by_rows ? out : count;
    // A few rows (decode) as matrix-vector products: sgemm would repack the weights each call.
    if (part_rows < 4) {
      for (std::int64_t r = 0; r < part_rows; ++r)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(part_out), static_cast<blasint>(in), 1.0f, wp,
                    static_cast<blasint>(in), xp + r * in, 1, 0.0f, yp + r * out, 1);
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(part_rows),
                static_cast<blasint>(part_out), static_cast<blasint>(in), 1.0f, xp, static_cast<blasint>(in), wp,
                static_cast<blasint>(in), 0.0f, yp, static_cast<blasint>(out));
  });
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
  use_one_blas_thread();
  const int d = head_dim;
  const auto qkv_stride = static_cast<blasint>(std::int64_t{heads} * 3 * d);
  const auto out_stride = static_cast<blasint>(std::int64_t{heads} * d);
  // Each block's three parts are GEMMs on the head's strided q, k, v columns of qkv.
  pool.parallel_for(heads, [&](std::int64_t h) {
    const std::vector<float> decay = decay_table(slopes[h], block + 1);
    float* S = state + h * d * d;
    thread_local std::vector<float> scores, decayed_keys;
    scores.resize(static_cast<std::size_t>(block) * block);
    decayed_keys.resize(static_cast<std::size_t>(block) * d);
    for (std::int64_t r0 = 0; r0 < rows; r0 += block) {
      const int m = static_cast<int>(std::min<std::int64_t>(block, rows - r0));
      const float* q = qkv + r0 * qkv_stride + h * 3 * d;
      const float* k = q + d;
      const float* v = q + 2 * d;
      float* o = out + r0 * out_stride + h * d;
      // Inter-block: o_t = exp(-s (t+1)) q_t · S, the state of everything before this block.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, d, d, 1.0f, q, qkv_stride, S, d, 0.0f, o, out_stride);
      for (int t = 0; t < m; ++t)
        for (int e = 0; e < d; ++e) o[std::int64_t{t} * out_stride + e] *= decay[t + 1];
      // Intra-block: o_t += Σ_{j<=t} exp(-s (t-j)) (q_t · k_j) v_j.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, d, 1.0f, q, qkv_stride, k, qkv_stride, 0.0f,
                  scores.data(), m);
      for (int t = 0; t < m; ++t) {
        float* row = scores.data() + std::int64_t{t} * m;
        for (int j = 0; j <= t; ++j) row[j] *= decay[t - j];
        std::fill(row + t + 1, row + m, 0.0f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, d, m, 1.0f, scores.data(), m, v, qkv_stride, 1.0f, o,
                  out_stride);
      // State after the block: S·exp(-s m) + Σ_t exp(-s (m-1-t)) k_tᵀ v_t.
      for (int t = 0; t < m; ++t)
        for (int i = 0; i < d; ++i)
          decayed_keys[std::int64_t{t} * d + i] = k[std::int64_t{t} * qkv_stride + i] * decay[m - 1 - t];
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, m, 1.0f, decayed_keys.data(), d, v, qkv_stride,
                  decay[m], S, d);
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

void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, int* expert_ids, float* weights) {
  thread_local std::vector<float> probs;
  thread_local std::vector<char> taken;
  probs.resize(static_cast<std::size_t>(experts));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = router_logits + r * experts;
    const float max_logit = *std::max_element(x, x + experts);
    float sum = 0.0f;
    for (int e = 0; e < experts; ++e) sum += probs[e] = std::exp(x[e] - max_logit);
    for (int e = 0; e < experts; ++e) probs[e] /= sum;
    // The k largest by selection (k is small): the first of equal ones, as a stable sort.
    taken.assign(static_cast<std::size_t>(experts), 0);
    float top_sum = 0.0f;
    for (int i = 0; i < k; ++i) {
      int best = -1;
      for (int e = 0; e < experts; ++e)
        if (!taken[e] && (best < 0 || probs[e] > probs[best])) best = e;
      taken[best] = 1;
      expert_ids[r * k + i] = best;
      top_sum += probs[best];
    }
    for (int i = 0; i < k; ++i) weights[r * k + i] = probs[expert_ids[r * k + i]] / top_sum;
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
  // Reused by the next call on this thread: a decode step allocates nothing here.
  thread_local std::vector<float> xe, gate, up, ye;
  thread_local std::vector<std::int64_t> members;
  thread_local std::vector<float> member_weights;
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
    linear(xe.data(), n, hidden, m.w1, width, gate.data(), pool);
    linear(xe.data(), n, hidden, m.w3, width, up.data(), pool);
    silu(gate.data(), n * width);
    for (std::int64_t c = 0; c < n * width; ++c) gate[c] *= up[c];
    linear(gate.data(), n, width, m.w2, hidden, ye.data(), pool);
    for (std::int64_t i = 0; i < n; ++i) {
      float* o = out + members[i] * hidden;
      const float w = member_weights[i];
      for (std::int64_t c = 0; c < hidden; ++c) o[c] += ye[i * hidden + c] * w;
    }
  }
}

}  // namespace lightdesk::cpu
