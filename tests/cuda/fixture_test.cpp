// The three tiny reference checkpoints (tests/data/README-fixtures.md) through the CUDA backend,
// in float32 mode and in the default bf16 mode, plus state export/import across backends.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "cuda_test_util.h"
#include "test_util.h"
#include "lightdesk/engine.h"
#include "src/cuda_backend.h"
#include "src/model_config.h"
#include "src/model_weights.h"
#include "lightdesk/safetensors.h"

namespace lightdesk {
namespace {

const std::filesystem::path kData = LIGHTDESK_TEST_DATA;

// float32 mode: the reference tolerance of the issue (the CPU backend reaches ~1e-6).
constexpr float kFloat32Tolerance = 1e-3f;
// bf16 mode: weights and activations carry 8 significant bits (relative rounding up to
// 2^-9 ≈ 0.2%). Each of the 4 layers adds a few such roundings to the residual stream, which
// the norms keep at unit scale, and the LM head sums 64 products of such values: the logits
// (standard deviation about 0.7, largest about 2.8 in these fixtures) are expected to move by
// a few hundredths. Measured on an H200 (2026-11-21): 0.021 to 0.029 over the three fixtures.
// On top of that, the 4-expert top-2 router of these random models has near-ties: perturbing the
// lightning output by a relative 1e-5 (far below bf16 rounding) before rounding to bf16 flips a
// routing decision and moves the logits by up to 0.098 with the old float32-core kernel; the
// tensor-core kernel meets such a flip at 0.105 on tiny-a-m1-rd8. The bound covers one such
// flip; the argmax check below still requires agreement wherever the margin exceeds it.
constexpr float kBf16Tolerance = 0.15f;

struct Case {
  std::string fixture;
  bool float32;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.fixture << (c.float32 ? " float32" : " bf16"); }

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.fixture + (info.param.float32 ? "_f32" : "_bf16");
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::vector<TokenId> ids(const LoadedTensor& t) { return {t.i64.begin(), t.i64.end()}; }

// A session generating through Session::sample, one token per step, each fed back.
struct Generation {
  Generation(const Model& model, std::span<const TokenId> prompt, std::uint64_t seed) : session(model.create_session()) {
    session->set_seed(seed);
    session->feed(prompt);
  }
  void step(const SamplingParams& params) {
    tokens.push_back(session->sample(params));
    session->feed(std::span<const TokenId>(&tokens.back(), 1));
  }
  std::unique_ptr<Session> session;
  std::vector<TokenId> tokens;
};

class CudaFixtureTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    LIGHTDESK_SKIP_WITHOUT_GPU();
    directory_ = kData / GetParam().fixture;
    golden_ = read_safetensors(directory_ / "golden.safetensors");
    ModelOptions options;
    options.backend = BackendKind::Cuda;
    options.cuda_float32 = GetParam().float32;
    model_ = Model::open(directory_, options);
  }

  float tolerance() const { return GetParam().float32 ? kFloat32Tolerance : kBf16Tolerance; }

  // Compares rows of logits with the reference: max |Δ| under `bound` (0: the tolerance), and
  // the argmax equal wherever the reference's top-two margin exceeds the tolerance.
  void expect_logits(std::span<const float> got, const std::vector<float>& ref, std::int64_t vocab,
                     const std::string& what, float bound = 0.0f) {
    if (bound == 0.0f) bound = tolerance();
    ASSERT_EQ(got.size(), ref.size()) << what;
    float max_diff = 0.0f;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const float diff = std::fabs(got[i] - ref[i]);
      max_diff = std::isfinite(got[i]) ? std::max(max_diff, diff) : INFINITY;
    }
    std::printf("[ measured ] %s %s: max |dlogit| = %.3g (bound %.3g)\n", case_name({GetParam(), 0}).c_str(),
                what.c_str(), static_cast<double>(max_diff), static_cast<double>(bound));
    EXPECT_LT(max_diff, bound) << what;
    const auto rows = static_cast<std::int64_t>(ref.size()) / vocab;
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto row = ref.begin() + r * vocab;
      std::vector<float> sorted(row, row + vocab);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] <= tolerance()) continue;
      const auto ref_best = std::max_element(row, row + vocab) - row;
      const auto got_best = std::max_element(got.begin() + r * vocab, got.begin() + (r + 1) * vocab) -
                            (got.begin() + r * vocab);
      EXPECT_EQ(got_best, ref_best) << what << ", row " << r;
    }
  }

  std::filesystem::path directory_;
  std::map<std::string, LoadedTensor> golden_;
  std::unique_ptr<Model> model_;
};

