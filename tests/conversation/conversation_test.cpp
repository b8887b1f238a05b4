// The shared conversation logic on the bundled tiny model (a random M1 with a 512-id tokenizer):
// prefix reuse across turns, a stopped read that goes on where it stopped, documents counted in
// slices against a whole encode, a document too large for the context, and the prefill estimate
// against a known cost.
#include "lightdesk/conversation.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>

#include "lightdesk/engine_state.h"
#include "lightdesk/store.h"

namespace lightdesk::conversation {
namespace {

const std::filesystem::path kModel = LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8";

class ChatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Model::open(kModel, {});
    tokenizer_ = Tokenizer::open(kModel);
    format_.emplace(ChatFormat::for_model(kModel, *tokenizer_));
    chat_ = std::make_unique<Chat>(*model_, *tokenizer_, *format_, nullptr);
  }

  // Feeds the prompt and writes a few tokens greedily, as a front end would.
  std::vector<TokenId> answer(const Chat::Prompt& prompt, std::int64_t max_new = 4) {
    GenerationOptions options;
    options.max_new_tokens = max_new;
    options.stop_token = format_->end_of_turn();
    return generate_text(chat_->session(), *tokenizer_, prompt.tokens, options, [](std::string_view) {});
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatFormat> format_;
  std::unique_ptr<Chat> chat_;
};

TEST_F(ChatTest, AFollowUpFeedsOnlyItsOwnTurn) {
  std::vector<Turn> turns{{true, "What is in the notes?", {}, {}}};
  const Chat::Prompt first = chat_->prepare(turns, 1);
  EXPECT_EQ(first.reused, 0);
  const auto generated = answer(first);
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  const std::int64_t held = chat_->session().position();
  turns.push_back(chat_->held_turns().back());
  turns.push_back({true, "And then?", {}, {}});
  const Chat::Prompt second = chat_->prepare(turns, 1);
  EXPECT_EQ(second.reused, held);
  EXPECT_EQ(second.kv_saved, held);  // the same owner saved the earlier state
  // What is fed is exactly the continuation's render.
  EXPECT_EQ(second.tokens, format_->render_continuation(to_chat(std::span(turns).subspan(2))).encode(*tokenizer_));
}

TEST_F(ChatTest, AnotherOwnersSameTurnsReuseTheStateButSaveItWhole) {
  std::vector<Turn> turns{{true, "What is in the notes?", {}, {}}};
  const auto generated = answer(chat_->prepare(turns, 1));
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  const std::int64_t held = chat_->session().position();
  turns.push_back(chat_->held_turns().back());
  turns.push_back({true, "And then?", {}, {}});
  const Chat::Prompt prompt = chat_->prepare(turns, 2);
  EXPECT_EQ(prompt.reused, held);
  EXPECT_EQ(prompt.kv_saved, 0);
}

TEST_F(ChatTest, AnEditedTurnStartsFromAnEmptyState) {
  std::vector<Turn> turns{{true, "First question", {}, {}}};
  const auto generated = answer(chat_->prepare(turns, 1));
  chat_->finish(turns, "an answer", generated);
  const std::vector<Turn> edited{{true, "First question, edited", {}, {}}};
  const Chat::Prompt prompt = chat_->prepare(edited, 1);
  EXPECT_EQ(prompt.reused, 0);
  EXPECT_EQ(chat_->session().position(), 0);
  EXPECT_EQ(prompt.tokens, format_->render(to_chat(edited)).encode(*tokenizer_));
}

TEST_F(ChatTest, AStoppedReadGoesOnWhereItStopped) {
  const std::vector<Turn> turns{{true, std::string(2000, 'a') + " question", {}, {}}};
  const Chat::Prompt whole = chat_->prepare(turns, 7);
  GenerationOptions options;
  options.prefill.chunk_tokens = 64;
  std::int64_t reports = 0;
  options.prefill.progress = [&reports](const FeedProgress&) { return ++reports < 2; };
  EXPECT_THROW(generate_text(chat_->session(), *tokenizer_, whole.tokens, options, [](std::string_view) {}), Cancelled);
  const std::int64_t read = chat_->session().position();
  ASSERT_GT(read, 0);
  ASSERT_LT(read, static_cast<std::int64_t>(whole.tokens.size()));
  const Chat::Prompt rest = chat_->prepare(turns, 7);
  EXPECT_EQ(rest.reused, read);
  EXPECT_EQ(rest.tokens, std::vector<TokenId>(whole.tokens.begin() + read, whole.tokens.end()));
}

TEST_F(ChatTest, APromptBeyondTheContextIsRefusedAndTheStateKept) {
  std::vector<Turn> turns{{true, "Short", {}, {}}};
  const auto generated = answer(chat_->prepare(turns, 1));
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  const std::int64_t held = chat_->session().position();
  turns.push_back(chat_->held_turns().back());
  turns.push_back({true, std::string(static_cast<std::size_t>(model_->info().max_context) * 2, 'x'), {}, {}});
  try {
    chat_->prepare(turns, 1);
    FAIL() << "a prompt beyond the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit the model's context of"), std::string::npos) << e.what();
  }
  EXPECT_EQ(chat_->session().position(), held);
  EXPECT_EQ(chat_->held_turns().size(), 2u);
}

