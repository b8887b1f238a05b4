// The CPU reference ops against straightforward float64 formulas on random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lightdesk/cpu_ops.h"
#include "test_util.h"

namespace lightdesk {
namespace {

std::vector<float> random_vector(std::size_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// o_t = q_t · Σ_{j<=t} exp(-s (t-j)) k_jᵀ v_j, continuing from `state`, in float64.
void lightning_reference(const std::vector<float>& qkv, std::int64_t rows, int heads, int d,
                         const std::vector<float>& slopes, std::vector<double>& state, std::vector<double>& out) {
  out.assign(static_cast<std::size_t>(rows * heads * d), 0.0);
  for (int h = 0; h < heads; ++h) {
    double* S = state.data() + h * d * d;
    const double decay = std::exp(-static_cast<double>(slopes[h]));
    for (std::int64_t t = 0; t < rows; ++t) {
      const float* q = qkv.data() + (t * heads + h) * 3 * d;
      const float* k = q + d;
      const float* v = q + 2 * d;
      for (int i = 0; i < d; ++i)
        for (int e = 0; e < d; ++e) S[i * d + e] = decay * S[i * d + e] + static_cast<double>(k[i]) * v[e];
      for (int e = 0; e < d; ++e) {
        double acc = 0.0;
        for (int i = 0; i < d; ++i) acc += q[i] * S[i * d + e];
        out[(t * heads + h) * d + e] = acc;
      }
    }
  }
}

TEST(CpuOps, LightningPrefillMatchesTheRecurrenceForAnyBlockSize) {
  ThreadPool pool(2);
  const int heads = 3, d = 8;
  const std::vector<float> slopes = {0.9f, 0.2f, 0.01f};
  for (std::int64_t rows : {1, 5, 16, 37}) {
    const auto qkv = random_vector(static_cast<std::size_t>(rows * heads * 3 * d), 1 + static_cast<unsigned>(rows), 0.0f, 1.0f);
    const auto initial = random_vector(static_cast<std::size_t>(heads * d * d), 99);
    std::vector<double> ref_state(initial.begin(), initial.end()), ref_out;
    lightning_reference(qkv, rows, heads, d, slopes, ref_state, ref_out);
    const std::vector<float> ref_out_f(ref_out.begin(), ref_out.end());
    const std::vector<float> ref_state_f(ref_state.begin(), ref_state.end());
    for (int block : {1, 4, 16, 256}) {
      std::vector<float> state = initial;
      std::vector<float> out(ref_out.size(), NAN);
      cpu::lightning_prefill(qkv.data(), rows, heads, d, slopes, block, state.data(), out.data(), pool);
      EXPECT_LT(test::max_rel_diff(out, ref_out_f), 1e-5) << "rows " << rows << " block " << block;
      EXPECT_LT(test::max_rel_diff(state, ref_state_f), 1e-5) << "rows " << rows << " block " << block;
    }
    if (rows == 1) {
      std::vector<float> state = initial;
      std::vector<float> out(ref_out.size(), NAN);
      cpu::lightning_decode(qkv.data(), heads, d, slopes, state.data(), out.data(), pool);
      EXPECT_LT(test::max_rel_diff(out, ref_out_f), 1e-5);
    }
  }
}

// Attention of `rows` new queries after `past` cached positions against a float64 loop.
void expect_softmax_attention_matches_double(int heads, int kv_heads, int d, std::int64_t past, std::int64_t rows) {
  ThreadPool pool(2);
  const std::int64_t total = past + rows;
  const auto q = random_vector(static_cast<std::size_t>(rows * heads * d), 1);
  const auto k = random_vector(static_cast<std::size_t>(total * kv_heads * d), 2);
  const auto v = random_vector(static_cast<std::size_t>(total * kv_heads * d), 3);
  std::vector<float> out(static_cast<std::size_t>(rows * heads * d), NAN);
  cpu::softmax_attention(q.data(), rows, past, k.data(), v.data(), heads, kv_heads, d, out.data(), pool);
  std::vector<float> ref(out.size());
  for (std::int64_t t = 0; t < rows; ++t)
    for (int h = 0; h < heads; ++h) {
      const int g = h / (heads / kv_heads);
      std::vector<double> w;
      double sum = 0.0;
      for (std::int64_t j = 0; j <= past + t; ++j) {
        double dot = 0.0;
        for (int i = 0; i < d; ++i) dot += q[(t * heads + h) * d + i] * static_cast<double>(k[(j * kv_heads + g) * d + i]);
        w.push_back(std::exp(dot / std::sqrt(static_cast<double>(d))));
        sum += w.back();
      }
      for (int i = 0; i < d; ++i) {
        double acc = 0.0;
        for (std::size_t j = 0; j < w.size(); ++j) acc += w[j] / sum * v[(j * kv_heads + g) * d + i];
        ref[(t * heads + h) * d + i] = static_cast<float>(acc);
      }
    }
  EXPECT_LT(test::max_rel_diff(out, ref), 1e-5) << heads << "/" << kv_heads << " heads, past " << past << ", rows "
                                                << rows;
}

TEST(CpuOps, SoftmaxAttentionIsCausalGqaWithScale) {
  expect_softmax_attention_matches_double(4, 2, 8, 5, 3);
  // Several 32-row blocks of queries, the last one ragged.
  expect_softmax_attention_matches_double(8, 2, 16, 70, 150);
  // One block's rows on both sides of the second 256-key tile's start: the first rows see none
  // of that tile, the last a part; and a ragged last tile.
  expect_softmax_attention_matches_double(4, 1, 32, 240, 40);
  // A long context: hundreds of key tiles through the online softmax.
  expect_softmax_attention_matches_double(2, 1, 8, 140000, 5);
}

TEST(CpuOps, PartialRopeRotatesOnlyTheFirstRotaryDims) {
  const int heads = 2, d = 8, rotary = 4;
  const float theta = 10000.0f;
  auto x = random_vector(static_cast<std::size_t>(heads * d), 5);
  const auto original = x;
  const std::int64_t position = 7;
  cpu::apply_rope(x.data(), 1, heads, d, rotary, theta, position);
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < rotary / 2; ++i) {
      const double freq = 1.0 / std::pow(static_cast<double>(theta), 2.0 * i / rotary);
      const double c = std::cos(position * freq), s = std::sin(position * freq);
      const double a = original[h * d + i], b = original[h * d + i + rotary / 2];
      EXPECT_NEAR(x[h * d + i], a * c - b * s, 1e-5);
      EXPECT_NEAR(x[h * d + i + rotary / 2], b * c + a * s, 1e-5);
    }
    for (int i = rotary; i < d; ++i) EXPECT_EQ(x[h * d + i], original[h * d + i]);
  }
}

TEST(CpuOps, RouterRenormalisesTheTopKAndPrefersTheLowerIdOnTies) {
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f, 1.0f, 0.0f, 3.0f, 0.0f};
  std::vector<int> ids(4);
  std::vector<float> weights(4);
  cpu::route_top_k(logits.data(), 2, 4, 2, ids.data(), weights.data());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 2);
  EXPECT_FLOAT_EQ(weights[0], 0.5f);
  EXPECT_EQ(ids[2], 2);
  EXPECT_EQ(ids[3], 0);
  EXPECT_NEAR(weights[2], 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
}

}  // namespace
}  // namespace lightdesk