TEST_P(CudaFixtureTest, PrefillLogits) {
  ASSERT_EQ(model_->info().backend, BackendKind::Cuda);
  const auto tokens = ids(golden_.at("prefill.input_ids"));
  const std::int64_t V = model_->info().vocab_size;
  // One pass, and chunks that continue from the state of the chunk before.
  for (std::int64_t chunk : {512, 33}) {
    auto session = model_->create_session();
    FeedOptions options;
    options.all_logits = true;
    options.chunk_tokens = chunk;
    session->feed(tokens, options);
    expect_logits(session->logits(), golden_.at("prefill.logits").f32, V,
                  "prefill in chunks of " + std::to_string(chunk));
  }
}

TEST_P(CudaFixtureTest, DecodeLogits) {
  const auto prompt = ids(golden_.at("decode.prompt_ids"));
  const auto steps = ids(golden_.at("decode.step_ids"));
  const std::vector<float>& ref = golden_.at("decode.logits").f32;
  const std::int64_t V = model_->info().vocab_size;
  auto session = model_->create_session();
  session->feed(prompt);
  std::vector<float> got;
  for (TokenId id : steps) {
    session->feed(std::span<const TokenId>(&id, 1));
    got.insert(got.end(), session->logits().begin(), session->logits().end());
  }
  expect_logits(got, ref, V, "decode steps");
}

// Decode steps replayed as CUDA graphs against the same steps launched kernel by kernel, past
// the first K/V pages (the graph is captured again when the cache doubles). The graph's
// launches are planned for the doubled bound, the others for the position itself, so in bf16
// the decode kernel may split the keys differently and round its output to bf16 from other
// float32 sums: one bf16 rounding (2^-9 relative) carried through the last layers (up to 0.011
// on an H200 with an earlier kernel of 16-key stages). float32 splits by fixed runs of keys: the
// same sums.
TEST_P(CudaFixtureTest, DecodeGraphMatchesLaunches) {
  ModelOptions options;
  options.backend = BackendKind::Cuda;
  options.cuda_float32 = GetParam().float32;
  options.cuda_graphs = false;
  const auto launches = Model::open(directory_, options);
  auto graph_session = model_->create_session();
  auto launch_session = launches->create_session();
  const auto prompt = ids(golden_.at("decode.prompt_ids"));
  graph_session->feed(prompt);
  launch_session->feed(prompt);
  float max_diff = 0.0f;
  for (int step = 0; step < 150; ++step) {
    const TokenId next = launch_session->sample({});
    ASSERT_EQ(graph_session->sample({}), next) << "step " << step;
    graph_session->feed(std::span<const TokenId>(&next, 1));
    launch_session->feed(std::span<const TokenId>(&next, 1));
    const auto a = graph_session->logits(), b = launch_session->logits();
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      max_diff = std::isfinite(a[i]) ? std::max(max_diff, std::fabs(a[i] - b[i])) : INFINITY;
  }
  std::printf("[ measured ] %s graph vs launches, 150 steps: max |dlogit| = %.3g\n",
              case_name({GetParam(), 0}).c_str(), static_cast<double>(max_diff));
  EXPECT_LE(max_diff, GetParam().float32 ? 1e-6f : 0.05f);
}

// A long generation on the decode graph against the CPU backend, the CPU's greedy token fed to
// both at every step (so that a near-tie cannot make them part): 1,100 steps take the cache
// past 1,024 positions, through the graph's re-captures as its planned bound doubles and as the
// K/V pool and the page table grow. bf16: a flipped route moves a step's logits by up to about
// 0.1 (see kBf16Tolerance), and the K/V rows of such steps stay in the cache, so over 1,100 steps
// one step can carry two (measured 0.137 to 0.167 on an H200): the bound is twice the
// tolerance, and the typical step must stay at the rounding level of one step (0.02 to 0.03).
TEST_P(CudaFixtureTest, LongGenerationMatchesCpuBackend) {
  ModelOptions cpu_options;
  cpu_options.backend = BackendKind::Cpu;
  const auto cpu_model = Model::open(directory_, cpu_options);
  auto cuda_session = model_->create_session(), cpu_session = cpu_model->create_session();
  const auto prompt = ids(golden_.at("decode.prompt_ids"));
  cuda_session->feed(prompt);
  cpu_session->feed(prompt);
  const std::int64_t V = model_->info().vocab_size;
  std::vector<float> got, ref, step_diffs;
  for (int step = 0; step < 1100; ++step) {
    const auto cpu_logits = cpu_session->logits();
    const auto next = static_cast<TokenId>(std::max_element(cpu_logits.begin(), cpu_logits.end()) - cpu_logits.begin());
    cuda_session->feed(std::span<const TokenId>(&next, 1));
    cpu_session->feed(std::span<const TokenId>(&next, 1));
    got.insert(got.end(), cuda_session->logits().begin(), cuda_session->logits().end());
    ref.insert(ref.end(), cpu_session->logits().begin(), cpu_session->logits().end());
    float step_diff = 0.0f;
    for (std::int64_t i = static_cast<std::int64_t>(ref.size()) - V; i < static_cast<std::int64_t>(ref.size()); ++i)
      step_diff = std::isfinite(got[i]) ? std::max(step_diff, std::fabs(got[i] - ref[i])) : INFINITY;
    step_diffs.push_back(step_diff);
  }
  expect_logits(got, ref, V, "1100 decode steps", GetParam().float32 ? kFloat32Tolerance : 2 * kBf16Tolerance);
  std::nth_element(step_diffs.begin(), step_diffs.begin() + step_diffs.size() / 2, step_diffs.end());
  const float median = step_diffs[step_diffs.size() / 2];
  std::printf("[ measured ] %s 1100 decode steps: median step max |dlogit| = %.3g\n", case_name({GetParam(), 0}).c_str(),
              static_cast<double>(median));
  EXPECT_LT(median, tolerance() / 3) << "the typical step";
}