// A follow-up's document lies where the prompt says, in session positions.
TEST_F(ChatTest, ASingleQuestionSaysWhereItsDocumentsLie) {
  std::vector<Turn> turns{{true, "Hello", {}, {}}};
  const auto generated = answer(chat_->prepare(turns, 1));
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  turns.push_back(chat_->held_turns().back());
  Document notes{"notes.txt", "text", "Alpha beta gamma delta.", {}, {}};
  turns.push_back({true, "What follows beta?", {notes}, {}});
  const Chat::Prompt prompt = chat_->prepare(turns, 1);
  ASSERT_EQ(prompt.documents.size(), 1u);
  const auto& span = prompt.documents.front();
  ASSERT_GE(span.first_token, prompt.reused);
  const std::vector<TokenId> inside(prompt.tokens.begin() + (span.first_token - prompt.reused),
                                    prompt.tokens.begin() + (span.end_token - prompt.reused));
  EXPECT_NE(tokenizer_->decode(inside).find("Alpha beta gamma"), std::string::npos) << tokenizer_->decode(inside);
  // The same layout as the command line's and a conversation read again: "Question: ...".
  EXPECT_EQ(prompt_text(turns.back()), document_question_text({notes}, "What follows beta?"));
  EXPECT_EQ(prompt_text({true, "Hello", {}, {}}), "Question: Hello");
}

// The system prompt opens every render of the session: the first turn's prompt is the format's
// render of a system message and the question (the document layout included), a follow-up under
// the same one feeds only itself, and another system prompt starts from an empty state.
TEST_F(ChatTest, TheSystemPromptOpensTheConversation) {
  const std::string system = "Answer in one word.";
  Document notes{"notes.txt", "text", "Alpha beta gamma delta.", {}, {}};
  std::vector<Turn> turns{{true, "What follows beta?", {notes}, {}}};
  const Chat::Prompt first = chat_->prepare(turns, 1, system);
  EXPECT_EQ(first.tokens, format_->render(to_chat(turns, system)).encode(*tokenizer_));
  EXPECT_NE(first.tokens, format_->render(to_chat(turns)).encode(*tokenizer_));
  // The documents are still placed right after a system message.
  ASSERT_EQ(first.documents.size(), 1u);
  const std::vector<TokenId> inside(first.tokens.begin() + first.documents[0].first_token,
                                    first.tokens.begin() + first.documents[0].end_token);
  EXPECT_NE(tokenizer_->decode(inside).find("Alpha beta gamma"), std::string::npos) << tokenizer_->decode(inside);
  const auto generated = answer(first);
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  const std::int64_t held = chat_->session().position();
  turns.push_back(chat_->held_turns().back());
  turns.push_back({true, "And then?", {}, {}});
  EXPECT_EQ(chat_->prepare(turns, 1, system).reused, held);
  // The same turns under another system prompt: read again whole, opening with the new one.
  const Chat::Prompt changed = chat_->prepare(turns, 1, "Answer in French.");
  EXPECT_EQ(changed.reused, 0);
  EXPECT_EQ(changed.tokens, format_->render(to_chat(turns, "Answer in French.")).encode(*tokenizer_));
}

