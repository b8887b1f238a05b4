// Token sampling on the device against the CPU sampler's rules: greedy equal to the CPU's,
// sampled draws distributed as the probabilities the rules give (a chi-square check).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "cuda_test_util.h"
#include "src/sampler.h"

namespace lightdesk {
namespace {

using test::DeviceArray;

class CudaSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LIGHTDESK_SKIP_WITHOUT_GPU();
    token_ = std::make_unique<DeviceArray<std::int32_t>>(1);
  }

  std::int32_t sample(DeviceArray<float>& logits, const cuda::TokenSampling& sampling) {
    if (workspace_bytes_ < cuda::sampling_workspace_bytes(static_cast<std::int64_t>(logits.size()))) {
      workspace_ = std::make_unique<DeviceArray<char>>(cuda::sampling_workspace_bytes(logits.size()));
      workspace_bytes_ = workspace_->size();
    }
    cuda::check(cudaMemset(token_->get(), 0xFF, sizeof(std::int32_t)), "poison");
    cuda::sample_token(logits.get(), static_cast<std::int64_t>(logits.size()), sampling, workspace_->get(),
                       token_->get(), nullptr);
    std::int32_t token = -1;
    cuda::check(cudaMemcpy(&token, token_->get(), sizeof token, cudaMemcpyDeviceToHost), "download");
    return token;
  }

  test::Random random;
  std::unique_ptr<DeviceArray<std::int32_t>> token_;  // made once a GPU is known to be there
  std::unique_ptr<DeviceArray<char>> workspace_;
  std::size_t workspace_bytes_ = 0;
};

TEST_F(CudaSamplingTest, GreedyEqualsCpu) {
  for (const std::size_t vocab : {1u, 7u, 1000u, 200064u}) {
    SCOPED_TRACE(vocab);
    DeviceArray<float> logits(vocab);
    std::vector<float> values = random.uniform(vocab, -20.0f, 20.0f);
    // Equal maxima: the lowest id wins.
    if (vocab > 10) values[vocab / 3] = values[vocab / 2] = values[vocab - 1] = 25.0f;
    logits.set(values);
    std::mt19937_64 rng(1);
    EXPECT_EQ(sample(logits, {}), sample_token(values, SamplingParams{}, rng)) << "seed " << random.seed();
  }
}

// The probability of each id under the rules of SamplingParams, computed here from a sort.
std::map<int, double> expected_distribution(const std::vector<float>& logits, const SamplingParams& params) {
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  if (params.top_k > 0) order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(params.top_k)));
  std::vector<double> p;
  for (int id : order) p.push_back(std::exp((logits[id] - logits[order[0]]) / params.temperature));
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  double cumulative = 0.0;
  std::size_t nucleus = 0;
  while (nucleus < p.size() && cumulative < params.top_p * total) cumulative += p[nucleus++];
  std::map<int, double> distribution;
  for (std::size_t i = 0; i < nucleus; ++i) distribution[order[i]] = p[i] / cumulative;
  return distribution;
}

TEST_F(CudaSamplingTest, DrawsFollowTheDistribution) {
  const std::size_t vocab = 300;
  DeviceArray<float> logits(vocab);
  const std::vector<float> values = logits.set(random.uniform(vocab, -3.0f, 3.0f));
  for (const SamplingParams& params : {SamplingParams{0.7f, 0, 1.0f}, SamplingParams{1.0f, 20, 1.0f},
                                       SamplingParams{1.3f, 0, 0.8f}, SamplingParams{0.9f, 40, 0.5f}}) {
    SCOPED_TRACE("temperature " + std::to_string(params.temperature) + ", top_k " + std::to_string(params.top_k) +
                 ", top_p " + std::to_string(params.top_p));
    const std::map<int, double> expected = expected_distribution(values, params);
    const int draws = 20000;
    std::map<int, int> counts;
    const std::uint64_t seed = random.seed();
    for (int i = 0; i < draws; ++i) {
      const cuda::TokenSampling sampling{params.temperature, params.top_k, params.top_p, seed,
                                         static_cast<std::uint64_t>(i)};
      ++counts[sample(logits, sampling)];
    }
    for (const auto& [id, count] : counts)
      ASSERT_TRUE(expected.count(id)) << "id " << id << " is outside the kept set; seed " << seed;
    // Chi-square over the ids expected at least 5 times, the rarer ones pooled into one bin.
    double chi_square = 0.0, pooled_mean = 0.0, pooled_count = 0.0;
    int bins = 0;
    for (const auto& [id, probability] : expected) {
      const double mean = probability * draws, count = counts.count(id) ? counts[id] : 0;
      if (mean < 5.0) {
        pooled_mean += mean;
        pooled_count += count;
        continue;
      }
      chi_square += (count - mean) * (count - mean) / mean;
      ++bins;
    }
    if (pooled_mean >= 5.0) {
      chi_square += (pooled_count - pooled_mean) * (pooled_count - pooled_mean) / pooled_mean;
      ++bins;
    }
    // Far past the 1 - 1e-6 quantile of chi-square with this many degrees of freedom.
    const double dof = std::max(bins - 1, 1);
    EXPECT_LT(chi_square, dof + 10.0 * std::sqrt(2.0 * dof) + 10.0) << bins << " bins; seed " << seed;
    // The same seed and draw give the same token.
    const cuda::TokenSampling again{params.temperature, params.top_k, params.top_p, seed, 7};
    EXPECT_EQ(sample(logits, again), sample(logits, again));
  }
}

}  // namespace
}  // namespace lightdesk