// Embedding overrides (an image's rows for its placeholders) replace their tokens' rows on the
// GPU as on the CPU: placeholders carrying the plain tokens' embedding rows give the plain logits,
// also in chunks and through a one-token step.
TEST_P(CudaFixtureTest, EmbeddingOverridesReplaceTheirRows) {
  const std::vector<float> embed =
      read_safetensors(directory_ / "model.safetensors").at("model.embed_tokens.weight").f32;
  const std::int64_t H = model_->info().hidden_size, V = model_->info().vocab_size;
  const std::vector<TokenId> plain = {5, 17, 42, 99, 7, 300};
  const std::vector<TokenId> with_placeholders = {5, 500, 500, 99, 500, 300};
  std::vector<const float*> overrides(plain.size(), nullptr);
  for (std::size_t i : {1u, 2u, 4u}) overrides[i] = embed.data() + plain[i] * H;
  FeedOptions all;
  all.all_logits = true;
  for (std::int64_t chunk : {6, 4, 1}) {
    auto reference = model_->create_session(), session = model_->create_session();
    FeedOptions options = all;
    options.chunk_tokens = chunk;
    reference->feed(plain, options);
    options.embedding_overrides = overrides;
    session->feed(with_placeholders, options);
    expect_logits(session->logits(), std::vector<float>(reference->logits().begin(), reference->logits().end()), V,
                  "overrides in chunks of " + std::to_string(chunk), 1e-4f);
  }
}

TEST_P(CudaFixtureTest, GreedyContinuation) {
  if (!GetParam().float32) GTEST_SKIP() << "bf16: near-ties may flip; the logit checks cover it";
  const auto prompt = ids(golden_.at("greedy.prompt_ids"));
  const auto expected = ids(golden_.at("greedy.output_ids"));
  auto session = model_->create_session();
  session->feed(prompt);
  std::vector<TokenId> out;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    out.push_back(session->sample({}));
    session->feed(std::span<const TokenId>(&out.back(), 1));
  }
  EXPECT_EQ(out, expected);
}

// Greedy generation through Session::sample (the argmax taken on the device) equals the CPU
// backend's, for two sessions of one model taking turns: each samples its own logits, not the
// last pass's.
TEST_P(CudaFixtureTest, GreedyGenerationEqualsCpuBackend) {
  if (!GetParam().float32) GTEST_SKIP() << "bf16: near-ties may flip; the logit checks cover it";
  ModelOptions cpu_options;
  cpu_options.backend = BackendKind::Cpu;
  const auto cpu_model = Model::open(directory_, cpu_options);
  const std::vector<TokenId> prompts[] = {ids(golden_.at("greedy.prompt_ids")), ids(golden_.at("prefill.input_ids"))};
  constexpr int kSteps = 64;
  Generation cuda_a(*model_, prompts[0], 0), cuda_b(*model_, prompts[1], 0);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kSteps; ++i) {
    cuda_a.step({});
    cuda_b.step({});
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ measured ] %s greedy generation: %.1f us per token (sample + one-token feed)\n",
              case_name({GetParam(), 0}).c_str(), seconds * 1e6 / (2 * kSteps));
  for (int p = 0; p < 2; ++p) {
    Generation cpu(*cpu_model, prompts[p], 0);
    for (int i = 0; i < kSteps; ++i) cpu.step({});
    EXPECT_EQ((p == 0 ? cuda_a : cuda_b).tokens, cpu.tokens) << "prompt " << p;
  }
  EXPECT_NE(cuda_a.tokens, cuda_b.tokens) << "the two prompts should lead to different continuations";
}

