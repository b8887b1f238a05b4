// The bundled demo model (resources/models/lightdesk-demo) against the logits its training code
// computes for it: tools/train/model.py, a third implementation of the architecture written from
// the model notes, in float32 (tests/data/demo/reference_logits.safetensors, written by
// tools/train/make_logits_reference.py). The prompt is 360 tokens: two lightning blocks.
#include <gtest/gtest.h>

#include "test_util.h"

namespace lightdesk {
namespace {

// Observed: 1.9e-5 with logits up to 34 (float32 summation order; 6e-7 relative). A real
// mistake (a slope, a norm, a routing choice) moves logits by 1e-2 and more.
constexpr double kLogitTolerance = 2e-4;

TEST(DemoModel, EngineLogitsEqualTheTrainingCode) {
  const auto reference = read_safetensors(test::data_dir() / "demo" / "reference_logits.safetensors");
  const auto ids = test::ids_of(reference.at("input_ids"));
  const auto rows = test::ids_of(reference.at("rows"));
  const auto& expected = reference.at("logits").f32;

  auto model = Model::open(std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo",
                           ModelOptions{BackendKind::Cpu, 2, false});
  const std::size_t V = static_cast<std::size_t>(model->info().vocab_size);
  ASSERT_EQ(expected.size(), rows.size() * V);
  auto session = model->create_session();
  FeedOptions options;
  options.all_logits = true;
  session->feed(ids, options);
  const auto logits = session->logits();
  ASSERT_EQ(logits.size(), ids.size() * V);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const auto row = static_cast<std::size_t>(rows[r]);
    EXPECT_LT(test::max_abs_diff(logits.subspan(row * V, V), std::span(expected).subspan(r * V, V)), kLogitTolerance)
        << "position " << row;
  }
}

}  // namespace
}  // namespace lightdesk
