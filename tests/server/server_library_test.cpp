// The parts of lightdesk-server below HTTP: the answer split into reasoning, content and tool
// calls in OpenAI's shape, stop sequences, and the states kept between requests.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "answer_text.h"
#include "state_cache.h"
#include "test_util.h"

namespace lightdesk::server {
namespace {

// Feeds `text` in pieces of `step` bytes; returns the pieces joined.
AnswerPiece feed_in_pieces(AnswerText& answer, const std::string& text, std::size_t step) {
  AnswerPiece all;
  auto add = [&all](const AnswerPiece& p) {
    all.reasoning += p.reasoning;
    all.content += p.content;
  };
  for (std::size_t i = 0; i < text.size() && !answer.stopped(); i += step)
    add(answer.feed(std::string_view(text).substr(i, step)));
  add(answer.finish());
  return all;
}

TEST(AnswerText, ReturnsM1ReasoningApartAndToolCallsInOpenAIShape) {
  const std::string output =
      "<think>Weather is asked.</think>Let me check."
      "<tool_calls>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"上海\"}}\n</tool_calls>";
  for (std::size_t step : {1, 3, 1000}) {
    AnswerText answer(ChatFamily::M1, {});
    const AnswerPiece all = feed_in_pieces(answer, output, step);
    const auto message = assistant_message_json(all.reasoning, all.content, answer.tool_calls());
    EXPECT_EQ(message["reasoning_content"], "Weather is asked.") << step;
    EXPECT_EQ(message["content"], "Let me check.") << step;
    ASSERT_EQ(message["tool_calls"].size(), 1u) << step;
    const auto& call = message["tool_calls"][0];
    EXPECT_EQ(call["type"], "function");
    EXPECT_EQ(call["function"]["name"], "get_weather");
    // Arguments are JSON text, as OpenAI sends them.
    EXPECT_EQ(nlohmann::json::parse(call["function"]["arguments"].get<std::string>()),
              nlohmann::json({{"city", "上海"}}));
    EXPECT_FALSE(call.contains("index"));
    EXPECT_EQ(tool_calls_json(answer.tool_calls(), true)[0]["index"], 0);
  }
}

TEST(AnswerText, PlainAnswerHasNoReasoningOrToolCalls) {
  AnswerText answer(ChatFamily::Text01, {});
  const AnswerPiece all = feed_in_pieces(answer, "Just text.", 2);
  const auto message = assistant_message_json(all.reasoning, all.content, answer.tool_calls());
  EXPECT_EQ(message, nlohmann::json({{"role", "assistant"}, {"content", "Just text."}}));
}

TEST(AnswerText, CutsContentBeforeTheFirstStopSequenceWhateverThePieces) {
  for (std::size_t step : {1, 2, 5, 1000}) {
    AnswerText answer(std::nullopt, {"END", "ab"});
    const AnswerPiece all = feed_in_pieces(answer, "xxaEND yy ab", step);
    EXPECT_EQ(all.content, "xxa") << step;
    EXPECT_TRUE(answer.stopped());
  }
  // Not in the reasoning: stop sequences apply to the answer.
  AnswerText chat(ChatFamily::M1, {"END"});
  const AnswerPiece all = feed_in_pieces(chat, "<think>no END here</think>done END", 4);
  EXPECT_EQ(all.reasoning, "no END here");
  EXPECT_EQ(all.content, "done ");
}

TEST(StopMatcher, HoldsBackOnlyWholeCharactersAndGivesThemBackAtTheEnd) {
  StopMatcher stops({"zz"});
  // One byte may start the stop sequence, but the last byte of "é" does not go out alone.
  std::string out = stops.feed("aé");
  EXPECT_EQ(out, "a");
  out += stops.feed("b");
  out += stops.finish();
  EXPECT_EQ(out, "aéb");
  EXPECT_FALSE(stops.stopped());
}

class StateCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Model::open(test::fixture_dir("tiny-a-m1-rd8"), ModelOptions{BackendKind::Cpu, 1, false});
  }
  std::vector<TokenId> ids(int first, int count) {
    std::vector<TokenId> out(static_cast<std::size_t>(count));
    std::iota(out.begin(), out.end(), first);
    return out;
  }
  void check_longest_prefix(StateCache& cache);
  std::unique_ptr<Model> model_;
};