// Sampled generation on the device: a seed repeats its tokens (whether or not logits() copies
// the logits to the host in between), another seed gives others, and every token is among the
// top_k best of its logits.
TEST_P(CudaFixtureTest, SeededSamplingRepeats) {
  const auto prompt = ids(golden_.at("decode.prompt_ids"));
  const SamplingParams params{0.9f, 20, 0.95f};
  constexpr int kSteps = 48;
  auto generate = [&](std::uint64_t seed, bool check_kept_set) {
    Generation generation(*model_, prompt, seed);
    for (int i = 0; i < kSteps; ++i) {
      if (check_kept_set) {
        const std::vector<float> logits(generation.session->logits().begin(), generation.session->logits().end());
        generation.step(params);
        const float drawn = logits[static_cast<std::size_t>(generation.tokens.back())];
        EXPECT_LT(std::count_if(logits.begin(), logits.end(), [&](float v) { return v > drawn; }), params.top_k)
            << "step " << i << ": token " << generation.tokens.back() << " is outside the top " << params.top_k;
      } else {
        generation.step(params);
      }
    }
    return generation.tokens;
  };
  const std::vector<TokenId> first = generate(5, true);
  EXPECT_EQ(generate(5, false), first);
  EXPECT_NE(generate(6, false), first);
}

// A state exported by the CPU backend, imported into a CUDA session, then decoded on: covers
// resize_kv, write_kv and write_lightning_state. The CUDA session's own export must match the
// CPU's (read_kv, read_lightning_state).
TEST_P(CudaFixtureTest, StateMovesBetweenBackends) {
  const auto prompt = ids(golden_.at("decode.prompt_ids"));
  const auto steps = ids(golden_.at("decode.step_ids"));
  ModelOptions cpu_options;
  cpu_options.backend = BackendKind::Cpu;
  const auto cpu_model = Model::open(directory_, cpu_options);
  auto cpu_session = cpu_model->create_session();
  cpu_session->feed(prompt);

  auto cuda_session = model_->create_session();
  auto import = cuda_session->begin_import(cpu_session->position());
  std::vector<std::vector<float>> cpu_parts;
  cpu_session->export_state(
      [&](const StatePart& part) {
        import.add(part);
        cpu_parts.push_back(test::state_values(part));
      },
      16);  // chunks of 16 positions: several K/V parts per layer
  import.commit(prompt);

  // bf16 mode stores K/V in bf16: one rounding each.
  const double bound = GetParam().float32 ? 1e-6 : 1e-2;
  std::size_t index = 0;
  cuda_session->export_state(
      [&](const StatePart& part) {
        ASSERT_LT(index, cpu_parts.size());
        // K/V leave in the cache's type: bf16 unless the backend runs in float32.
        const bool float32 = GetParam().float32 || part.kind == StatePartKind::LightningState;
        EXPECT_EQ(part.dtype, float32 ? StateDType::F32 : StateDType::BF16);
        const double error = test::relative_error(test::state_values(part), cpu_parts[index++]);
        EXPECT_LT(error, part.kind == StatePartKind::LightningState ? 1e-6 : bound)
            << "part " << index << " of layer " << part.layer;
      },
      16);
  EXPECT_EQ(index, cpu_parts.size());

  std::vector<float> got;
  for (TokenId id : steps) {
    cuda_session->feed(std::span<const TokenId>(&id, 1));
    got.insert(got.end(), cuda_session->logits().begin(), cuda_session->logits().end());
  }
  expect_logits(got, golden_.at("decode.logits").f32, model_->info().vocab_size, "decode after import");
}

TEST_P(CudaFixtureTest, LightningStateMatchesReference) {
  if (!golden_.count("state.layer.0")) GTEST_SKIP() << GetParam().fixture << " has no reference states";
  auto session = model_->create_session();
  session->feed(ids(golden_.at("prefill.input_ids")));
  int checked = 0;
  session->export_state([&](const StatePart& part) {
    if (part.kind != StatePartKind::LightningState) return;
    const double error =
        test::relative_error(test::state_values(part), golden_.at("state.layer." + std::to_string(part.layer)).f32);
    std::printf("[ measured ] %s lightning state of layer %d: relative error %.3g\n",
                case_name({GetParam(), 0}).c_str(), part.layer, error);
    EXPECT_LT(error, GetParam().float32 ? 1e-5 : 2e-2) << "layer " << part.layer;
    ++checked;
  });
  EXPECT_EQ(checked, 3);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaFixtureTest,
                         ::testing::Values(Case{"tiny-a-hf", true}, Case{"tiny-a-hf", false},
                                           Case{"tiny-a-m1-rd16", true}, Case{"tiny-a-m1-rd16", false},
                                           Case{"tiny-a-m1-rd8", true}, Case{"tiny-a-m1-rd8", false}),
                         case_name);

