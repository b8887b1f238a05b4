// Expert patterns and pruned experts: the router statistics against hand-computed values, the
// mask against slicing the router's rows, a pruned model's lost mass against the full model's
// router logits, and retrieval of the nearest pattern.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "lightdesk/expert_patterns.h"
#include "lightdesk/safetensors.h"
#include "src/ops.h"
#include "test_util.h"

namespace lightdesk {
namespace {

// Two tokens, three experts: TCESS (top 1) puts each token's largest logit on its expert, over
// all tokens; the mean probability averages the softmax.
TEST(RouterStatisticsTest, ScoresAsTheirDefinitions) {
  const std::vector<float> logits = {2.0f, 1.0f, -1.0f,   // top: expert 0
                                     0.5f, 3.0f, 0.0f};   // top: expert 1
  RouterStatistics s(1, 3);
  s.add(0, logits, 2);
  const std::vector<double> tcess = s.scores(0, ExpertScore::Tcess);
  EXPECT_DOUBLE_EQ(tcess[0], 2.0 / 2);
  EXPECT_DOUBLE_EQ(tcess[1], 3.0 / 2);
  EXPECT_DOUBLE_EQ(tcess[2], 0.0);
  auto softmax = [](std::vector<double> z) {
    double sum = 0;
    for (double& v : z) sum += v = std::exp(v);
    for (double& v : z) v /= sum;
    return z;
  };
  const auto p0 = softmax({2, 1, -1}), p1 = softmax({0.5, 3, 0});
  const std::vector<double> mean = s.scores(0, ExpertScore::MeanProbability);
  for (int e = 0; e < 3; ++e) EXPECT_NEAR(mean[e], (p0[e] + p1[e]) / 2, 1e-12) << e;
  EXPECT_EQ(s.tokens(0), 2);
}

// Top 2 with a confidence of 0.8: only a logit whose softmax among the two reaches 0.8 counts.
TEST(RouterStatisticsTest, ConfidenceThresholdFiltersTopK) {
  const std::vector<float> logits = {3.0f, 0.0f, -5.0f,   // q = 0.953, 0.047: expert 0 counts
                                     1.0f, 1.2f, -5.0f};  // q = 0.45, 0.55: neither
  RouterStatistics s(1, 3, {2, 0.8f});
  s.add(0, logits, 2);
  const std::vector<double> tcess = s.scores(0, ExpertScore::Tcess);
  EXPECT_DOUBLE_EQ(tcess[0], 3.0 / 2);
  EXPECT_DOUBLE_EQ(tcess[1], 0.0);
  RouterStatistics off(1, 3, {2, -1.0f});
  off.add(0, logits, 2);
  EXPECT_NEAR(off.scores(0, ExpertScore::Tcess)[1], (0.0 + 1.2) / 2, 1e-7);
}

// A per-token constant added to the logits changes no routing: it changes TCESS, not the mean
// probability (why the latter suits softmax routers).
TEST(RouterStatisticsTest, MeanProbabilityIsShiftInvariantTcessIsNot) {
  const std::vector<float> logits = {2.0f, 1.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  std::vector<float> shifted = logits;
  for (int e = 0; e < 3; ++e) shifted[e] += 10.0f;
  RouterStatistics a(1, 3), b(1, 3);
  a.add(0, logits, 2);
  b.add(0, shifted, 2);
  for (int e = 0; e < 3; ++e)
    EXPECT_NEAR(a.scores(0, ExpertScore::MeanProbability)[e], b.scores(0, ExpertScore::MeanProbability)[e], 1e-6);
  EXPECT_NE(a.scores(0, ExpertScore::Tcess)[0], b.scores(0, ExpertScore::Tcess)[0]);
}

TEST(ExpertPatternTest, KeepsTheBestPerLayerAndCoversTheirMass) {
  RouterStatistics s(2, 4);
  s.add(0, std::vector<float>{0.0f, 3.0f, 1.0f, 2.0f}, 1);
  s.add(1, std::vector<float>{4.0f, 0.0f, 1.0f, 0.5f}, 1);
  const ExpertPattern p = make_expert_pattern(s, ExpertScore::MeanProbability, "t", "fp");
  EXPECT_EQ(p.layers[0][0].expert, 1);
  const ExpertSelection two = p.keep(2);
  EXPECT_EQ(two.kept, (std::vector<std::vector<int>>{{1, 3}, {0, 2}}));
  EXPECT_EQ(two.pattern, "t");
  double expected = 0;
  for (int l = 0; l < 2; ++l)
    for (int e : two.kept[static_cast<std::size_t>(l)]) expected += s.scores(l, ExpertScore::MeanProbability)[e];
  EXPECT_NEAR(covered_mass(s, two), expected / 2, 1e-12);
  EXPECT_NEAR(covered_mass(s, {}), 1.0, 1e-12);
  EXPECT_THROW(p.keep(5), Error);
}

TEST(ExpertPatternTest, NearestPatternByFirstLayerL2) {
  auto pattern_of = [](std::vector<float> logits, const std::string& task) {
    RouterStatistics s(1, 3);
    s.add(0, logits, 1);
    return make_expert_pattern(s, ExpertScore::MeanProbability, task, "fp");
  };
  const std::vector<ExpertPattern> patterns = {pattern_of({3, 0, 0}, "a"), pattern_of({0, 3, 0}, "b"),
                                               pattern_of({0, 0, 3}, "c")};
  EXPECT_EQ(nearest_pattern(std::vector<float>{0.2f, 2.5f, 0.1f}, 1, patterns), 1u);
  EXPECT_EQ(nearest_pattern(std::vector<float>{0, 0, 2, 0, 0, 4}, 2, patterns), 2u);
  EXPECT_FALSE(nearest_pattern(std::vector<float>{}, 0, patterns));
}

// Masking experts to -inf before the softmax is slicing the router's rows (and the experts).
TEST(PrunedMoeTest, MaskEqualsSlicedRouter) {
  const std::int64_t H = 24, I = 16, rows = 9;
  const int E = 6, k = 2;
  const std::vector<int> kept = {0, 2, 3, 5};
  test::Random rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  auto uniform = [&](std::int64_t n, float scale) { return rng.uniform(static_cast<std::size_t>(n), -scale, scale); };
  std::vector<float> x = uniform(rows * H, 1), router = uniform(E * H, 0.5f);
  std::vector<std::vector<float>> w1, w3, w2;
  for (int e = 0; e < E; ++e) {
    w1.push_back(uniform(I * H, 0.3f));
    w3.push_back(uniform(I * H, 0.3f));
    w2.push_back(uniform(H * I, 0.3f));
  }
  auto t = [](std::vector<float>& v) { return Tensor{v.data(), ElementType::F32}; };
  std::vector<float> mask(E, -INFINITY);
  for (int e : kept) mask[static_cast<std::size_t>(e)] = 0.0f;
  MoeTensors masked{t(router), {}, {}, H, I, k, t(mask)};
  for (int e = 0; e < E; ++e) {
    const bool in = std::ranges::count(kept, e) > 0;
    masked.experts.push_back(in ? ExpertTensors{t(w1[e]), t(w3[e]), t(w2[e])} : ExpertTensors{});
  }
  std::vector<float> sliced_router;
  MoeTensors sliced{{}, {}, {}, H, I, k};
  for (int e : kept) {
    sliced_router.insert(sliced_router.end(), router.begin() + e * H, router.begin() + (e + 1) * H);
    sliced.experts.push_back({t(w1[e]), t(w3[e]), t(w2[e])});
  }
  sliced.router = t(sliced_router);
  auto ops = make_cpu_ops(1);
  std::vector<float> out_masked(static_cast<std::size_t>(rows * H)), out_sliced(out_masked.size()),
      logits(static_cast<std::size_t>(rows * E));
  ops->moe(masked, t(x), rows, t(out_masked), t(logits));
  ops->moe(sliced, t(x), rows, t(out_sliced), {});
  EXPECT_LT(test::max_rel_diff(out_masked, out_sliced), 1e-6);
  // The logits come out before the mask: every expert's, as the unmasked router computes them.
  for (std::int64_t r = 0; r < rows; ++r)
    for (int e = 0; e < E; ++e) {
      double z = 0;
      for (std::int64_t h = 0; h < H; ++h) z += double{x[r * H + h]} * router[e * H + h];
      EXPECT_NEAR(logits[r * E + e], z, 1e-4);
    }
}

class PrunedModelTest : public ::testing::Test {
 protected:
  static std::unique_ptr<Model> open(ExpertSelection experts = {}) {
    ModelOptions options{BackendKind::Cpu, 2, false};
    options.experts = std::move(experts);
    return Model::open(test::fixture_dir("tiny-a-m1-rd8"), options);
  }
  std::vector<TokenId> ids_ = test::random_ids(40, 512, 3);
};

// The first layer's router logits alone equal those of a whole pass.
TEST_F(PrunedModelTest, FirstLayerRouterLogitsEqualAWholePass) {
  const auto model = open();
  std::vector<float> whole;
  FeedOptions o;
  o.chunk_tokens = 16;
  o.router_logits = [&](int layer, std::span<const float> logits, std::int64_t) {
    if (layer == 0) whole.insert(whole.end(), logits.begin(), logits.end());
  };
  model->create_session()->feed(ids_, o);
  const std::vector<float> first = model->first_layer_router_logits(ids_);
  ASSERT_EQ(first.size(), ids_.size() * 4);
  EXPECT_LT(test::max_rel_diff(first, whole), 1e-6);
}

// A model opened for the first layer's router alone computes the same logits from the embedding
// and that layer, reading nothing else (no expert, whatever the expert options say), at one rank
// and under tensor parallel, and has no sessions.
TEST_F(PrunedModelTest, FirstLayerRouterModelReadsOnlyThatLayer) {
  const std::vector<float> whole = open()->first_layer_router_logits(ids_);
  // What it needs, from the checkpoint's own names: the embedding and layer 0's tensors but
  // its experts (the fixture is float32, so the bytes read are the bytes held).
  const Checkpoint checkpoint(test::fixture_dir("tiny-a-m1-rd8"));
  std::uint64_t needed = 0;
  for (const auto& [name, tensor] : checkpoint.tensors())
    if (name == "model.embed_tokens.weight" ||
        (name.starts_with("model.layers.0.") && name.find(".experts.") == std::string::npos))
      needed += tensor->bytes;
  for (const int ranks : {1, 2}) {
    SCOPED_TRACE("tensor parallel " + std::to_string(ranks));
    ModelOptions options{BackendKind::Cpu, 2, false};
    options.purpose = ModelPurpose::FirstLayerRouter;
    options.tensor_parallel = ranks;
    options.expert_dtype = ExpertFormat::Int8;  // ignored: no expert is loaded
    options.experts = {std::vector<std::vector<int>>(4, {0, 1}), "ignored"};
    std::uint64_t read = 0, total = 0;
    const auto router = Model::open(test::fixture_dir("tiny-a-m1-rd8"), options, [&](std::uint64_t done, std::uint64_t all) {
      read = done;
      total = all;
      return true;
    });
    EXPECT_LT(test::max_rel_diff(router->first_layer_router_logits(ids_), whole), 1e-5);
    if (ranks == 1) {
      EXPECT_EQ(read, needed);
      EXPECT_EQ(total, needed);
      // Held: what it read, and the lightning layer's decay rate per head.
      EXPECT_EQ(router->info().weight_bytes, needed + sizeof(float) * router->info().num_heads);
    } else {
      // The ranks read their parts of the split tensors, and each its copy of the norms and router.
      EXPECT_GE(read, needed);
      EXPECT_LT(read, needed + needed / 10);
    }
    EXPECT_EQ(router->info().purpose, ModelPurpose::FirstLayerRouter);
    EXPECT_EQ(router->info().expert_format, ExpertFormat::Bf16);
    EXPECT_THROW(router->create_session(), Error);
  }
}

// Keeping every expert is the full model; keeping fewer changes the logits, and the first layer's
// lost mass is the full model's layer-0 softmax mass on the experts left out.
TEST_F(PrunedModelTest, LostMassIsTheMassOnExpertsNotKept) {
  const auto full = open();
  auto full_session = full->create_session();
  FeedOptions o;
  std::vector<float> layer0;
  o.router_logits = [&](int layer, std::span<const float> logits, std::int64_t) {
    if (layer == 0) layer0.insert(layer0.end(), logits.begin(), logits.end());
  };
  full_session->feed(ids_, o);
  const std::vector<float> full_logits(full_session->logits().begin(), full_session->logits().end());

  const auto all_kept = open({std::vector<std::vector<int>>(4, {0, 1, 2, 3}), "all"});
  auto s = all_kept->create_session();
  s->feed(ids_);
  EXPECT_LT(test::max_rel_diff(s->logits(), full_logits), 1e-6);
  EXPECT_NEAR(s->routing_tally().lost_share(), 0.0, 1e-12);

  // Expert 3 dropped in every layer: the tally is the softmax mass on it, computed here from the
  // logits the pruned model reports (layer 0's are the full model's: its router runs first).
  ExpertSelection drop{std::vector<std::vector<int>>(4, {0, 1, 2}), "drop 3"};
  const auto pruned = open(drop);
  auto p = pruned->create_session();
  double expected_lost = 0;
  std::vector<float> pruned_layer0;
  FeedOptions po;
  po.router_logits = [&](int layer, std::span<const float> logits, std::int64_t rows) {
    if (layer == 0) pruned_layer0.insert(pruned_layer0.end(), logits.begin(), logits.end());
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* z = logits.data() + r * 4;
      double sum = 0;
      for (int e = 0; e < 4; ++e) sum += std::exp(double{z[e]});
      expected_lost += std::exp(double{z[3]}) / sum;
    }
  };
  p->feed(ids_, po);
  EXPECT_GT(test::max_rel_diff(p->logits(), full_logits), 1e-3);
  EXPECT_LT(test::max_rel_diff(pruned_layer0, layer0), 1e-6);
  const RoutingTally tally = p->routing_tally();
  EXPECT_EQ(tally.token_layers, static_cast<std::int64_t>(ids_.size()) * 4);
  EXPECT_GT(expected_lost, 0.0);
  EXPECT_NEAR(tally.lost_mass, expected_lost, 1e-6 * expected_lost);
  EXPECT_EQ(pruned->info().experts, drop);
  EXPECT_LT(pruned->info().weight_bytes, full->info().weight_bytes);
}

TEST_F(PrunedModelTest, BadSelectionsAreRefused) {
  EXPECT_THROW(open({{{0, 1}}, "one layer"}), Error);
  EXPECT_THROW(open({std::vector<std::vector<int>>(4, {0}), "below top-k"}), Error);
  EXPECT_THROW(open({std::vector<std::vector<int>>(4, {0, 0}), "twice"}), Error);
  EXPECT_THROW(open({std::vector<std::vector<int>>(4, {0, 9}), "outside"}), Error);
}

}  // namespace
}  // namespace lightdesk
