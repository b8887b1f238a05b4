// Exact mode (docs/expert-offload.md): the slot cache's bookkeeping, an expert's bytes in the
// store, and the model with a host expert store against the same model with every expert
// resident: bit-identical logits in every expert format and at every cache size, the misses
// tallied as the mass on experts not cached when each step began, states shared between modes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "src/expert_offload.h"
#include "test_util.h"

namespace lightdesk {
namespace {

TEST(ExpertSlotCacheTest, LeastRecentlyUsedOutsideTheStep) {
  ExpertSlotCache cache(2, 6, 3);
  cache.begin_step(0);
  EXPECT_FALSE(cache.resident_before_step(0, 1));
  for (int e : {1, 2, 3}) EXPECT_TRUE(cache.place(0, e).copy_in);
  EXPECT_FALSE(cache.place(0, 2).copy_in);  // a hit
  // Layer 1 is a cache of its own.
  EXPECT_EQ(cache.slot_of(1, 1), -1);
  cache.begin_step(0);
  EXPECT_TRUE(cache.resident_before_step(0, 1) && cache.resident_before_step(0, 3));
  EXPECT_FALSE(cache.resident_before_step(0, 4));
  // Expert 1 is the least recently used: 4 takes its slot.
  const int slot_of_1 = cache.slot_of(0, 1);
  const ExpertSlotCache::Placement p = cache.place(0, 4);
  EXPECT_TRUE(p.copy_in);
  EXPECT_EQ(p.slot, slot_of_1);
  EXPECT_EQ(cache.slot_of(0, 1), -1);
  // The next miss of this step evicts 3, not 4 or the 2 just used.
  cache.place(0, 2);
  const int slot_of_3 = cache.slot_of(0, 3);
  EXPECT_EQ(cache.place(0, 5).slot, slot_of_3);
  EXPECT_GE(cache.slot_of(0, 4), 0);
  EXPECT_GE(cache.slot_of(0, 2), 0);
  // The step's residency stays what it found.
  EXPECT_TRUE(cache.resident_before_step(0, 1));
  EXPECT_FALSE(cache.resident_before_step(0, 5));
  EXPECT_EQ(cache.copies(), 5);
}

TEST(ExpertSlotCacheTest, SeedingEvictsOnlyExpertsOutsideTheSeed) {
  ExpertSlotCache cache(1, 8, 3);
  for (int e : {0, 1, 2}) cache.place(0, e);
  const int seed[] = {2, 5, 6};
  const auto copies = cache.seed(0, seed);
  ASSERT_EQ(copies.size(), 2u);  // 2 stays where it is
  EXPECT_EQ(copies[0].first, 5);
  EXPECT_EQ(copies[1].first, 6);
  for (int e : seed) EXPECT_GE(cache.slot_of(0, e), 0);
  EXPECT_EQ(cache.slot_of(0, 0), -1);
  EXPECT_EQ(cache.slot_of(0, 1), -1);
}

// A quantized expert written to its bytes reads back as the same views' values.
TEST(ExpertBytesTest, QuantizedExpertRoundTrips) {
  for (ExpertDType dtype : {ExpertDType::Int8, ExpertDType::Int4}) {
    const std::int64_t H = 160, I = 40;  // int4: a partial group of the 160 columns
    test::Random random;
    const std::vector<float> gate_up = random.uniform(static_cast<std::size_t>(2 * I * H), -1, 1);
    const std::vector<float> down = random.uniform(static_cast<std::size_t>(H * I), -1, 1);
    const QuantizedMatrix qg = quantize_matrix(reinterpret_cast<const std::byte*>(gate_up.data()), DType::F32, 2 * I,
                                               H, dtype, Int4Variant::Asymmetric);
    const QuantizedMatrix qd = quantize_matrix(reinterpret_cast<const std::byte*>(down.data()), DType::F32, H, I,
                                               dtype, Int4Variant::Asymmetric);
    const ExpertBytes layout{dtype, H, I, 4};
    std::vector<std::byte> bytes(layout.bytes() + ExpertBytes::kAlignment);
    std::byte* expert = bytes.data() + (ExpertBytes::kAlignment - reinterpret_cast<std::uintptr_t>(bytes.data()) %
                                                                      ExpertBytes::kAlignment) % ExpertBytes::kAlignment;
    layout.write_quantized({qg.view(), qd.view()}, expert);
    const QuantizedExpertTensors back = layout.quantized(expert);
    std::vector<float> a(static_cast<std::size_t>(H)), b(a.size());
    for (std::int64_t r = 0; r < 2 * I; r += 7) {
      dequantize_row(qg.view(), r, a.data());
      dequantize_row(back.gate_up, r, b.data());
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << expert_dtype_name(dtype);
    }
    a.resize(static_cast<std::size_t>(I));
    b.resize(a.size());
    for (std::int64_t r = 0; r < H; r += 11) {
      dequantize_row(qd.view(), r, a.data());
      dequantize_row(back.down, r, b.data());
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << expert_dtype_name(dtype);
    }
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(back.down.packed) % ExpertBytes::kAlignment, 0u);
  }
}

std::filesystem::path demo_model() {
  return std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo";
}

std::unique_ptr<Model> open_model(const std::filesystem::path& dir, ExpertFormat format, int cached) {
  ModelOptions options{BackendKind::Cpu, 2, false};
  options.expert_dtype = format;
  options.host_expert_store = cached > 0;
  options.cached_experts_per_layer = cached;
  return Model::open(dir, options);
}

// Every row's logits of a prefill in chunks, then each decode step's.
std::vector<float> run(Model& model, std::span<const TokenId> prefill, std::span<const TokenId> decode) {
  auto session = model.create_session();
  FeedOptions options;
  options.all_logits = true;
  options.chunk_tokens = 16;
  session->feed(prefill, options);
  std::vector<float> logits(session->logits().begin(), session->logits().end());
  for (const TokenId id : decode) {
    session->feed(std::span(&id, 1));
    logits.insert(logits.end(), session->logits().begin(), session->logits().end());
  }
  return logits;
}

bool bit_identical(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The logits of exact mode are those of every expert resident, bit for bit, in each format and
// at each cache size (default: from the top-k to every expert), with and without a seed; the
// prefill's chunks route to more experts than the smaller caches hold. The slots start
// as NaN, so a slot read before it was filled, or read for another expert than it holds, would
// change them.
void expect_exact(const std::filesystem::path& dir, std::size_t prompt, std::vector<int> cache_sizes = {},
                  bool seeded = true) {
  const std::vector<TokenId> ids = test::random_ids(prompt + 6, 97, 11);
  const std::span<const TokenId> prefill(ids.data(), prompt), decode(ids.data() + prompt, 6);
  for (ExpertFormat format : {ExpertFormat::Bf16, ExpertFormat::Int8, ExpertFormat::Int4}) {
    const auto resident = open_model(dir, format, 0);
    const std::vector<float> expected = run(*resident, prefill, decode);
    const int E = resident->info().num_experts;
    if (cache_sizes.empty())
      for (int cached = resident->info().experts_per_token; cached <= E; ++cached) cache_sizes.push_back(cached);
    for (const int cached : cache_sizes) {
      const auto exact = open_model(dir, format, cached);
      EXPECT_TRUE(bit_identical(run(*exact, prefill, decode), expected))
          << dir.filename() << " " << expert_format_name(format) << ", " << cached << " cached per layer";
      EXPECT_EQ(exact->info().cached_experts_per_layer, cached);
      EXPECT_GT(exact->info().expert_store_bytes, 0u);
      if (!seeded) continue;
      // Seeded with the last experts (as a pattern's keep would): the same logits.
      std::vector<int> last(static_cast<std::size_t>(cached));
      for (int i = 0; i < cached; ++i) last[static_cast<std::size_t>(i)] = E - cached + i;
      exact->seed_expert_cache({std::vector<std::vector<int>>(static_cast<std::size_t>(resident->info().num_layers), last),
                                "last"});
      EXPECT_TRUE(bit_identical(run(*exact, prefill, decode), expected))
          << dir.filename() << " " << expert_format_name(format) << ", " << cached << " cached, seeded";
    }
  }
}

TEST(ExactModeTest, LogitsEqualEveryExpertResidentOnTheFixtures) {
  expect_exact(test::fixture_dir("tiny-a-m1-rd8"), 40);
  expect_exact(test::fixture_dir("tiny-tp-6h3kv8e"), 40);
}

// The cache sizes of the GPU measurement, and all 8 (the fixtures cover seeding).
TEST(ExactModeTest, LogitsEqualEveryExpertResidentOnTheDemoModel) {
  expect_exact(demo_model(), 40, {2, 4, 6, 8}, false);
}

// The tally of a turn is the router mass on experts not cached when each layer's step began,
// computed here from the router's logits: a cold cache misses everything, then a cache of the
// top-k holds exactly the previous token's choices.
TEST(ExactModeTest, MissesAreTheMassOnExpertsNotCachedBeforeTheStep) {
  const auto model = open_model(test::fixture_dir("tiny-tp-6h3kv8e"), ExpertFormat::Bf16, 2);
  const int E = model->info().num_experts, L = model->info().num_layers;
  auto session = model->create_session();
  std::vector<std::vector<float>> logits(static_cast<std::size_t>(L));
  FeedOptions options;
  options.router_logits = [&](int layer, std::span<const float> z, std::int64_t) {
    logits[static_cast<std::size_t>(layer)].assign(z.begin(), z.end());
  };
  const TokenId first = 5, second = 60;
  session->feed(std::span(&first, 1), options);
  const RoutingTally cold = session->routing_tally();
  EXPECT_EQ(cold.token_layers, L);
  EXPECT_NEAR(cold.lost_share(), 1.0, 1e-9);
  std::vector<std::vector<int>> chosen(static_cast<std::size_t>(L));
  for (int l = 0; l < L; ++l) {
    const std::vector<float>& z = logits[static_cast<std::size_t>(l)];
    std::vector<int> order(static_cast<std::size_t>(E));
    for (int e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
    chosen[static_cast<std::size_t>(l)] = {order[0], order[1]};
  }
  session->feed(std::span(&second, 1), options);
  double expected = 0.0;
  for (int l = 0; l < L; ++l) {
    const std::vector<float>& z = logits[static_cast<std::size_t>(l)];
    const float top = *std::max_element(z.begin(), z.end());
    double all = 0.0, missed = 0.0;
    for (int e = 0; e < E; ++e) {
      const double p = std::exp(double{z[e]} - top);
      all += p;
      if (std::ranges::count(chosen[static_cast<std::size_t>(l)], e) == 0) missed += p;
    }
    expected += missed / all;
  }
  const RoutingTally after = session->routing_tally();
  EXPECT_EQ(after.token_layers, 2 * L);
  EXPECT_GT(expected, 0.0);
  EXPECT_NEAR(after.lost_mass - cold.lost_mass, expected, 1e-9 * L);

  // Every expert seeded: nothing misses.
  const auto all = open_model(test::fixture_dir("tiny-tp-6h3kv8e"), ExpertFormat::Bf16, E);
  std::vector<int> every(static_cast<std::size_t>(E));
  for (int e = 0; e < E; ++e) every[static_cast<std::size_t>(e)] = e;
  all->seed_expert_cache({std::vector<std::vector<int>>(static_cast<std::size_t>(L), every), "all"});
  auto warm = all->create_session();
  warm->feed(test::random_ids(30, 97, 2));
  EXPECT_EQ(warm->routing_tally().lost_mass, 0.0);
}

// Exact mode's state is the all-resident state: exported from one, it continues in the other
// with the same logits (which is why ModelInfo::state_identity leaves the mode out).
TEST(ExactModeTest, StatesAreSharedWithEveryExpertResident) {
  for (ExpertFormat format : {ExpertFormat::Bf16, ExpertFormat::Int4}) {
    const auto exact = open_model(demo_model(), format, 2);
    const auto resident = open_model(demo_model(), format, 0);
    EXPECT_EQ(exact->info().state_identity(), resident->info().state_identity());
    const std::vector<TokenId> ids = test::random_ids(50, 8192, 4);
    auto a = exact->create_session();
    a->feed(std::span(ids).first(40));
    std::vector<std::vector<float>> data;
    std::vector<StatePart> parts;
    a->export_state([&](const StatePart& p) {
      parts.push_back(p);
      data.emplace_back(p.f32().begin(), p.f32().end());
    });
    auto b = resident->create_session();
    auto import = b->begin_import(40);
    for (std::size_t i = 0; i < parts.size(); ++i) {
      parts[i].data = std::as_bytes(std::span<const float>(data[i]));
      import.add(parts[i]);
    }
    import.commit(std::span(ids).first(40));
    auto c = resident->create_session();
    c->feed(std::span(ids).first(40));
    for (std::size_t i = 40; i < ids.size(); ++i) {
      b->feed(std::span(ids).subspan(i, 1));
      c->feed(std::span(ids).subspan(i, 1));
      ASSERT_TRUE(bit_identical(b->logits(), c->logits())) << expert_format_name(format) << " position " << i;
    }
  }
}

// Where no resident format fits, the planner chooses the host store for a backend that runs it,
// with a cache of what is left; for CUDA it plans the store but does not choose it.
TEST(ExactModeTest, ThePlannerChoosesTheHostStoreWhenNoFormatFits) {
  ModelOptions cpu{BackendKind::Cpu, 2, false};
  const ModelInfo info = Model::inspect(demo_model(), cpu);
  PlanRequest request;
  request.backend = BackendKind::Cpu;
  request.capabilities = engine_capabilities(BackendKind::Cpu);
  request.context_tokens = 4096;
  request.host_memory_bytes = std::uint64_t{1} << 40;
  request.devices = {{"host memory", std::uint64_t{1} << 40}};
  const PlanReport roomy = plan_memory(info, request);
  ASSERT_TRUE(roomy.chosen);
  EXPECT_FALSE(roomy.plans[*roomy.chosen].candidate.host_expert_store);
  std::uint64_t int4_resident = 0;
  for (const MemoryPlan& p : roomy.plans)
    if (p.candidate.experts == ExpertFormat::Int4 && !p.candidate.host_expert_store)
      int4_resident = p.ranks.front().total_bytes();
  ASSERT_GT(int4_resident, 0u);
  request.devices.front().memory_bytes = int4_resident - 1;
  const PlanReport tight = plan_memory(info, request);
  ASSERT_TRUE(tight.chosen);
  const MemoryPlan& chosen = tight.plans[*tight.chosen];
  EXPECT_TRUE(chosen.candidate.host_expert_store);
  EXPECT_GE(chosen.ranks.front().cached_experts_per_layer, info.experts_per_token);
  EXPECT_LT(chosen.ranks.front().cached_experts_per_layer, info.num_experts);

  request.backend = BackendKind::Cuda;
  request.capabilities = engine_capabilities(BackendKind::Cuda);
  for (const MemoryPlan& p : plan_memory(info, request).plans)
    if (p.candidate.host_expert_store) {
      EXPECT_FALSE(p.runnable);
    }
}

TEST(ExactModeTest, BadOptionsAreRefusedByName) {
  const auto dir = test::fixture_dir("tiny-tp-6h3kv8e");
  auto refused = [&](ModelOptions options, const std::string& words) {
    options.backend = BackendKind::Cpu;
    try {
      Model::open(dir, options);
      ADD_FAILURE() << "accepted: " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  ModelOptions store;
  store.host_expert_store = true;
  store.cached_experts_per_layer = 1;
  refused(store, "smaller than the 2 experts a token routes to");
  store.cached_experts_per_layer = 9;
  refused(store, "exceeds the model's 8 experts");
  ModelOptions no_store;
  no_store.cached_experts_per_layer = 4;
  refused(no_store, "needs the host expert store");
  store.cached_experts_per_layer = 4;
  ModelOptions pruned = store;
  pruned.experts = {std::vector<std::vector<int>>(4, {0, 1, 2}), "three"};
  refused(pruned, "pruned");
  ModelOptions parallel = store;
  parallel.tensor_parallel = 2;
  refused(parallel, "one rank");
  // A seed of another model's layers, and a model without a store to seed.
  const auto model = open_model(dir, ExpertFormat::Bf16, 4);
  EXPECT_THROW(model->seed_expert_cache({std::vector<std::vector<int>>(3, {0, 1}), "three layers"}), Error);
  EXPECT_THROW(model->seed_expert_cache({std::vector<std::vector<int>>(4, {0, 8}), "outside"}), Error);
  EXPECT_THROW(open_model(dir, ExpertFormat::Bf16, 0)->seed_expert_cache({}), Error);
  // Only the CPU backend runs it.
  EXPECT_TRUE(engine_capabilities(BackendKind::Cpu).host_expert_store);
  EXPECT_FALSE(engine_capabilities(BackendKind::Cuda).host_expert_store);
}

// The CUDA backend refuses exact mode by name (it has no host store yet); skips without a GPU.
TEST(ExactModeTest, TheCudaBackendRefusesItByName) {
  const auto backends = available_backends();
  if (std::ranges::find(backends, BackendKind::Cuda) == backends.end())
    GTEST_SKIP() << "no CUDA backend usable here; skipping";
  ModelOptions options;
  options.backend = BackendKind::Cuda;
  options.host_expert_store = true;
  options.cached_experts_per_layer = 2;
  try {
    Model::open(demo_model(), options);
    ADD_FAILURE() << "the CUDA backend accepted the host expert store";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda backend has no host expert store yet"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lightdesk