// tiny-a-hf with MiniMax-Text-01's vocabulary (random embedding and LM head rows), in a
// directory of its own that goes when the object does: sampling then moves real amounts of data.
class LargeVocabularyModel {
 public:
  static constexpr int kVocab = 200064;
  LargeVocabularyModel() {
    const std::filesystem::path fixture = kData / "tiny-a-hf";
    std::filesystem::create_directories(directory_);
    nlohmann::json config = nlohmann::json::parse(std::ifstream(fixture / "config.json"));
    config["vocab_size"] = kVocab;
    std::ofstream(directory_ / "config.json") << config.dump(2);
    std::map<std::string, LoadedTensor> tensors = read_safetensors(fixture / "model.safetensors");
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.08f);
    for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
      LoadedTensor& t = tensors.at(name);
      t.shape[0] = kVocab;
      t.f32.resize(static_cast<std::size_t>(kVocab * t.shape[1]));
      for (float& v : t.f32) v = normal(rng);
    }
    std::vector<OutputTensor> out;
    for (const auto& [name, t] : tensors) out.push_back({name, t.shape, t.f32, {}});
    write_safetensors(directory_ / "model.safetensors", out);
  }
  ~LargeVocabularyModel() { std::filesystem::remove_all(directory_); }
  const std::filesystem::path& directory() const { return directory_; }

 private:
  const std::filesystem::path directory_ =
      std::filesystem::temp_directory_path() /
      ("lightdesk-large-vocabulary-" + std::to_string(std::random_device()()));
};

// At a vocabulary of 200064: the device's greedy id is the argmax of the logits the host sees
// (lightdesk-bench times sampling on the device).
TEST(CudaLargeVocabularyTest, DeviceSamplingAgainstTheHostPath) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  const LargeVocabularyModel large;
  ModelOptions options;
  options.backend = BackendKind::Cuda;
  const auto model = Model::open(large.directory(), options);
  const std::vector<TokenId> prompt = {22, 506, 217, 201, 137, 437, 489, 451};
  constexpr int kSteps = 64;
  {
    auto session = model->create_session();
    session->feed(prompt);
    for (int i = 0; i < kSteps; ++i) {
      const auto logits = session->logits();
      const auto host_best = static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      const TokenId next = session->sample({});
      ASSERT_EQ(next, host_best) << "step " << i;
      session->feed(std::span<const TokenId>(&next, 1));
    }
  }
}

// A generation of n tokens captures its decode graph O(log n) times, and the graph's steps,
// planned for a bound up to twice the context, match steps launched kernel by kernel (planned
// for the context itself). Random weights at tiny-a-hf's shapes, float32: the two plans split
// the keys differently, which moves the sums by rounding only.
TEST(CudaBackendTest, DecodeGraphIsCapturedLogarithmicallyOften) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  const ModelConfig config = load_model_config(kData / "tiny-a-hf", false);
  ModelOptions options;
  options.cuda_float32 = true;
  const auto graphs = make_cuda_backend(config, WeightMap::synthetic(config, 7), options, {}, {});
  options.cuda_graphs = false;
  const auto launches = make_cuda_backend(config, WeightMap::synthetic(config, 7), options, {}, {});
  const auto graph_sequence = graphs->new_sequence(), launch_sequence = launches->new_sequence();
  std::vector<float> graph_logits(static_cast<std::size_t>(config.vocab_size)), launch_logits(graph_logits.size());
  std::mt19937 random(8);
  std::uniform_int_distribution<TokenId> token(0, config.vocab_size - 1);
  constexpr std::int64_t kSteps = 2100;
  double max_error = 0.0;
  for (std::int64_t position = 0; position < kSteps; ++position) {
    const TokenId next = token(random);
    ForwardRequest request;
    request.tokens = std::span(&next, 1);
    request.first_position = position;
    graphs->forward(*graph_sequence, request);
    launches->forward(*launch_sequence, request);
    if (position % 50 != 49) continue;
    graphs->read_logits(*graph_sequence, graph_logits.data());
    launches->read_logits(*launch_sequence, launch_logits.data());
    max_error = std::max(max_error, test::relative_error(graph_logits, launch_logits));
  }
  const std::uint64_t captures = cuda_decode_graph_captures(*graph_sequence);
  std::printf("[ measured ] %lld decode steps: %llu graph captures; graph vs launches: relative error %.3g\n",
              static_cast<long long>(kSteps), static_cast<unsigned long long>(captures), max_error);
  // Pages of 128 positions: 17 of them; the bound doubles from 128 to 4096 positions.
  EXPECT_LE(captures, 6u);
  EXPECT_LT(max_error, 1e-5);
}

