// The memory planner on the released MiniMax configs (tests/data/real: config.json and
// model.safetensors.index.json, no weights; tools/make_minimax_index.py writes them). Expected
// outcomes are worked out by hand below from the model's widths:
//   hidden H 6144, 80 layers (70 lightning, 10 softmax), 64 heads of 128, 8 K/V heads,
//   32 experts of width 9216, top 2, vocabulary 200064.
// Sizes: 1 GiB = 1,073,741,824 B; a "80GB" GPU is 80 GiB, a "141GB" one 141 GiB.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "lightdesk/engine.h"
#include "lightdesk/expert_patterns.h"
#include "test_util.h"

namespace lightdesk {
namespace {

const std::filesystem::path kReal = std::filesystem::path(LIGHTDESK_TEST_DATA) / "real";
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr std::int64_t k32K = 32768, k256K = 262144, k1M = 1048576;

// Inspected once per test program: each reads an index of 8243 names.
const ModelInfo& inspect_real(const std::string& name) {
  static std::map<std::string, ModelInfo> inspected;
  auto it = inspected.find(name);
  if (it == inspected.end()) {
    ModelOptions options;
    options.backend = BackendKind::Cpu;
    it = inspected.emplace(name, Model::inspect(kReal / name, options)).first;
  }
  return it->second;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

#define EXPECT_ERROR_CONTAINING(statement, text)                     \
  do {                                                                \
    const std::string message = error_of([&] { statement; });         \
    EXPECT_NE(message.find(text), std::string::npos) << message;       \
  } while (false)

EngineCapabilities everything() { return {true, true, true, true, true}; }

PlanRequest request(const std::string& gpus, std::int64_t context, EngineCapabilities can = everything()) {
  PlanRequest r;
  r.devices = parse_gpu_list(gpus);
  r.context_tokens = context;
  r.capabilities = can;
  return r;
}

std::string chosen(const PlanReport& report) {
  return report.chosen ? report.plans[*report.chosen].summary() : "nothing";
}

TEST(RealConfigs, InspectFromTheIndexAlone) {
  // Parameters: experts 80 x 32 x 3 x 9216 x 6144 = 434,865,438,720; attention 70 lightning x
  // (24576 + 8192 + 8192) x 6144 + 10 softmax x (8192 + 1024 + 1024 + 8192) x 6144
  // = 17,616,076,800 + 1,132,462,080; embedding and LM head 2 x 200064 x 6144 = 2,458,386,432;
  // routers 80 x 32 x 6144 = 15,728,640; norms 80 x 2 x 6144 + 6144 + 70 x 8192 = 1,562,624.
  constexpr std::uint64_t kParameters = 456'089'655'296;
  constexpr std::uint64_t kRouters = 15'728'640;
  for (const char* name : {"MiniMax-Text-01", "MiniMax-M1"}) {
    SCOPED_TRACE(name);
    const ModelInfo info = inspect_real(name);
    EXPECT_FALSE(info.weights_present);
    EXPECT_TRUE(info.fingerprint.empty());
    EXPECT_EQ(info.num_layers, 80);
    EXPECT_EQ(info.num_softmax_layers(), 10);
    EXPECT_EQ(info.parameter_count, kParameters);
    // The index's total 912,210,767,872 = all in bf16 + the routers' 2 extra bytes each (F32).
    EXPECT_EQ(info.bytes_per_dtype.at("F32"), kRouters * 4);
    EXPECT_EQ(info.bytes_per_dtype.at("BF16"), (kParameters - kRouters) * 2);
    EXPECT_EQ(info.bytes_per_dtype.at("BF16") + info.bytes_per_dtype.at("F32"), 912'210'767'872u);
    EXPECT_EQ(info.other_weight_bytes, 0u);
    // 10 softmax layers x K and V x 8 heads x 128 (float32 on the CPU backend).
    EXPECT_EQ(info.kv_bytes_per_token, 10u * 2 * 8 * 128 * 4);
  }
  // VL-01: the same language model, plus CLIP ViT-L/14-336 (patch 1024x3x14x14 = 602,112, class
  // 1024, positions 577 x 1024 = 590,848, pre-norm 2048, 24 layers x 12,596,224), projector
  // (6144 x 1024 + 6144 + 6144 x 6144 + 6144 = 44,052,480) and newline 6144: 347,564,032 in bf16.
  const ModelInfo vl = inspect_real("MiniMax-VL-01");
  EXPECT_EQ(vl.model_type, "minimax_vl_01");
  EXPECT_EQ(vl.parameter_count, kParameters);
  EXPECT_EQ(vl.max_context, 8192);
  EXPECT_EQ(vl.other_weight_bytes, 347'564'032u * 2);
}

// A copy of Text-01's config and index with the index's names edited.
std::filesystem::path edited_index(const test::ScratchDir& scratch, const std::string& remove, const std::string& add) {
  const std::filesystem::path& dir = scratch.path();
  std::filesystem::copy_file(kReal / "MiniMax-Text-01" / "config.json", dir / "config.json");
  std::ifstream in(kReal / "MiniMax-Text-01" / "model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(in);
  if (!remove.empty()) index["weight_map"].erase(remove);
  if (!add.empty()) index["weight_map"][add] = "model-00001-of-00413.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  return dir;
}

TEST(RealConfigs, AnIndexThatDoesNotMatchTheConfigIsRefusedByName) {
  ModelOptions cpu;
  cpu.backend = BackendKind::Cpu;
  const std::string missing = "model.layers.79.block_sparse_moe.experts.31.w2.weight";
  const test::ScratchDir a, b;
  EXPECT_ERROR_CONTAINING(Model::inspect(edited_index(a, missing, ""), cpu), "missing tensor \"" + missing);
  const std::string extra = "model.layers.80.input_layernorm.weight";
  EXPECT_ERROR_CONTAINING(Model::inspect(edited_index(b, "", extra), cpu), "unexpected tensor \"" + extra);
}

TEST(TensorParallelLayout, SplitsHeadsExpertsAndVocabulary) {
  const ModelInfo m = inspect_real("MiniMax-Text-01");
  const auto tp8 = tensor_parallel_layout(m, 8, MoeParallel::Expert);
  ASSERT_EQ(tp8.size(), 8u);
  EXPECT_EQ(tp8[5].first_head, 40);
  EXPECT_EQ(tp8[5].heads, 8);
  EXPECT_EQ(tp8[5].first_kv_head, 5);
  EXPECT_EQ(tp8[5].kv_heads, 1);
  EXPECT_EQ(tp8[5].first_expert, 20);
  EXPECT_EQ(tp8[5].experts, 4);
  EXPECT_EQ(tp8[5].expert_width, 9216);
  EXPECT_EQ(tp8[5].first_vocab_row, 5 * 25008);  // 200064 / 8
  EXPECT_EQ(tp8[5].vocab_rows, 25008);
  // 16 ranks over 8 K/V heads: each head replicated on 2 consecutive ranks.
  const auto tp16 = tensor_parallel_layout(m, 16, MoeParallel::Tensor);
  EXPECT_EQ(tp16[3].first_kv_head, 1);
  EXPECT_EQ(tp16[3].kv_heads, 1);
  EXPECT_EQ(tp16[3].experts, 32);
  EXPECT_EQ(tp16[3].first_expert_column, 3 * 576);  // 9216 / 16
  EXPECT_EQ(tp16[3].expert_width, 576);
  EXPECT_ERROR_CONTAINING(tensor_parallel_layout(m, 3, MoeParallel::Expert), "the 64 query heads do not divide by 3");

  // Uneven experts (8 on 3 ranks: 3/3/2) and vocabulary rows (10 on 3: 4/4/2).
  ModelShape small;
  small.num_heads = 6;
  small.num_kv_heads = 3;
  small.num_experts = 8;
  small.expert_width = 48;
  small.vocab_size = 10;
  const auto tp3 = tensor_parallel_layout(small, 3, MoeParallel::Expert);
  EXPECT_EQ(tp3[0].experts, 3);
  EXPECT_EQ(tp3[1].first_expert, 3);
  EXPECT_EQ(tp3[2].first_expert, 6);
  EXPECT_EQ(tp3[2].experts, 2);
  EXPECT_EQ(tp3[2].first_vocab_row, 8);
  EXPECT_EQ(tp3[2].vocab_rows, 2);
  EXPECT_ERROR_CONTAINING(tensor_parallel_layout(small, 2, MoeParallel::Expert), "the 3 K/V heads neither divide by 2 nor divide it");
  small.expert_width = 50;
  EXPECT_ERROR_CONTAINING(tensor_parallel_layout(small, 3, MoeParallel::Tensor), "the expert width 50 does not divide by 3");
}

TEST(MemoryPlan, PerRankBytesOfTextOneAtTensorParallelEight) {
  const PlanReport report = plan_memory(inspect_real("MiniMax-Text-01"), request("8x141GB", k32K));
  const MemoryPlan& bf16 = report.plans.at(0);
  ASSERT_EQ(bf16.candidate.experts, ExpertFormat::Bf16);
  ASSERT_EQ(bf16.tensor_parallel, 8);
  const RankMemory& r = bf16.ranks.at(7);
  // Embedding and LM-head rows 25008 x 6144 x 2 B x 2 = 614,596,608; final norm 6144 x 4 = 24,576;
  // per layer two norms and the router (2 + 32) x 6144 x 4 = 835,584, x 80 = 66,846,720;
  // lightning at 8 heads (1024 channels): (3 + 1 + 1) x 1024 x 6144 x 2 = 62,914,560 + norm
  // 1024 x 4 = 62,918,656, x 70 = 4,404,305,920; softmax (1024 + 128 + 128 + 1024)
  // x 6144 x 2 = 28,311,552, x 10 = 283,115,520.
  EXPECT_EQ(r.weight_bytes, 614'596'608u + 24'576u + 66'846'720u + 4'404'305'920u + 283'115'520u);
  // 4 experts x 80 layers x 3 x 9216 x 6144 x 2 B.
  EXPECT_EQ(r.expert_bytes, std::uint64_t{4} * 80 * 339'738'624);
  EXPECT_EQ(r.lightning_state_bytes, 70u * 8 * 128 * 128 * 4);
  EXPECT_EQ(r.kv_bytes_per_token, 10u * 2 * 1 * 128 * 2);
  EXPECT_EQ(r.kv_bytes, 5120u * 32768);
  // A 8192-row chunk's activations and expert rows, the logits, 1 GiB for the runtime: a few GiB.
  EXPECT_GT(r.workspace_bytes, 2 * kGiB);
  EXPECT_LT(r.workspace_bytes, 5 * kGiB);
  EXPECT_TRUE(r.fits());
  EXPECT_TRUE(bf16.fits);
  EXPECT_FALSE(engine_capabilities().tensor_parallel);  // when it lands, the next line changes
  EXPECT_FALSE(plan_memory(inspect_real("MiniMax-Text-01"), request("8x141GB", k32K, engine_capabilities()))
                   .chosen.has_value());
}

// What fits where, every format allowed, experts on the GPUs (no host store asked). Per rank,
// in GiB: weights (bf16 experts 810.0, int8 405.2 with row scales, int4 208.8 with group scales;
// everything else 39.6), divided by the degree N (less the small replicated norms and routers);
// K/V 1.25 (32K), 10 (256K), 40 (1M) divided by N; workspace about 3.1 + 0.75 / N. So:
//   N=8 bf16: 106.2 + 3.2 + 0.2 / 1.3 / 5.0 = 109.6 / 110.7 / 114.4  -> 141 yes, 80 no
//   N=8 int8: 55.7 + 3.2 + same       = 59.0 / 60.1 / 63.9    -> 80 yes
//   N=4 int8: 111.4 + 3.2 + 0.3 / 2.5 / 10 = 114.9 / 117.1 / 124.6 -> 141 yes, 80 no
//   N=4 int4: 62.2 + 3.2 + same       = 65.8 / 68.0 / 75.5    -> 80 yes
//   N=2 int4: 124.4 + 3.4 + 0.6 / 5 / 20 = 128.4 / 132.8 / 147.8 -> 141 at 32K and 256K only
//   N=1 int4: 248.4 + ...                                      -> never
TEST(MemoryPlan, WhatFitsOneToEightGpusOf80And141GiB) {
  const ModelInfo m = inspect_real("MiniMax-Text-01");
  struct Case {
    const char* gpus;
    std::int64_t context;
    const char* expected;
  };
  const Case cases[] = {
      {"1x80GB", k32K, "nothing"},
      {"1x80GB", k1M, "nothing"},
      {"2x80GB", k32K, "nothing"},
      {"4x80GB", k32K, "int4 experts, tensor parallel over 4 GPUs"},
      {"4x80GB", k256K, "int4 experts, tensor parallel over 4 GPUs"},
      {"4x80GB", k1M, "int4 experts, tensor parallel over 4 GPUs"},
      {"8x80GB", k32K, "int8 experts, tensor parallel over 8 GPUs"},
      {"8x80GB", k256K, "int8 experts, tensor parallel over 8 GPUs"},
      {"8x80GB", k1M, "int8 experts, tensor parallel over 8 GPUs"},
      {"1x141GB", k32K, "nothing"},
      {"2x141GB", k32K, "int4 experts, tensor parallel over 2 GPUs"},
      {"2x141GB", k256K, "int4 experts, tensor parallel over 2 GPUs"},
      {"2x141GB", k1M, "nothing"},
      {"4x141GB", k32K, "int8 experts, tensor parallel over 4 GPUs"},
      {"4x141GB", k256K, "int8 experts, tensor parallel over 4 GPUs"},
      {"4x141GB", k1M, "int8 experts, tensor parallel over 4 GPUs"},
      {"8x141GB", k32K, "bf16 weights, tensor parallel over 8 GPUs"},
      {"8x141GB", k256K, "bf16 weights, tensor parallel over 8 GPUs"},
      {"8x141GB", k1M, "bf16 weights, tensor parallel over 8 GPUs"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.gpus) + " at " + std::to_string(c.context) + " tokens");
    const PlanReport report = plan_memory(m, request(c.gpus, c.context));
    EXPECT_EQ(chosen(report), c.expected);
    EXPECT_EQ(report.advice.empty(), report.chosen.has_value());
  }
  // The same for M1 (the same geometry) on the largest case.
  EXPECT_EQ(chosen(plan_memory(inspect_real("MiniMax-M1"), request("8x141GB", k1M))),
            "bf16 weights, tensor parallel over 8 GPUs");
}

TEST(MemoryPlan, WhenNothingFitsItSaysWhatWould) {
  const ModelInfo m = inspect_real("MiniMax-Text-01");
  // 2 x 141 GiB at 1M tokens: int4 needs the next valid degree, 4 (3 does not divide 64 heads);
  // int8 4 (124.6 GiB each); bf16 8. The context int4 on 2 GPUs holds: 141 GiB less the rest
  // (128.4 - 0.6 of K/V at 32K, plus 3.2 GiB of fp16 offsets = 131.0 GiB) is 10.0 GiB, at
  // 10 x 2 x 4 x 128 x 2 = 20,480 B per token per rank: about 525K tokens.
  const PlanReport report = plan_memory(m, request("2x141GB", k1M));
  ASSERT_FALSE(report.chosen);
  const std::string all = [&] {
    std::string text;
    for (const auto& line : report.advice) text += line + "\n";
    return text;
  }();
  EXPECT_NE(all.find("bf16 weights: 8 GPUs of 141 GiB"), std::string::npos) << all;
  EXPECT_NE(all.find("int8 experts: 4 GPUs of 141 GiB"), std::string::npos) << all;
  EXPECT_NE(all.find("int4 experts: 4 GPUs of 141 GiB"), std::string::npos) << all;
  const std::string prefix = "a context of at most ";
  const auto at = all.find(prefix);
  ASSERT_NE(at, std::string::npos) << all;
  const long long tokens = std::stoll(all.substr(at + prefix.size()));
  EXPECT_GT(tokens, 500'000);
  EXPECT_LT(tokens, 550'000);
  EXPECT_NE(all.find("tokens: int4 experts, tensor parallel over 2 GPUs"), std::string::npos) << all;

  // With this build's abilities: 8 x 141 GiB would hold bf16, which needs tensor parallel.
  const PlanReport today = plan_memory(m, request("8x141GB", k32K, engine_capabilities()));
  ASSERT_FALSE(today.advice.empty());
  EXPECT_EQ(today.advice.front(), "bf16 weights, tensor parallel over 8 GPUs would fit (not in this build yet)");
}

TEST(MemoryPlan, HostExpertStoreComesAfterEveryFormatOnTheGpus) {
  const ModelInfo m = inspect_real("MiniMax-Text-01");
  // One 141 GiB GPU and 1 TiB of host memory: no format fits the GPU alone (int4 248 GiB), so the
  // bf16 store: the GPU keeps the 39.6 GiB of non-experts, 0.3 GiB of states, 1.25 GiB of K/V
  // and about 3.8 GiB of workspace, 44.9 GiB in all; each expert cached in every layer costs
  // 80 x 339,738,624 B = 25.3 GiB: (141 - 44.9) / 25.3 = 3.8, so 3 per layer.
  PlanRequest one = request("1x141GB", k32K);
  one.host_memory_bytes = 1024 * kGiB;
  PlanReport report = plan_memory(m, one);
  EXPECT_EQ(chosen(report), "bf16 experts in host memory, cached on the GPUs on 1 GPU");
  ASSERT_TRUE(report.chosen);
  EXPECT_EQ(report.plans[*report.chosen].ranks[0].cached_experts_per_layer, 3);
  EXPECT_EQ(report.plans[*report.chosen].host_bytes, std::uint64_t{80} * 32 * 339'738'624);
  // 256 GiB of host memory holds only the int4 store (bf16 810, int8 405, int4 208.8 GiB); an
  // 80 GiB GPU then holds 44.9 GiB and two int4 experts per layer (2 x 80 x 87,588,864 B = 13 GiB).
  PlanRequest small = request("1x80GB", k32K);
  small.host_memory_bytes = 256 * kGiB;
  EXPECT_EQ(chosen(plan_memory(m, small)), "int4 experts in host memory, cached on the GPUs on 1 GPU");
}

TEST(MemoryPlan, PrunedExpertsOnlyWhenAsked) {
  EXPECT_EQ(plan_candidates().size(), 6u);
  for (const PlanCandidate& c : plan_candidates()) EXPECT_EQ(c.experts_kept, 0);
  const auto asked = plan_candidates(8);
  ASSERT_EQ(asked.size(), 9u);
  EXPECT_EQ(asked.back().experts_kept, 8);
  EXPECT_EQ(asked.back().experts, ExpertFormat::Int4);

  const ModelInfo m = inspect_real("MiniMax-Text-01");
  // int4, 8 of 32 experts per layer on one 141 GiB GPU at 128K: 8 x 80 x 87,588,864 B = 52.2 GiB
  // of experts + 39.6 + 0.3 + 5 GiB of K/V + 3.8 = 100.9 GiB; 4 per layer on 80 GiB: 26.1 + 48.7
  // = 74.8 GiB.
  PlanRequest h200 = request("1x141GB", 131072);
  h200.experts_kept = 8;
  EXPECT_EQ(chosen(plan_memory(m, h200)), "8 experts per layer (pruned) in int4 on 1 GPU");
  PlanRequest h100 = request("1x80GB", 131072);
  h100.experts_kept = 4;
  EXPECT_EQ(chosen(plan_memory(m, h100)), "4 experts per layer (pruned) in int4 on 1 GPU");
  h100.experts_kept = 0;
  EXPECT_EQ(chosen(plan_memory(m, h100)), "nothing");
  // This build runs pruned experts (bf16 for now: int4 waits for its format).
  EXPECT_TRUE(engine_capabilities().pruned_experts);
  PlanRequest today = request("1x141GB", 131072, engine_capabilities());
  today.experts_kept = 2;
  EXPECT_EQ(chosen(plan_memory(m, today)), "2 experts per layer (pruned) in bf16 on 1 GPU");
}

TEST(MemoryPlan, TheDemoModelRunsOnOneSmallGpuToday) {
  ModelOptions cpu;
  cpu.backend = BackendKind::Cpu;
  const ModelInfo demo = Model::inspect(std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo", cpu);
  EXPECT_TRUE(demo.weights_present);
  const PlanReport report = plan_memory(demo, request("1x24GB", demo.max_context, engine_capabilities()));
  EXPECT_EQ(chosen(report), "bf16 weights on 1 GPU");
  EXPECT_TRUE(report.advice.empty());
  // A GPU a little short of the bf16 experts: this build's int8 experts, then int4.
  PlanRequest short_gpu = request("1x24GB", 4096, engine_capabilities());
  const std::uint64_t bf16_bytes = plan_memory(demo, short_gpu).plans.at(0).ranks.at(0).total_bytes();
  short_gpu.devices[0].memory_bytes = bf16_bytes - 1;
  EXPECT_EQ(chosen(plan_memory(demo, short_gpu)), "int8 experts on 1 GPU");
  const std::uint64_t int8_bytes = plan_memory(demo, short_gpu).plans.at(1).ranks.at(0).total_bytes();
  short_gpu.devices[0].memory_bytes = int8_bytes - 1;
  EXPECT_EQ(chosen(plan_memory(demo, short_gpu)), "int4 experts on 1 GPU");

  // The CPU backend: float32 weights and K/V in host memory, no CUDA runtime reserve.
  PlanRequest host;
  host.devices = {{"host memory", 8 * kGiB}};
  host.backend = BackendKind::Cpu;
  host.context_tokens = demo.max_context;
  const PlanReport on_host = plan_memory(demo, host);
  EXPECT_EQ(chosen(on_host), "float32 weights in host memory");
  RankMemory r = on_host.plans.at(0).ranks.at(0);
  // The CPU backend's float32 copy, with the LM head apart from the embedding it is tied to.
  EXPECT_EQ(r.weight_bytes + r.expert_bytes,
            demo.weight_bytes + std::uint64_t{4} * demo.vocab_size * demo.hidden_size);
  EXPECT_EQ(r.kv_bytes_per_token, demo.kv_bytes_per_token);
  EXPECT_EQ(r.lightning_state_bytes, demo.lightning_state_bytes);
  // Room for the weights, the states and a one-row workspace but only 100 tokens of K/V: the
  // float32 experts fit up to 100 tokens, then the CPU backend's int8 experts take over.
  host.chunk_tokens = 1;
  r = plan_memory(demo, host).plans.at(0).ranks.at(0);
  host.devices[0].memory_bytes = r.total_bytes() - r.kv_bytes + 100 * r.kv_bytes_per_token;
  host.context_tokens = 100;
  EXPECT_EQ(chosen(plan_memory(demo, host)), "float32 weights in host memory");
  host.context_tokens = 101;
  EXPECT_EQ(chosen(plan_memory(demo, host)), "int8 experts in host memory");
  host.devices[0].memory_bytes = r.weight_bytes / 2;
  EXPECT_EQ(chosen(plan_memory(demo, host)), "nothing");
}

// PlanRequest::tensor_parallel: that degree only, its layout checked; the CPU backend's
// simulated ranks each get an equal share of host memory and run in this build.
TEST(MemoryPlan, PlansAtTheDegreeAsked) {
  const ModelInfo& m = inspect_real("MiniMax-Text-01");
  PlanRequest four = request("8x141GB", k32K);
  four.tensor_parallel = 4;
  for (const MemoryPlan& p : plan_memory(m, four).plans) {
    EXPECT_EQ(p.tensor_parallel, 4);
    EXPECT_EQ(p.ranks.size(), 4u);
  }
  four.tensor_parallel = 3;
  EXPECT_ERROR_CONTAINING(plan_memory(m, four), "the 64 query heads do not divide by 3");
  four.tensor_parallel = 16;
  EXPECT_ERROR_CONTAINING(plan_memory(m, four), "the plan has only 8 GPUs");

  ModelOptions cpu;
  cpu.backend = BackendKind::Cpu;
  const ModelInfo tiny = Model::inspect(test::fixture_dir("tiny-tp-6h3kv8e"), cpu);
  PlanRequest host;
  host.devices = {{"host memory", 9 * kGiB}};
  host.backend = BackendKind::Cpu;
  host.context_tokens = tiny.max_context;
  host.tensor_parallel = 3;
  host.capabilities = engine_capabilities();
  const PlanReport report = plan_memory(tiny, host);
  EXPECT_EQ(chosen(report), "float32 weights in host memory, tensor parallel over 3 ranks");
  const MemoryPlan& plan = report.plans.at(*report.chosen);
  ASSERT_EQ(plan.ranks.size(), 3u);
  for (const RankMemory& r : plan.ranks) {
    EXPECT_EQ(r.device.memory_bytes, 3 * kGiB);
    EXPECT_EQ(r.layout.heads, 2);
  }
}

TEST(GpuList, ParsesCountsAndSizes) {
  const auto four = parse_gpu_list("4x80GB");
  ASSERT_EQ(four.size(), 4u);
  EXPECT_EQ(four[3].memory_bytes, 80 * kGiB);
  const auto mixed = parse_gpu_list("2x24GB,1x141GiB");
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_EQ(mixed[2].memory_bytes, 141 * kGiB);
  EXPECT_EQ(parse_gpu_list("48GB").size(), 1u);
  for (const char* bad : {"4x", "x80GB", "0x80GB", "4x80", "4x80GB,", "four"})
    EXPECT_THROW(parse_gpu_list(bad), Error) << bad;
  // Mixed: bf16 over all 8 would need 109.6 GiB on each, more than the 80 GiB ones hold (and 4 of
  // 141 GiB hold 216 each); int8 over all 8 needs 59.0 on each.
  EXPECT_EQ(chosen(plan_memory(inspect_real("MiniMax-Text-01"), request("4x80GB,4x141GB", k32K))),
            "int8 experts, tensor parallel over 8 GPUs");
  EXPECT_EQ(chosen(plan_memory(inspect_real("MiniMax-Text-01"), request("4x80GB,4x141GB", k32K, {}))), "nothing");
}

// A pattern of `m` ranking expert e of every layer by e (the highest ids first).
ExpertPattern highest_ids_first(const ModelInfo& m) {
  ExpertPattern pattern;
  pattern.task = "highest";
  pattern.layers.resize(static_cast<std::size_t>(m.num_layers));
  for (auto& layer : pattern.layers)
    for (int e = m.num_experts - 1; e >= 0; --e) layer.push_back({e, static_cast<double>(e)});
  return pattern;
}

TEST(ApplyPlan, LoadsTheFormatAndDegreeThePlannerChose) {
  const ModelInfo& m = inspect_real("MiniMax-Text-01");
  ModelOptions base;
  base.threads = 3;
  base.expert_cache = "/cache/of/the/front/end";
  struct Case {
    const char* gpus;
    ExpertFormat format;
    int degree;
  };
  // The chosen plans of WhatFitsOneToEightGpusOf80And141GiB at 32K tokens.
  for (const Case& c : {Case{"8x141GB", ExpertFormat::Bf16, 8}, Case{"4x141GB", ExpertFormat::Int8, 4},
                        Case{"4x80GB", ExpertFormat::Int4, 4}, Case{"2x141GB", ExpertFormat::Int4, 2}}) {
    SCOPED_TRACE(c.gpus);
    const PlanReport report = plan_memory(m, request(c.gpus, k32K));
    ASSERT_TRUE(report.chosen);
    const ModelOptions options = apply_plan(report.plans[*report.chosen], base);
    EXPECT_EQ(options.backend, BackendKind::Cuda);
    EXPECT_EQ(options.expert_dtype, c.format);
    EXPECT_EQ(options.tensor_parallel, c.degree);
    EXPECT_EQ(options.moe_parallel, MoeParallel::Expert);
    EXPECT_TRUE(options.devices.empty()) << "hypothetical GPUs name no device";
    EXPECT_FALSE(options.experts.pruned());
    // The front end's own choices stay.
    EXPECT_EQ(options.threads, 3);
    EXPECT_EQ(options.expert_cache, base.expert_cache);
  }
  // A plan the user picked that is not the planner's: int4 on the eight 141 GiB GPUs.
  const PlanReport eight = plan_memory(m, request("8x141GB", k32K));
  const auto int4 = std::find_if(eight.plans.begin(), eight.plans.end(), [](const MemoryPlan& p) {
    return p.candidate.experts == ExpertFormat::Int4 && !p.candidate.host_expert_store;
  });
  ASSERT_NE(int4, eight.plans.end());
  EXPECT_EQ(apply_plan(*int4, base).expert_dtype, ExpertFormat::Int4);
  EXPECT_EQ(apply_plan(*int4, base).tensor_parallel, 8);
}

TEST(ApplyPlan, RanksGoOnTheGpusThePlanPutsThemOn) {
  // This machine's GPUs 0-3 of 80 GiB and 4-7 of 141 GiB: int8 over all eight, the largest first
  // (the plan's rank order), so ranks 0-3 on GPUs 4-7.
  PlanRequest r = request("4x80GB,4x141GB", k32K);
  for (std::size_t i = 0; i < r.devices.size(); ++i) r.devices[i].gpu = static_cast<int>(i);
  const PlanReport report = plan_memory(inspect_real("MiniMax-Text-01"), r);
  ASSERT_TRUE(report.chosen);
  const ModelOptions options = apply_plan(report.plans[*report.chosen], {});
  EXPECT_EQ(options.expert_dtype, ExpertFormat::Int8);
  EXPECT_EQ(options.devices, (std::vector<int>{4, 5, 6, 7, 0, 1, 2, 3}));
}

TEST(ApplyPlan, PrunedPlansKeepThePatternsBestOrTheConversationsExperts) {
  const ModelInfo& m = inspect_real("MiniMax-Text-01");
  // One 141 GiB GPU at 128K, 8 of 32 experts per layer: int4 (PrunedExpertsOnlyWhenAsked).
  PlanRequest h200 = request("1x141GB", 131072);
  h200.experts_kept = 8;
  const PlanReport report = plan_memory(m, h200);
  ASSERT_TRUE(report.chosen);
  const MemoryPlan& pruned = report.plans[*report.chosen];
  ASSERT_EQ(pruned.candidate.experts_kept, 8);
  // No selection and no pattern: refused by name.
  EXPECT_ERROR_CONTAINING(apply_plan(pruned, {}), "needs the task pattern");
  const ExpertPattern pattern = highest_ids_first(m);
  const ModelOptions options = apply_plan(pruned, {}, &pattern);
  EXPECT_EQ(options.expert_dtype, ExpertFormat::Int4);
  EXPECT_EQ(options.tensor_parallel, 1);
  ASSERT_EQ(options.experts.kept.size(), 80u);
  for (const auto& layer : options.experts.kept) EXPECT_EQ(layer, (std::vector<int>{24, 25, 26, 27, 28, 29, 30, 31}));
  EXPECT_EQ(options.experts.pattern, "highest");
  // A conversation's selection of the plan's size stays, whatever the pattern says.
  ModelOptions conversation;
  conversation.experts.kept.assign(80, {0, 1, 2, 3, 4, 5, 6, 7});
  conversation.experts.pattern = "the session's";
  EXPECT_EQ(apply_plan(pruned, conversation, &pattern).experts, conversation.experts);
  // One of another size is replaced by the pattern's best of the plan's size.
  conversation.experts.kept.assign(80, {0, 1, 2, 3});
  EXPECT_EQ(apply_plan(pruned, conversation, &pattern).experts.experts_kept(), 8);
  // An exact plan holds every expert, whatever base held.
  const PlanReport exact = plan_memory(m, request("4x80GB", k32K));
  ASSERT_TRUE(exact.chosen);
  EXPECT_FALSE(apply_plan(exact.plans[*exact.chosen], conversation).experts.pruned());
}

TEST(ApplyPlan, APlanThisBuildDoesNotRunIsRefused) {
  // Eight 141 GiB GPUs hold bf16 over all of them, which this build does not run yet when it has
  // no tensor parallelism; the host expert store waits for its backend (EngineCapabilities).
  EngineCapabilities no_tensor_parallel = everything();
  no_tensor_parallel.tensor_parallel = false;
  const PlanReport report = plan_memory(inspect_real("MiniMax-Text-01"), request("8x141GB", k32K, no_tensor_parallel));
  ASSERT_FALSE(report.plans.empty());
  ASSERT_FALSE(report.plans.front().runnable);
  EXPECT_ERROR_CONTAINING(apply_plan(report.plans.front(), {}), "not in this build yet");
  PlanRequest store = request("1x141GB", k32K, engine_capabilities());
  store.host_memory_bytes = 1024 * kGiB;
  for (const MemoryPlan& p : plan_memory(inspect_real("MiniMax-Text-01"), store).plans)
    if (p.candidate.host_expert_store && !p.runnable) EXPECT_ERROR_CONTAINING(apply_plan(p, {}), "not in this build yet");
}

TEST(ApplyPlan, AHostStorePlanLoadsExactModeWithThePlannedCache) {
  // HostExpertStoreComesAfterEveryFormatOnTheGpus: bf16 experts in 1 TiB of host memory, 3 per
  // layer cached on one 141 GiB GPU.
  PlanRequest one = request("1x141GB", k32K);
  one.host_memory_bytes = 1024 * kGiB;
  const PlanReport report = plan_memory(inspect_real("MiniMax-Text-01"), one);
  ASSERT_TRUE(report.chosen);
  const ModelOptions exact = apply_plan(report.plans[*report.chosen], {});
  EXPECT_TRUE(exact.host_expert_store);
  EXPECT_EQ(exact.cached_experts_per_layer, 3);
  EXPECT_EQ(exact.expert_dtype, ExpertFormat::Bf16);
  // A plan with every expert on the GPUs leaves exact mode.
  const PlanReport resident = plan_memory(inspect_real("MiniMax-Text-01"), request("4x80GB", k32K));
  ASSERT_TRUE(resident.chosen);
  const ModelOptions all = apply_plan(resident.plans[*resident.chosen], exact);
  EXPECT_FALSE(all.host_expert_store);
  EXPECT_EQ(all.cached_experts_per_layer, 0);
}

TEST(ApplyPlan, TheDemoModelOnTheCpuPlansForHostMemory) {
  ModelOptions cpu;
  cpu.backend = BackendKind::Cpu;
  const ModelInfo demo = Model::inspect(std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo", cpu);
  const PlanRequest r = local_plan_request(demo, cpu, demo.max_context);
  EXPECT_EQ(r.backend, BackendKind::Cpu);
  ASSERT_EQ(r.devices.size(), 1u);
  EXPECT_EQ(r.devices.front().gpu, -1);
  EXPECT_GT(r.devices.front().memory_bytes, 0u);
  EXPECT_EQ(r.experts_kept, 0);
  // The demo's 8 experts of a few MB hold in any machine's memory: float32 in host memory.
  const MemoryPlan plan = choose_local_plan(demo, cpu, demo.max_context);
  EXPECT_EQ(plan.summary(), "float32 weights in host memory");
  const ModelOptions options = apply_plan(plan, cpu);
  EXPECT_EQ(options.backend, BackendKind::Cpu);
  EXPECT_EQ(options.expert_dtype, ExpertFormat::Bf16);
  EXPECT_EQ(options.tensor_parallel, 1);
  // The front ends' --expert-dtype auto: the same plan from the directory alone, its options kept
  // over the caller's others.
  ModelOptions threaded = cpu;
  threaded.threads = 3;
  const LocalLoad load = plan_local_load(demo.directory, threaded);
  EXPECT_EQ(load.plan.summary(), plan.summary());
  EXPECT_EQ(load.options.backend, BackendKind::Cpu);
  EXPECT_EQ(load.options.expert_dtype, ExpertFormat::Bf16);
  EXPECT_EQ(load.options.threads, 3);
  // A pruned request plans its size; nothing fitting is an error naming the model and context.
  ModelOptions pruned = cpu;
  pruned.experts.kept.assign(static_cast<std::size_t>(demo.num_layers), {0, 1, 2, 3});
  EXPECT_EQ(local_plan_request(demo, pruned, 16).experts_kept, 4);
  EXPECT_EQ(choose_local_plan(demo, pruned, 16).summary(), "4 experts per layer (pruned) in float32 in host memory")
      << "asked for, though all experts fit; in the CPU backend's own values";
  const ModelInfo text01 = inspect_real("MiniMax-Text-01");
  EXPECT_ERROR_CONTAINING(choose_local_plan(text01, cpu, 1 << 30), "nothing this build runs fits");
  EXPECT_ERROR_CONTAINING(choose_local_plan(demo, pruned, std::int64_t{1} << 40), "no plan keeping 4 experts per layer fits");
}

}  // namespace
}  // namespace lightdesk
