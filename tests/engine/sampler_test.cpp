#include "src/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
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

TEST(Sampler, RejectsBadParameters) {
  std::mt19937_64 rng(4);
  const std::vector<float> logits = {1.0f, 2.0f};
  EXPECT_THROW(sample_token(logits, {1.0f, 0, 0.0f}, rng), Error);
  EXPECT_THROW(sample_token(logits, {1.0f, -1, 1.0f}, rng), Error);
  EXPECT_THROW(sample_token({}, {}, rng), Error);
}

}  // namespace
}  // namespace lightdesk