TEST(CudaBackendTest, ExplicitRequestWithoutGpuSaysWhy) {
  if (test::missing_gpu_reason().empty()) GTEST_SKIP() << "a GPU is present";
  ModelOptions options;
  options.backend = BackendKind::Cuda;
  try {
    Model::open(kData / "tiny-a-hf", options);
    FAIL() << "opened a CUDA model without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda backend is not available"), std::string::npos) << e.what();
  }
  const auto available = available_backends();
  EXPECT_EQ(std::count(available.begin(), available.end(), BackendKind::Cuda), 0);
}

TEST(CudaBackendTest, GpuDevicesListWhatTheBackendCanUse) {
  const auto devices = gpu_devices();
  const auto available = available_backends();
  EXPECT_EQ(devices.empty(), std::count(available.begin(), available.end(), BackendKind::Cuda) == 0);
  // Free memory is measured on the current device only.
  EXPECT_LE(std::count_if(devices.begin(), devices.end(), [](const GpuDevice& gpu) { return gpu.free_bytes.has_value(); }),
            1);
  for (const auto& gpu : devices) {
    EXPECT_FALSE(gpu.name.empty()) << "GPU " << gpu.index;
    EXPECT_GT(gpu.total_bytes, 0u) << gpu.name;
    if (gpu.free_bytes) {
      EXPECT_LE(*gpu.free_bytes, gpu.total_bytes) << gpu.name;
    }
    std::printf("[ measured ] GPU %d %s: %.1f GiB, %.1f GiB free\n", gpu.index, gpu.name.c_str(),
                static_cast<double>(gpu.total_bytes) / (1 << 30),
                static_cast<double>(gpu.free_bytes.value_or(0)) / (1 << 30));
  }
}

TEST(CudaBackendTest, OutOfMemoryIsAnErrorAndTheSessionStaysUsable) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  ModelOptions options;
  options.backend = BackendKind::Cuda;
  options.cuda_float32 = true;  // so the two ways of feeding agree to float32 rounding
  // The fixture with the largest context a config may state, so that an import of that many
  // positions passes the context check and reaches the allocation: 2^31 positions of float32
  // K/V (256 bytes each) are 512 GiB, more than any GPU holds.
  const test::ScratchDir dir;
  test::copy_fixture("tiny-a-hf", dir.path());
  auto config = nlohmann::json::parse(test::read_file(dir.path() / "config.json"));
  const int most_positions = std::numeric_limits<int>::max();
  config["max_position_embeddings"] = most_positions;
  test::write_file(dir.path() / "config.json", config.dump());
  const auto model = Model::open(dir.path(), options);
  auto session = model->create_session();
  const std::vector<TokenId> prompt = {1, 2, 3, 4, 5};
  session->feed(prompt);
  // A state import for more positions than the GPU holds: the K/V cache cannot be sized.
  try {
    session->begin_import(most_positions);
    FAIL() << "a K/V cache of 2^31 positions was allocated";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("out of memory"), std::string::npos) << message;
    EXPECT_NE(message.find("free"), std::string::npos) << message;
  }
  EXPECT_EQ(session->position(), 5);
  // The session goes on as if nothing happened.
  auto fresh = model->create_session();
  const std::vector<TokenId> more = {6, 7};
  session->feed(more);
  std::vector<TokenId> all = prompt;
  all.insert(all.end(), more.begin(), more.end());
  fresh->feed(all);
  ASSERT_EQ(session->logits().size(), fresh->logits().size());
  for (std::size_t i = 0; i < fresh->logits().size(); ++i)
    EXPECT_NEAR(session->logits()[i], fresh->logits()[i], 1e-3f);
}

// Synthetic weights are made on the device by the generator the CPU backend runs on the host:
// the same seed gives the same model on both (float32 here, so only the sums' order differs).
TEST(CudaBackendTest, SyntheticWeightsEqualTheCpuBackends) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  ModelOptions options;
  options.synthetic_weights = 21;
  options.backend = BackendKind::Cpu;
  const auto cpu = Model::open(kData / "tiny-a-m1-rd8", options);
  options.backend = BackendKind::Cuda;
  options.cuda_float32 = true;
  const auto gpu = Model::open(kData / "tiny-a-m1-rd8", options);
  const std::vector<TokenId> ids = {3, 14, 15, 92, 65, 35, 89, 79, 323, 84};
  auto cpu_session = cpu->create_session(), gpu_session = gpu->create_session();
  cpu_session->feed(ids);
  gpu_session->feed(ids);
  const auto cpu_logits = cpu_session->logits(), gpu_logits = gpu_session->logits();
  EXPECT_LT(test::relative_error(std::vector<float>(gpu_logits.begin(), gpu_logits.end()),
                               std::vector<float>(cpu_logits.begin(), cpu_logits.end())),
            1e-5);
}