// A saved state records its system prompt: adopting it under another one is refused by name and
// leaves nothing reusable, so the next prompt is read whole.
TEST_F(ChatTest, AStateOfAnotherSystemPromptIsNotAdopted) {
  std::vector<Turn> turns{{true, "Hello", {}, {}}};
  const auto generated = answer(chat_->prepare(turns, 1, "Be brief."));
  chat_->finish(turns, tokenizer_->decode(generated), generated);
  auto streamed = chat_->stream_state();
  std::thread reader([&streamed] { streamed.state = EngineState::materialized(std::move(streamed.state)); });
  streamed.producer.serve(chat_->session());
  reader.join();
  const EngineStatePtr saved = streamed.state;
  EXPECT_EQ(saved->system_prompt(), "Be brief.");
  std::vector<Turn> held = chat_->held_turns();
  Chat other(*model_, *tokenizer_, *format_, nullptr);
  try {
    other.adopt(*saved, held, 1, "Be thorough.");
    FAIL() << "a state of another system prompt was adopted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "the saved state was computed with the system prompt \u201cBe brief.\u201d; the "
                                     "conversation now has the system prompt \u201cBe thorough.\u201d");
  }
  held.push_back({true, "And then?", {}, {}});
  EXPECT_EQ(other.prepare(held, 1, "Be thorough.").reused, 0);
  Chat same(*model_, *tokenizer_, *format_, nullptr);
  same.adopt(*saved, chat_->held_turns(), 1, "Be brief.");
  EXPECT_EQ(same.prepare(held, 1, "Be brief.").reused, saved->token_count());
}

class DocumentTest : public ChatTest {
 protected:
  std::filesystem::path write(const std::string& text) {
    const auto path = std::filesystem::path(::testing::TempDir()) / "conversation_document.txt";
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
};

TEST_F(DocumentTest, CountedInSlicesAsAWholeEncodeCounts) {
  std::string text;
  for (int line = 0; line < 400; ++line) text += "Line " + std::to_string(line) + " of the notes, with some words.\n";
  const auto path = write(text);
  std::int64_t reports = 0;
  const ReadDocument read =
      read_document(path, *tokenizer_, 0, [&reports](std::int64_t, std::int64_t) { return ++reports > 0; }, 1000);
  EXPECT_EQ(read.tokens, static_cast<std::int64_t>(tokenizer_->encode(text).size()));
  EXPECT_GT(reports, 10);
}

TEST_F(DocumentTest, TooLargeForTheContextIsRefusedWithBothCounts) {
  const auto path = write(std::string(20000, 'z') + "\n");
  try {
    read_document(path, *tokenizer_, 100, {}, 4096);
    FAIL() << "a document beyond the context was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("does not fit the model's context of 100 tokens"), std::string::npos) << message;
  }
}

TEST_F(DocumentTest, StopEndsTheCount) {
  const auto path = write(std::string(20000, 'z') + "\n");
  EXPECT_THROW(read_document(path, *tokenizer_, 0, [](std::int64_t, std::int64_t) { return false; }, 4096), Cancelled);
}

// A read whose token at position p costs a + b*p: the estimate after a third of it is within a
// few percent of the true time left, where the mean rate so far is far off.
TEST(PrefillEstimateTest, FollowsACostThatGrowsWithThePosition) {
  const double a = 1e-3, b = 2e-7;
  const std::int64_t start = 1000, total = 24000;
  auto seconds = [&](double n) { return a * n + b * (static_cast<double>(start) * n + n * n / 2); };
  PrefillEstimate estimate(start, total);
  EXPECT_LT(estimate.seconds_left(), 0);
  for (std::int64_t done = 512; done <= total / 3; done += 512) estimate.add(done, seconds(static_cast<double>(done)));
  const double done = static_cast<double>(total / 3 / 512 * 512);
  const double truth = seconds(static_cast<double>(total)) - seconds(done);
  EXPECT_NEAR(estimate.seconds_left() / truth, 1.0, 0.02);
  const double mean_rate_guess = seconds(done) / done * (static_cast<double>(total) - done);
  EXPECT_LT(mean_rate_guess / truth, 0.8);  // what the mean rate said
}

// ---------------------------------------------------------------------------------------------
// A state streamed from the engine's thread into a store on another thread (the desktop app's
// save): written as it comes with at most two parts in memory at once, whatever the state's
// size, and read back bit for bit.

class StreamedStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Model::open(kModel, {});
    session_ = model_->create_session();
    std::vector<TokenId> ids(300);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<TokenId>((i * 37 + 11) % 512);
    session_->feed(ids);
    directory_ = std::filesystem::temp_directory_path() / ("lightdesk-streamed-" + std::to_string(::getpid()));
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  // Logits of a few more tokens after the session's state.
  static std::vector<float> next_logits(Session& session) {
    FeedOptions options;
    options.all_logits = true;
    session.feed(std::vector<TokenId>{5, 6, 7}, options);
    return {session.logits().begin(), session.logits().end()};
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<Session> session_;
  std::filesystem::path directory_;
};

TEST_F(StreamedStateTest, IsSavedWithAtMostTwoPartsInMemory) {
  const ModelInfo& info = model_->info();
  const std::int64_t position_bytes = info.num_kv_heads * info.head_dim * 4;
  store::Store::Options options;
  options.kv_row_bytes = 16 * position_bytes;  // parts of 16 positions: 19 per layer and side
  options.kv_file_bytes = 0;
  const std::int64_t lightning_part = info.num_heads * info.head_dim * info.head_dim * 4;
  const std::int64_t largest_part = std::max(lightning_part, options.kv_row_bytes);
  const auto state_bytes = static_cast<std::int64_t>(info.lightning_state_bytes + 300 * info.kv_bytes_per_token);
  ASSERT_GT(state_bytes, 8 * largest_part) << "the state must be much larger than the queue for the test to tell";

  auto streamed = EngineState::stream_of(*session_);
  std::int64_t checkpoint = 0;
  std::string writer_error;
  std::thread writer([&, state = std::move(streamed.state)]() mutable {
    try {
      store::Store store(directory_ / "sessions.db", options);
      checkpoint = store.save_checkpoint(store.create_session("streamed"), state->source());
    } catch (const std::exception& e) {
      writer_error = e.what();
    }
  });
  streamed.producer.serve(*session_);
  writer.join();
  ASSERT_EQ(writer_error, "");
  EXPECT_GT(streamed.producer.peak_queued_bytes(), 0u);
  EXPECT_LE(static_cast<std::int64_t>(streamed.producer.peak_queued_bytes()), 2 * largest_part);

  auto restored = model_->create_session();
  store::Store(directory_ / "sessions.db").load_checkpoint(checkpoint, *restored);
  EXPECT_EQ(restored->tokens(), session_->tokens());
  const auto expected = next_logits(*session_);
  const auto got = next_logits(*restored);
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_EQ(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)), 0);
}

