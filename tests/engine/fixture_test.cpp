// The reference checkpoints against their golden outputs (two independent implementations:
// transformers' MiniMaxForCausalLM and the original modeling_minimax_m1.py).
#include <gtest/gtest.h>

#include "test_util.h"

namespace lightdesk {
namespace {

using test::load_golden;

constexpr double kLogitTolerance = 1e-4;  // the bar; observed ~1e-6

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = Model::open(test::fixture_dir(GetParam()), ModelOptions{BackendKind::Cpu, 2, false});
    golden_ = load_golden(GetParam());
  }
  std::unique_ptr<Model> model_;
  std::map<std::string, LoadedTensor> golden_;
};

TEST_P(FixtureTest, PrefillLogitsAndEveryHiddenState) {
  auto session = model_->create_session();
  const auto ids = test::ids_of(golden_.at("prefill.input_ids"));
  std::map<int, std::vector<float>> hidden;
  FeedOptions options;
  options.all_logits = true;
  options.chunk_tokens = static_cast<std::int64_t>(ids.size());
  options.hidden_states = [&](int index, std::span<const float> h, std::int64_t) {
    hidden[index].assign(h.begin(), h.end());
  };
  session->feed(ids, options);
  ASSERT_EQ(session->logits_rows(), static_cast<std::int64_t>(ids.size()));
  EXPECT_LT(test::max_abs_diff(session->logits(), golden_.at("prefill.logits").f32), kLogitTolerance);
  const int layers = model_->info().num_layers;
  ASSERT_EQ(hidden.size(), static_cast<std::size_t>(layers + 2));
  // The golden file follows transformers' hidden_states: the embedding output, the outputs of
  // layers 0..L-2, and in place of the last layer's output the final normed state.
  for (int i = 0; i < layers; ++i) {
    const auto& ref = golden_.at("prefill.hidden." + std::to_string(i)).f32;
    EXPECT_LT(test::max_abs_diff(hidden.at(i), ref), 1e-4) << "hidden state " << i;
  }
  EXPECT_LT(test::max_abs_diff(hidden.at(layers + 1), golden_.at("prefill.hidden." + std::to_string(layers)).f32), 1e-4)
      << "final normed state";
}

TEST_P(FixtureTest, DecodeStepsThroughTheCache) {
  auto session = model_->create_session();
  session->feed(test::ids_of(golden_.at("decode.prompt_ids")));
  const auto steps = test::ids_of(golden_.at("decode.step_ids"));
  const auto& ref = golden_.at("decode.logits").f32;
  const std::size_t V = static_cast<std::size_t>(model_->info().vocab_size);
  for (std::size_t j = 0; j < steps.size(); ++j) {
    session->feed(std::span(&steps[j], 1));
    EXPECT_LT(test::max_abs_diff(session->logits(), std::span(ref).subspan(j * V, V)), kLogitTolerance) << "step " << j;
  }
}

TEST_P(FixtureTest, GreedyContinuation) {
  auto session = model_->create_session();
  session->feed(test::ids_of(golden_.at("greedy.prompt_ids")));
  const auto expected = test::ids_of(golden_.at("greedy.output_ids"));
  std::vector<TokenId> got;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    got.push_back(session->sample({}));
    session->feed(std::span(&got.back(), 1));
  }
  EXPECT_EQ(got, expected);
}

TEST_P(FixtureTest, LightningStateAfterPrefill) {
  if (!golden_.count("state.layer.0")) GTEST_SKIP() << GetParam() << " has no reference lightning states";
  auto session = model_->create_session();
  session->feed(test::ids_of(golden_.at("prefill.input_ids")));
  int checked = 0;
  session->export_state([&](const StatePart& part) {
    if (part.kind != StatePartKind::LightningState) return;
    const auto& ref = golden_.at("state.layer." + std::to_string(part.layer));
    EXPECT_EQ(part.shape, ref.shape);
    EXPECT_LT(test::max_rel_diff(part.f32(), ref.f32), 1e-5) << "layer " << part.layer;
    ++checked;
  });
  EXPECT_EQ(checked, model_->info().num_lightning_layers());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(test::fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string n = param_info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace lightdesk