// Restoring K/V into the GPU at disk speed: parts of the real MiniMax-Text-01 attention geometry
// (8 KV heads x 128, bf16, parts of 8,192 positions = 16 MiB, as the store's rows) are read from
// a file with the store's loop (ask the kernel for the next part, read this one) and imported
// with write_kv, which stages each in a pinned buffer and returns while the copy runs. The
// restore is timed against a raw cold read of the same file in 16 MiB reads; the pages are
// dropped before each (fdatasync + POSIX_FADV_DONTNEED). Target: restore <= 1.15 x raw read.
// LIGHTDESK_RESTORE_GIB sets the size (default 2 GiB, in $TMPDIR).
TEST(CudaBackendTest, RestoreOverlapsReadingTheDiskWithTheUpload) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  const char* gib_text = std::getenv("LIGHTDESK_RESTORE_GIB");
  const double gib = gib_text ? std::atof(gib_text) : 2.0;
  constexpr std::int64_t kHeads = 8, kHeadDim = 128, kPart = 8192;
  const std::int64_t part_bytes = kHeads * kPart * kHeadDim * 2;
  // One softmax layer; positions so that both sides make `gib`.
  const std::int64_t parts_per_side = std::max<std::int64_t>(1, static_cast<std::int64_t>(gib * (1 << 30)) / (2 * part_bytes));
  const std::int64_t positions = parts_per_side * kPart;

  const auto directory = std::filesystem::temp_directory_path() / ("lightdesk-restore-" + std::to_string(::getpid()));
  std::filesystem::create_directories(directory);
  nlohmann::json config_json = nlohmann::json::parse(std::ifstream(kData / "tiny-a-hf" / "config.json"));
  config_json["head_dim"] = kHeadDim;
  config_json["num_attention_heads"] = kHeads;
  config_json["num_key_value_heads"] = kHeads;
  config_json["num_hidden_layers"] = 1;
  config_json["layer_types"] = {"full_attention"};
  config_json["max_position_embeddings"] = positions;
  std::ofstream(directory / "config.json") << config_json.dump();
  const ModelConfig config = load_model_config(directory, false);
  const auto backend = make_cuda_backend(config, WeightMap::synthetic(config, 5), ModelOptions{}, {}, {});
  ASSERT_EQ(backend->kv_dtype(), StateDType::BF16);

  // The file: parts in export order (keys, values per range of positions), each part's values
  // a function of its index so that any misplaced part shows.
  const auto file = directory / "kv.bin";
  std::vector<std::uint16_t> values(static_cast<std::size_t>(part_bytes / 2));
  const auto fill = [&](std::int64_t part) {
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = static_cast<std::uint16_t>(0x3c00 + ((static_cast<std::int64_t>(i) * 7 + part * 13) & 0x3ff));
  };
  {
    std::ofstream out(file, std::ios::binary);
    for (std::int64_t part = 0; part < 2 * parts_per_side; ++part) {
      fill(part);
      out.write(reinterpret_cast<const char*>(values.data()), part_bytes);
    }
  }
  const auto drop_pages = [&] {
    const int fd = ::open(file.c_str(), O_RDONLY);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  };
  using Clock = std::chrono::steady_clock;
  std::vector<std::byte> buffer(static_cast<std::size_t>(part_bytes));

  drop_pages();
  int fd = ::open(file.c_str(), O_RDONLY);
  auto start = Clock::now();
  std::int64_t raw_bytes = 0;
  for (ssize_t n; (n = ::read(fd, buffer.data(), buffer.size())) > 0;) raw_bytes += n;
  const double raw_s = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(fd);
  ASSERT_EQ(raw_bytes, 2 * parts_per_side * part_bytes);

  const auto sequence = backend->new_sequence();
  backend->resize_kv(*sequence, positions);
  drop_pages();
  fd = ::open(file.c_str(), O_RDONLY);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  start = Clock::now();
  for (std::int64_t part = 0; part < 2 * parts_per_side; ++part) {
    if (part + 1 < 2 * parts_per_side) ::posix_fadvise(fd, (part + 1) * part_bytes, part_bytes, POSIX_FADV_WILLNEED);
    ASSERT_EQ(::pread(fd, buffer.data(), buffer.size(), part * part_bytes), part_bytes);
    backend->write_kv(*sequence, 0, part % 2 == 0 ? KvSide::Keys : KvSide::Values, part / 2 * kPart, kPart,
                      buffer.data());
  }
  std::vector<std::uint16_t> back(static_cast<std::size_t>(kHeads * kHeadDim));
  backend->read_kv(*sequence, 0, KvSide::Values, positions - 1, 1, back.data());  // waits for the uploads
  const double restore_s = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(fd);

  const double mb = static_cast<double>(raw_bytes) / 1e6;
  std::printf("[ measured ] %.2f GiB of bf16 K/V: raw cold read %.2f s (%.0f MB/s), restore into the GPU %.2f s "
              "(%.0f MB/s): restore / raw read %.2f (target <= 1.15)\n",
              static_cast<double>(raw_bytes) / (1 << 30), raw_s, mb / raw_s, restore_s, mb / restore_s,
              restore_s / raw_s);
  // Every part where it belongs: the first and last position of a few parts, both sides.
  for (std::int64_t part : {std::int64_t{0}, std::int64_t{1}, 2 * parts_per_side - 2, 2 * parts_per_side - 1}) {
    fill(part);
    for (std::int64_t t : {std::int64_t{0}, kPart - 1}) {
      backend->read_kv(*sequence, 0, part % 2 == 0 ? KvSide::Keys : KvSide::Values, part / 2 * kPart + t, 1,
                       back.data());
      for (std::int64_t g = 0; g < kHeads; ++g)
        ASSERT_EQ(std::memcmp(back.data() + g * kHeadDim, values.data() + (g * kPart + t) * kHeadDim, kHeadDim * 2), 0)
            << "part " << part << " position " << t << " head " << g;
    }
  }
  std::filesystem::remove_all(directory);
  // Far above the target, so that a loaded machine does not fail it; the figure above is the
  // one to compare with 1.15.
  EXPECT_LT(restore_s / raw_s, 2.0);
}