// Whoever drops out, the other does not wait forever: a state dropped unread, an engine that
// never serves, a store that fails part-way, a stop before the reader asks.
TEST_F(StreamedStateTest, NeitherSideWaitsForAGoneOther) {
  {
    auto streamed = EngineState::stream_of(*session_);
    streamed.state.reset();
    streamed.producer.serve(*session_);  // returns at once
  }
  {
    auto state = EngineState::stream_of(*session_).state;  // its producer is gone
    try {
      EngineState::materialized(state);
      ADD_FAILURE() << "parts came from no engine";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("stopped before streaming the state"), std::string::npos) << e.what();
    }
  }
  {
    auto streamed = EngineState::stream_of(*session_);
    std::thread reader([state = std::move(streamed.state)]() mutable {
      int parts = 0;
      EXPECT_THROW(state->source().export_state(
                       [&parts](const StatePart&) {
                         if (++parts == 3) throw Error("disk full");
                       },
                       16, 0),
                   Error);
      state.reset();
    });
    streamed.producer.serve(*session_);  // returns once the reader failed
    reader.join();
  }
  {
    auto streamed = EngineState::stream_of(*session_);
    const auto kept = streamed.state;  // a reader that would never ask
    streamed.producer.serve(*session_, [] { return true; });
  }
  // Materialized, it is the session's state in memory.
  auto streamed = EngineState::stream_of(*session_);
  std::shared_ptr<const EngineState> copy;
  std::thread reader([&copy, state = std::move(streamed.state)]() mutable {
    copy = EngineState::materialized(std::move(state));
  });
  streamed.producer.serve(*session_);
  reader.join();
  ASSERT_TRUE(copy);
  EXPECT_FALSE(copy->streamed());
  EXPECT_EQ(copy->bytes(), EngineState::copy_of(*session_)->bytes());
  auto restored = model_->create_session();
  copy->import_into(*restored, {});
  EXPECT_EQ(restored->tokens(), session_->tokens());
}

}  // namespace
}  // namespace lightdesk::conversation