// Keeps the states after a and a+b; checks which one serves which prompt and that a restored
// state continues as the whole prompt fed at once.
void StateCacheTest::check_longest_prefix(StateCache& cache) {
  const auto a = ids(10, 12), b = ids(40, 9), c = ids(60, 5);
  auto session = model_->create_session();
  session->feed(a);
  cache.keep(*session);
  session->feed(b);
  cache.keep(*session);
  ASSERT_EQ(cache.size(), 2u);

  std::vector<TokenId> abc = a;
  abc.insert(abc.end(), b.begin(), b.end());
  abc.insert(abc.end(), c.begin(), c.end());
  const auto kept = cache.longest_prefix_of(abc);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->token_count(), static_cast<std::int64_t>(a.size() + b.size()));
  // A prompt equal to a kept state is not served by it: its last token must be fed.
  EXPECT_EQ(cache.longest_prefix_of(std::vector<TokenId>(abc.begin(), abc.begin() + 21))->token_count(), 12);
  std::vector<TokenId> other = a;
  other.push_back(99);
  EXPECT_EQ(cache.longest_prefix_of(other)->token_count(), 12);
  EXPECT_FALSE(cache.longest_prefix_of(c));

  // Restored and continued, the logits are those of the whole prompt fed at once.
  auto restored = model_->create_session();
  kept->import_into(*restored, {});
  restored->feed(c);
  auto whole = model_->create_session();
  whole->feed(abc);
  const auto x = restored->logits(), y = whole->logits();
  ASSERT_EQ(x.size(), y.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    diff += (x[i] - y[i]) * (x[i] - y[i]);
    norm += y[i] * y[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 1e-4);
}

TEST_F(StateCacheTest, InMemoryRestoresTheLongestKeptPrefix) {
  MemoryStateCache cache(std::size_t{1} << 30);
  check_longest_prefix(cache);
}

TEST_F(StateCacheTest, InADatabaseRestoresTheLongestKeptPrefixAlsoAfterARestart) {
  test::ScratchDir dir;
  const auto database = dir.path() / "states.sqlite";
  {
    StoredStateCache cache(database, model_->info(), std::size_t{1} << 30);
    check_longest_prefix(cache);
  }
  StoredStateCache reopened(database, model_->info(), std::size_t{1} << 30);
  EXPECT_EQ(reopened.size(), 2u);
  std::vector<TokenId> longer = ids(10, 12);
  longer.push_back(7);
  ASSERT_TRUE(reopened.longest_prefix_of(longer));
  EXPECT_EQ(reopened.longest_prefix_of(longer)->token_count(), 12);
  // A limit below one state's size drops what is kept, from the database too.
  auto session = model_->create_session();
  session->feed(ids(90, 6));
  StoredStateCache tiny(database, model_->info(), 1);
  tiny.keep(*session);
  EXPECT_EQ(tiny.size(), 0u);
  EXPECT_EQ(StoredStateCache(database, model_->info(), std::size_t{1} << 30).size(), 0u);
}

TEST_F(StateCacheTest, EvictsTheLeastRecentlyUsedStateOverTheLimit) {
  auto session = model_->create_session();
  session->feed(ids(10, 8));
  const std::size_t one = conversation::EngineState::copy_of(*session)->bytes();
  // Room for the first state and a slightly larger second one, not a third.
  MemoryStateCache cache(2 * one + one / 2);
  cache.keep(*session);
  const auto first = session->tokens();
  session->feed(ids(30, 1));
  cache.keep(*session);
  const auto second = session->tokens();
  std::vector<TokenId> longer = second;
  longer.push_back(5);
  // Using the first makes the second the least recently used.
  std::vector<TokenId> after_first = first;
  after_first.push_back(50);
  ASSERT_EQ(cache.longest_prefix_of(after_first)->token_count(), 8);
  session->feed(ids(31, 1));
  cache.keep(*session);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_LE(cache.bytes(), 2 * one + one / 2);
  // The second is gone: the longest prefix of `longer` is now the first.
  EXPECT_EQ(cache.longest_prefix_of(longer)->token_count(), 8);
  // A limit of zero keeps nothing.
  MemoryStateCache none(0);
  none.keep(*session);
  EXPECT_EQ(none.size(), 0u);
}

}  // namespace
}  // namespace lightdesk::server