// Quantized experts (int8, int4) through the whole model: the CUDA backend's logits against the
// CPU backend's of the same format (the same quantized weights: both quantize the checkpoint
// alike), over the prompt and decode steps fed the CPU's greedy tokens; float32 activations to
// the float32 tolerance, bf16 to the bound of a router near-tie (as LongGenerationMatchesCpuBackend).
TEST(CudaQuantizedModelTest, LogitsMatchTheCpuBackend) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  for (const char* fixture : {"tiny-a-hf", "tiny-a-m1-rd8"})
    for (const ExpertFormat format : {ExpertFormat::Int8, ExpertFormat::Int4})
      for (const bool float32 : {true, false}) {
        SCOPED_TRACE(std::string(fixture) + ", " + expert_format_name(format) + (float32 ? ", float32" : ", bf16"));
        ModelOptions options;
        options.expert_dtype = format;
        options.backend = BackendKind::Cpu;
        const auto cpu = Model::open(kData / fixture, options);
        options.backend = BackendKind::Cuda;
        options.cuda_float32 = float32;
        const auto gpu = Model::open(kData / fixture, options);
        const auto prompt = ids(read_safetensors(kData / fixture / "golden.safetensors").at("decode.prompt_ids"));
        auto cpu_session = cpu->create_session(), gpu_session = gpu->create_session();
        cpu_session->feed(prompt);
        gpu_session->feed(prompt);
        const float bound = float32 ? kFloat32Tolerance : 2 * kBf16Tolerance;
        float max_diff = 0.0f;
        for (int step = 0; step < 24; ++step) {
          const auto cpu_logits = cpu_session->logits(), gpu_logits = gpu_session->logits();
          ASSERT_EQ(gpu_logits.size(), cpu_logits.size());
          for (std::size_t i = 0; i < cpu_logits.size(); ++i)
            max_diff = std::isfinite(gpu_logits[i]) ? std::max(max_diff, std::fabs(gpu_logits[i] - cpu_logits[i]))
                                                    : INFINITY;
          const auto next =
              static_cast<TokenId>(std::max_element(cpu_logits.begin(), cpu_logits.end()) - cpu_logits.begin());
          cpu_session->feed(std::span<const TokenId>(&next, 1));
          gpu_session->feed(std::span<const TokenId>(&next, 1));
        }
        std::printf("[ measured ] %s %s %s: max |dlogit| against the CPU backend = %.3g (bound %.3g)\n", fixture,
                    expert_format_name(format), float32 ? "f32" : "bf16", static_cast<double>(max_diff),
                    static_cast<double>(bound));
        EXPECT_LT(max_diff, bound);
      }
}

}  // namespace
}  // namespace lightdesk
