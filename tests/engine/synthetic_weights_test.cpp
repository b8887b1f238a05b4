// Synthetic weights (ModelOptions::synthetic_weights): a model from config.json alone, the same
// for the same seed and at any tensor-parallel layout, and a router whose top-2 choices spread
// over the experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "src/model_config.h"
#include "src/model_weights.h"
#include "test_util.h"

namespace lightdesk {
namespace {

ModelOptions synthetic(std::uint64_t seed) {
  ModelOptions options;
  options.backend = BackendKind::Cpu;
  options.threads = 2;
  options.synthetic_weights = seed;
  return options;
}

std::vector<float> last_logits(const Model& model, const std::vector<TokenId>& ids) {
  auto session = model.create_session();
  session->feed(ids);
  const auto logits = session->logits();
  return {logits.begin(), logits.end()};
}

TEST(SyntheticWeights, AModelFromItsConfigAlone) {
  // Only config.json is read: a directory holding nothing else opens.
  const test::ScratchDir dir;
  std::filesystem::copy_file(test::fixture_dir("tiny-a-m1-rd8") / "config.json", dir.path() / "config.json");
  const auto a = Model::open(dir.path(), synthetic(5));
  const auto again = Model::open(dir.path(), synthetic(5));
  const auto other = Model::open(dir.path(), synthetic(6));
  const auto real = Model::open(test::fixture_dir("tiny-a-m1-rd8"), ModelOptions{BackendKind::Cpu, 2, false});
  EXPECT_EQ(a->info().parameter_count, real->info().parameter_count);
  EXPECT_TRUE(a->info().bytes_per_dtype.empty());
  EXPECT_NE(a->info().fingerprint, real->info().fingerprint);
  EXPECT_NE(a->info().fingerprint, other->info().fingerprint);
  EXPECT_EQ(Model::inspect(dir.path(), synthetic(5)).fingerprint, a->info().fingerprint);

  const std::vector<TokenId> ids = {5, 17, 42, 9, 300, 7, 7, 128};
  const std::vector<float> logits = last_logits(*a, ids);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(logits, last_logits(*again, ids));  // the same seed, the same weights
  EXPECT_GT(test::max_rel_diff(logits, last_logits(*other, ids)), 0.1);
  EXPECT_GT(test::max_rel_diff(logits, last_logits(*real, ids)), 0.1);
}

// Tensor-parallel ranks make only their parts of each synthetic weight (fill_synthetic from the
// part's first element): the single-rank logits, in both MoE modes.
TEST(SyntheticWeights, RanksMakeTheirParts) {
  const test::ScratchDir dir;
  std::filesystem::copy_file(test::fixture_dir("tiny-a-m1-rd8") / "config.json", dir.path() / "config.json");
  const std::vector<TokenId> ids = {5, 17, 42, 9, 300, 7, 7, 128};
  const std::vector<float> one = last_logits(*Model::open(dir.path(), synthetic(5)), ids);
  for (const MoeParallel moe : {MoeParallel::Expert, MoeParallel::Tensor}) {
    ModelOptions options = synthetic(5);
    options.tensor_parallel = 2;
    options.moe_parallel = moe;
    EXPECT_LT(test::max_rel_diff(last_logits(*Model::open(dir.path(), options), ids), one), 1e-5)
        << moe_parallel_name(moe);
  }
}

TEST(SyntheticWeights, FillMatchesTheDeviceGeneratorsFormula) {
  // Element i = low + (high - low) * (splitmix64(seed ^ splitmix64(i)) >> 40) / 2^24; splitmix64(0)
  // is 0xe220a8397b1dcdaf, splitmix64(seed ^ that) for seed 0 is splitmix64(0xe220a8397b1dcdaf).
  auto splitmix64 = [](std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  ASSERT_EQ(splitmix64(0), 0xe220a8397b1dcdafULL);
  float values[3];
  fill_synthetic({0, -1.0f, 1.0f}, values, 3);
  for (std::uint64_t i = 0; i < 3; ++i)
    EXPECT_EQ(values[i], -1.0f + 2.0f * static_cast<float>(splitmix64(splitmix64(i)) >> 40) * 0x1p-24f);
}

// The router of the real Text-01 widths over unit-RMS inputs (what the post-attention norm feeds
// it): logits of standard deviation about 1 across the experts, and top-2 loads over 1024
// tokens of 1024 x 2 / 32 = 64 each on average, binomial spread about 8: every expert between
// 32 and 96, none empty, none taking every token.
TEST(SyntheticWeights, RouterLoadsSpreadOverTheExperts) {
  const ModelConfig config = load_model_config(test::data_dir() / "real" / "MiniMax-Text-01", false);
  const std::int64_t H = config.hidden_size, E = config.num_experts;
  const std::string key = layer_weight_prefix(3) + "router";
  const WeightMap map = WeightMap::synthetic(config, 11);
  const TensorSlice& router = map.at(key);
  ASSERT_EQ(router.view, nullptr);
  ASSERT_EQ(router.numel, E * H);
  std::vector<float> w(static_cast<std::size_t>(router.numel));
  fill_synthetic(router.synthetic, w.data(), router.numel);

  std::mt19937 random(12);
  std::normal_distribution<float> normal;
  constexpr int kTokens = 1024;
  std::vector<int> load(static_cast<std::size_t>(E));
  double sum_sq = 0.0;
  std::vector<float> x(static_cast<std::size_t>(H)), logits(static_cast<std::size_t>(E));
  for (int t = 0; t < kTokens; ++t) {
    for (float& v : x) v = normal(random);
    for (std::int64_t e = 0; e < E; ++e) {
      logits[e] = std::inner_product(x.begin(), x.end(), w.begin() + e * H, 0.0f);
      sum_sq += logits[e] * logits[e];
    }
    std::vector<int> order(static_cast<std::size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 2, order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    ++load[order[0]];
    ++load[order[1]];
  }
  const double logit_std = std::sqrt(sum_sq / static_cast<double>(kTokens * E));
  EXPECT_GT(logit_std, 0.9);
  EXPECT_LT(logit_std, 1.1);
  EXPECT_GT(*std::min_element(load.begin(), load.end()), 32);
  EXPECT_LT(*std::max_element(load.begin(), load.end()), 96);
}

}  // namespace
}  // namespace lightdesk
