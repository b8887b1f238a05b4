// The bundled demo model's training prompts (tools/train/prompt.py) against the engine's `ask`
// prompt: the same document and question must give the same token ids, or the model would be
// asked in a layout it never saw. tests/data/demo/ask_prompt.json comes from
// tools/train/make_prompt_reference.py.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::filesystem::path kDemoModel = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo";

TEST(DemoPrompt, AskRendersTheTrainingLayout) {
  std::ifstream in(std::filesystem::path(LIGHTDESK_TEST_DATA) / "demo" / "ask_prompt.json");
  const auto cases = nlohmann::json::parse(in);
  ASSERT_GE(cases.size(), 4u);
  const auto tokenizer = Tokenizer::open(kDemoModel);
  const auto format = ChatFormat::for_model(kDemoModel, *tokenizer);
  ASSERT_EQ(format.family(), ChatFamily::M1);
  for (const auto& c : cases) {
    const Document document{c.at("name").get<std::string>(), "text", c.at("document").get<std::string>(), {}, {}};
    const auto prompt = document_prompt(format, *tokenizer, {document}, c.at("question").get<std::string>());
    EXPECT_EQ(prompt.ids, c.at("prompt_ids").get<std::vector<TokenId>>()) << c.at("question");
    // The answer the model learned to write ends with the end-of-turn token ask stops on.
    // Training also asks later questions about the same document: a stored session's next ask.
    const auto& follow_up = c.at("follow_up");
    const auto next = document_prompt(format, *tokenizer, {}, follow_up.at("question").get<std::string>(), 0,
                                      {.images = 0, .continues = true});
    EXPECT_EQ(next.ids, follow_up.at("prompt_ids").get<std::vector<TokenId>>());
    auto answer = c.at("answer_ids").get<std::vector<TokenId>>();
    EXPECT_EQ(answer.back(), format.end_of_turn());
    answer.pop_back();
    EXPECT_EQ(tokenizer->decode(answer), c.at("answer").get<std::string>());
  }
}

}  // namespace
}  // namespace lightdesk
