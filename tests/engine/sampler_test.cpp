#include "src/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace lightdesk {
namespace {

TEST(Sampler, GreedyTakesTheLowestIdAmongEqualMaxima) {
  std::mt19937_64 rng(0);
  const std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f};
  EXPECT_EQ(sample_token(logits, {}, rng), 1);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  std::mt19937_64 rng(1);
  const std::vector<float> logits = {0.1f, 0.3f, 2.5f, 2.4f, -1.0f};
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(sample_token(logits, {1.0f, 1, 1.0f}, rng), 2);
    EXPECT_EQ(sample_token(logits, {1.0f, 0, 1e-6f}, rng), 2);
  }
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  std::mt19937_64 rng(2);
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), -1e9f};
  std::vector<int> counts(4, 0);
  const int n = 60000;
  for (int i = 0; i < n; ++i) ++counts[static_cast<std::size_t>(sample_token(logits, {1.0f, 0, 1.0f}, rng))];
  EXPECT_NEAR(counts[0] / double(n), 1.0 / 6, 0.01);
  EXPECT_NEAR(counts[1] / double(n), 2.0 / 6, 0.01);
  EXPECT_NEAR(counts[2] / double(n), 3.0 / 6, 0.01);
  EXPECT_EQ(counts[3], 0);
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  std::mt19937_64 rng(3);
  // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps ids 0 and 1 only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 20000; ++i) ++counts[static_cast<std::size_t>(sample_token(logits, {1.0f, 0, 0.7f}, rng))];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 20000.0, 0.5 / 0.8, 0.02);
}

// The sampler sorts only as much of the vocabulary as the nucleus needs. The plain definition,
// every candidate sorted best first (higher logit, then lower id), must draw the same tokens; at
// top_p 1 the whole candidate set is the nucleus, walked in id order.
TokenId sample_by_full_sort(std::span<const float> logits, const SamplingParams& params, std::mt19937_64& rng) {
  std::vector<TokenId> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](TokenId a, TokenId b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < ids.size()) ids.resize(params.top_k);
  const double max_scaled = logits[ids[0]] / double(params.temperature);
  if (params.top_p >= 1.0f) std::sort(ids.begin(), ids.end());
  std::vector<double> probs;
  double sum = 0.0;
  for (TokenId id : ids) sum += std::exp(logits[id] / double(params.temperature) - max_scaled);
  double cumulative = 0.0, nucleus_sum = 0.0;
  for (TokenId id : ids) {
    probs.push_back(std::exp(logits[id] / double(params.temperature) - max_scaled));
    nucleus_sum += probs.back();
    cumulative += probs.back() / sum;
    if (cumulative >= params.top_p) break;
  }
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * nucleus_sum;
  double acc = 0.0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    acc += probs[i];
    if (u < acc) return ids[i];
  }
  return ids[probs.size() - 1];
}

TEST(Sampler, LargeVocabularyDrawsAsAFullSortWould) {
  std::mt19937_64 logit_rng(5);
  // A peaked distribution (the nucleus within the first sorted prefix) and a flat one (it needs
  // several prefixes), with repeated logits so ties between ids count.
  for (const float spread : {12.0f, 0.5f}) {
    std::vector<float> logits(200064);
    std::normal_distribution<float> normal(0.0f, spread);
    for (float& logit : logits) logit = std::round(normal(logit_rng) * 64.0f) / 64.0f;
    for (const SamplingParams& params : {SamplingParams{0.8f, 0, 0.9f}, SamplingParams{1.0f, 0, 1.0f},
                                         SamplingParams{1.3f, 5000, 0.95f}, SamplingParams{0.7f, 40, 0.5f},
                                         SamplingParams{1.1f, 3000, 1.0f}}) {
      std::mt19937_64 rng(6), reference_rng(6);
      for (int draw = 0; draw < 6; ++draw)
        ASSERT_EQ(sample_token(logits, params, rng), sample_by_full_sort(logits, params, reference_rng))
            << "spread " << spread << ", temperature " << params.temperature << ", top_k " << params.top_k
            << ", top_p " << params.top_p << ", draw " << draw;
    }
  }
}

TEST(Sampler, RejectsBadParameters) {
  std::mt19937_64 rng(4);
  const std::vector<float> logits = {1.0f, 2.0f};
  EXPECT_THROW(sample_token(logits, {1.0f, 0, 0.0f}, rng), Error);
  EXPECT_THROW(sample_token(logits, {1.0f, -1, 1.0f}, rng), Error);
  EXPECT_THROW(sample_token({}, {}, rng), Error);
}

}  // namespace
}  // namespace lightdesk
