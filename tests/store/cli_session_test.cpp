// lightdesk-cli --session-db FILE --session NAME, end to end: the built CLI is run as separate
// processes, so state crosses a process boundary through the database file.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lightdesk/store.h"
#include "lightdesk/text.h"
#include "store_test_util.h"

namespace lightdesk::store {
namespace {

using testing::fixture;
using testing::ScratchDir;
using testing::token_ids;

std::string join(const std::vector<TokenId>& ids) {
  std::string text;
  for (auto id : ids) {
    if (!text.empty()) text += ',';
    text += std::to_string(id);
  }
  return text;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The raw bytes of the "logits" tensor of a safetensors file and its row count.
struct LogitsFile {
  std::int64_t rows = 0;
  std::string bytes;
};

LogitsFile read_logits(const std::filesystem::path& path) {
  const std::string content = read_file(path);
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, content.data(), sizeof header_size);
  const auto header = nlohmann::json::parse(content.substr(8, header_size));
  const auto& logits = header.at("logits");
  const auto begin = logits.at("data_offsets").at(0).get<std::size_t>();
  const auto end = logits.at("data_offsets").at(1).get<std::size_t>();
  return {logits.at("shape").at(0).get<std::int64_t>(), content.substr(8 + header_size + begin, end - begin)};
}

class CliSessionTest : public ::testing::Test {
 protected:
  // Runs lightdesk-cli with `arguments` (or `arguments` alone: a command line that names it);
  // returns its exit code, keeps stdout and stderr.
  int cli(const std::string& arguments, bool with_program = true) {
    const std::string program = with_program ? std::string("'") + LIGHTDESK_CLI + "' " : "";
    const std::string command = program + arguments + " >'" + (scratch_ / "stdout").string() + "' 2>'" +
                                (scratch_ / "stderr").string() + "'";
    const int status = std::system(command.c_str());
    stdout_ = read_file(scratch_ / "stdout");
    stderr_ = read_file(scratch_ / "stderr");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string model(const char* name = "tiny-a-m1-rd8") const { return "--model '" + fixture(name).string() + "'"; }
  std::string session(const char* name = "s") const {
    return "--session-db '" + (scratch_ / "sessions.db").string() + "' --session " + name;
  }
  std::string out(const char* name) const { return "--out '" + (scratch_ / name).string() + "'"; }
  LogitsFile logits(const char* name) const { return read_logits(scratch_ / name); }

  ScratchDir scratch_;
  std::string stdout_, stderr_;
};

// The contract: run A, then B with --decode-from 0 in the same session, gives for B the logits
// of one uninterrupted run over A then B whose B rows are single-token decode steps.
TEST_F(CliSessionTest, LogitsContinueAtTheStoredPosition) {
  const auto a = token_ids(33, 31), b = token_ids(7, 32);
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(a) + " " + out("a.safetensors") + " " + session()), 0) << stderr_;
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(b) + " " + out("b.safetensors") + " " + session() +
                " --decode-from 0"),
            0)
      << stderr_;
  EXPECT_EQ(stderr_, "");
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(testing::concat(a, b)) + " " + out("ab.safetensors") +
                " --decode-from " + std::to_string(a.size())),
            0)
      << stderr_;
  const auto continued = logits("b.safetensors"), uninterrupted = logits("ab.safetensors");
  ASSERT_EQ(continued.rows, 7);
  ASSERT_EQ(uninterrupted.rows, 40);
  const std::size_t row_bytes = continued.bytes.size() / 7;
  EXPECT_TRUE(continued.bytes == uninterrupted.bytes.substr(33 * row_bytes)) << "logits differ";
  // Another session in the same file starts empty.
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(a) + " " + out("other.safetensors") + " " + session("other")),
            0);
  EXPECT_EQ(logits("other.safetensors").bytes, logits("a.safetensors").bytes);
}

TEST_F(CliSessionTest, GenerateKeepsItsOutputInTheSession) {
  const auto prompt = token_ids(20, 33), next = token_ids(4, 34);
  ASSERT_EQ(cli("generate " + model() + " --ids " + join(prompt) + " --max-new-tokens 5 --greedy " + session()), 0)
      << stderr_;
  std::vector<TokenId> generated;
  std::stringstream line(stdout_);
  for (std::string id; std::getline(line, id, ',');) generated.push_back(static_cast<TokenId>(std::stoi(id)));
  ASSERT_EQ(generated.size(), 5u);
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(next) + " " + out("next.safetensors") + " " + session() +
                " --decode-from 0"),
            0)
      << stderr_;
  const auto all = testing::concat(testing::concat(prompt, generated), next);
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(all) + " " + out("all.safetensors") + " --decode-from 20"), 0);
  const auto continued = logits("next.safetensors"), uninterrupted = logits("all.safetensors");
  const std::size_t row_bytes = continued.bytes.size() / 4;
  EXPECT_TRUE(continued.bytes == uninterrupted.bytes.substr(25 * row_bytes)) << "logits differ";
}

// generate --prompt: the stored session holds the prompt's ids and every generated token.
TEST_F(CliSessionTest, GenerateFromAPromptKeepsPromptAndOutput) {
  const auto model_dir = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/tiny-a-m1-rd8";
  const std::string text_model = "--model '" + model_dir.string() + "'";
  ASSERT_EQ(cli("generate " + text_model + " --prompt 'hello there' --max-new-tokens 4 --greedy " + session()), 0)
      << stderr_;
  ASSERT_EQ(cli("generate " + text_model + " --prompt ' and more' --max-new-tokens 3 --greedy " + session()), 0)
      << stderr_;
  const auto tokenizer = Tokenizer::open(model_dir);
  const auto first = tokenizer->encode("hello there"), second = tokenizer->encode(" and more");
  Store store(scratch_ / "sessions.db");
  const auto checkpoints = store.checkpoints(store.find_session("s")->id);
  ASSERT_EQ(checkpoints.size(), 2u);
  EXPECT_EQ(checkpoints[0].position, static_cast<std::int64_t>(first.size() + 4));
  EXPECT_EQ(checkpoints[1].position, static_cast<std::int64_t>(first.size() + 4 + second.size() + 3));
  const auto tokens = store.checkpoint_tokens(checkpoints[1].id);
  EXPECT_TRUE(std::equal(second.begin(), second.end(), tokens.begin() + static_cast<std::ptrdiff_t>(first.size() + 4)));
}

// ask in a stored session: a second question continues the conversation of the first. The
// session then holds the conversation as one render of it gives it, the second ask prefills only
// its own turn, and greedy decoding after the whole conversation fed at once gives its answer.
TEST_F(CliSessionTest, AskContinuesTheStoredConversation) {
  const auto model_dir = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/tiny-a-m1-rd8";
  const auto document = fixture("documents") / "utf8.md";
  const std::string ask = "ask --model '" + model_dir.string() + "' --greedy --stats " + session();
  ASSERT_EQ(cli(ask + " --document '" + document.string() + "' --question 'What is it?' --max-new-tokens 6"), 0)
      << stderr_;
  const std::string first_answer = stdout_;
  ASSERT_EQ(cli(ask + " --question 'And then?' --max-new-tokens 5"), 0) << stderr_;

  Store store(scratch_ / "sessions.db");
  const auto session_id = store.find_session("s")->id;
  const auto messages = store.messages(session_id);
  ASSERT_EQ(messages.size(), 4u);
  const auto thread = store.thread(messages.back().id);  // one branch: question, answer, question, answer
  ASSERT_EQ(thread.size(), 4u);
  EXPECT_EQ(thread[0].role, Role::User);
  EXPECT_EQ(thread[0].text, "What is it?");
  EXPECT_EQ(thread[1].role, Role::Assistant);
  EXPECT_EQ(thread[1].text + "\n", first_answer);
  EXPECT_EQ(thread[2].text, "And then?");
  const auto checkpoints = store.checkpoints(session_id);
  ASSERT_EQ(checkpoints.size(), 2u);
  EXPECT_EQ(checkpoints[0].message_id, thread[1].id);
  EXPECT_EQ(checkpoints[1].message_id, thread[3].id);
  const auto before = store.checkpoint_tokens(checkpoints[0].id), after = store.checkpoint_tokens(checkpoints[1].id);
  ASSERT_GT(after.size(), before.size());
  ASSERT_TRUE(std::equal(before.begin(), before.end(), after.begin()));

  // The second ask restored the first exchange and prefilled only its own turn.
  const auto turn = static_cast<std::size_t>(*thread[2].prompt_tokens);
  EXPECT_NE(stderr_.find("session \"s\": " + std::to_string(before.size()) + " tokens restored"), std::string::npos)
      << stderr_;
  EXPECT_NE(stderr_.find("prefill " + std::to_string(turn) + "/" + std::to_string(turn) + " tokens"), std::string::npos)
      << stderr_;

  // Both answers are kept through the end-of-turn token.
  const auto tokenizer = Tokenizer::open(model_dir);
  const auto format = ChatFormat::for_model(model_dir, *tokenizer);
  EXPECT_EQ(before.back(), format.end_of_turn());
  EXPECT_EQ(after.back(), format.end_of_turn());

  // The conversation rendered at once up to the second answer, the first answer as the ids the
  // model chose (re-encoding its text need not give them back); the text around the answer
  // starts and ends at special tokens, so it encodes on its own.
  const lightdesk::Document doc = load_document(document);
  const std::string answer_mark = "ANSWER";
  Conversation whole;
  whole.messages.push_back({ChatMessage::Role::User,
                            {{ChatPart::Kind::Text, "Document: utf8.md\n" + doc.text + "\n\nQuestion: What is it?", {}}}});
  whole.messages.push_back({ChatMessage::Role::Assistant, {{ChatPart::Kind::Text, answer_mark, {}}}});
  whole.messages.push_back({ChatMessage::Role::User, {{ChatPart::Kind::Text, "Question: And then?", {}}}});
  const auto pieces = format.render(whole).pieces;
  const auto mark = std::find_if(pieces.begin(), pieces.end(), [&](const auto& p) { return p.text == answer_mark; });
  ASSERT_NE(mark, pieces.end());
  std::vector<TokenId> expected = ChatPrompt{{pieces.begin(), mark}}.encode(*tokenizer);
  ASSERT_EQ(static_cast<std::int64_t>(expected.size()), *thread[0].prompt_tokens);
  expected.insert(expected.end(), before.begin() + static_cast<std::ptrdiff_t>(expected.size()), before.end() - 1);
  const auto rest = ChatPrompt{{mark + 1, pieces.end()}}.encode(*tokenizer);
  expected.insert(expected.end(), rest.begin(), rest.end());
  const std::size_t prompt_end = before.size() + turn;
  const std::vector<TokenId> conversation(after.begin(), after.begin() + static_cast<std::ptrdiff_t>(prompt_end));
  EXPECT_EQ(conversation, expected);

  // Greedy decoding over the whole conversation fed at once gives the second answer's tokens.
  const auto generated = static_cast<std::size_t>(*thread[3].completion_tokens);
  ASSERT_EQ(cli("generate --model '" + model_dir.string() + "' --greedy --ids " + join(conversation) +
                " --max-new-tokens " + std::to_string(generated)),
            0)
      << stderr_;
  const std::vector<TokenId> second_answer(after.begin() + static_cast<std::ptrdiff_t>(prompt_end),
                                           after.begin() + static_cast<std::ptrdiff_t>(prompt_end + generated));
  EXPECT_EQ(stdout_, join(second_answer) + "\n");
}

// ask --system: the first turn's prompt is the chat format's render of the system message and the
// question; the stored session records it, goes on under it, and refuses to go on without it.
TEST_F(CliSessionTest, AskWithASystemPromptKeepsItWithTheSession) {
  const auto model_dir = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/tiny-a-m1-rd8";
  const std::string ask = "ask --model '" + model_dir.string() + "' --greedy --max-new-tokens 4 " + session();
  ASSERT_EQ(cli(ask + " --system 'Answer in one word.' --question 'What is it?'"), 0) << stderr_;
  {
    Store store(scratch_ / "sessions.db");
    const auto session_id = store.find_session("s")->id;
    const auto checkpoint = store.latest_checkpoint(session_id);
    ASSERT_TRUE(checkpoint);
    EXPECT_EQ(checkpoint->system_prompt, "Answer in one word.");
    const auto tokenizer = Tokenizer::open(model_dir);
    const auto format = ChatFormat::for_model(model_dir, *tokenizer);
    Conversation first;
    first.messages.push_back({ChatMessage::Role::System, {{ChatPart::Kind::Text, "Answer in one word.", {}}}});
    first.messages.push_back({ChatMessage::Role::User, {{ChatPart::Kind::Text, "Question: What is it?", {}}}});
    const auto expected = format.render(first).encode(*tokenizer);
    const auto held = store.checkpoint_tokens(checkpoint->id);
    ASSERT_GT(held.size(), expected.size());
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), held.begin()));
  }
  ASSERT_EQ(cli(ask + " --system 'Answer in one word.' --question 'And then?'"), 0) << stderr_;
  EXPECT_EQ(cli(ask + " --question 'And now?'"), 1);
  EXPECT_NE(stderr_.find("session \"s\" was computed with the system prompt \u201cAnswer in one word.\u201d; the "
                         "conversation now has none"),
            std::string::npos)
      << stderr_;
  EXPECT_EQ(std::count(stderr_.begin(), stderr_.end(), '\n'), 1) << stderr_;
  EXPECT_EQ(Store(scratch_ / "sessions.db").messages(Store(scratch_ / "sessions.db").find_session("s")->id).size(), 4u);
}

// A state computed with bf16 experts is not continued with int8 ones: refused by name, and
// recomputed from its tokens as for another model; the int8 run's own state then continues.
TEST_F(CliSessionTest, AnotherExpertFormatRecomputesTheStoredTokens) {
  const auto a = token_ids(12, 35), b = token_ids(3, 36), c = token_ids(2, 37);
  const std::string data_dir = " --data-dir '" + (scratch_ / "data").string() + "'";
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(a) + " " + out("a.safetensors") + " " + session() + data_dir), 0);
  ASSERT_EQ(cli("logits " + model() + " --expert-dtype int8 --ids " + join(b) + " " + out("b.safetensors") + " " +
                session() + data_dir + " --decode-from 0"),
            0)
      << stderr_;
  EXPECT_NE(stderr_.find("was computed with bf16 experts"), std::string::npos) << stderr_;
  EXPECT_NE(stderr_.find("runs int8 experts"), std::string::npos) << stderr_;
  EXPECT_NE(stderr_.find("recomputed from its 12 token ids"), std::string::npos) << stderr_;
  ASSERT_EQ(cli("logits " + model() + " --expert-dtype int8 --ids " + join(testing::concat(a, b)) + " " +
                out("ab.safetensors") + data_dir + " --decode-from 12"),
            0);
  const auto continued = logits("b.safetensors"), uninterrupted = logits("ab.safetensors");
  EXPECT_TRUE(continued.bytes == uninterrupted.bytes.substr(12 * (continued.bytes.size() / 3)));
  // The int8 state (saved by the second run) continues under int8 without a word.
  ASSERT_EQ(cli("logits " + model() + " --expert-dtype int8 --ids " + join(c) + " " + out("c.safetensors") + " " +
                session() + data_dir + " --decode-from 0"),
            0);
  EXPECT_EQ(stderr_.find("experts"), std::string::npos) << stderr_;
}

TEST_F(CliSessionTest, AnotherModelRecomputesTheStoredTokens) {
  const auto a = token_ids(12, 35), b = token_ids(3, 36);
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(a) + " " + out("a.safetensors") + " " + session()), 0);
  ASSERT_EQ(cli("logits " + model("tiny-a-hf") + " --ids " + join(b) + " " + out("b.safetensors") + " " + session() +
                " --decode-from 0"),
            0)
      << stderr_;
  EXPECT_NE(stderr_.find("was saved by another model"), std::string::npos) << stderr_;
  EXPECT_NE(stderr_.find("recomputed from its 12 token ids"), std::string::npos) << stderr_;
  ASSERT_EQ(cli("logits " + model("tiny-a-hf") + " --ids " + join(testing::concat(a, b)) + " " +
                out("ab.safetensors") + " --decode-from 12"),
            0);
  const auto continued = logits("b.safetensors"), uninterrupted = logits("ab.safetensors");
  EXPECT_TRUE(continued.bytes == uninterrupted.bytes.substr(12 * (continued.bytes.size() / 3)));
}

// --session alone: the data directory's database (--data-dir, else $LIGHTDESK_DATA_DIR), the one
// the desktop app shows; --session-db wins when given.
TEST_F(CliSessionTest, SessionAloneUsesTheDataDirectorysDatabase) {
  const auto data = scratch_ / "data";
  const auto ids = token_ids(9, 37);
  ASSERT_EQ(cli("logits " + model() + " --ids " + join(ids) + " " + out("x.safetensors") + " --session s --data-dir '" +
                data.string() + "'"),
            0)
      << stderr_;
  ASSERT_EQ(cli("env LIGHTDESK_DATA_DIR='" + (scratch_ / "env").string() + "' '" + LIGHTDESK_CLI + "' logits " + model() +
                    " --ids 1,2 " + out("y.safetensors") + " --session t",
                /*with_program=*/false),
            0)
      << stderr_;
  ASSERT_EQ(cli("logits " + model() + " --ids 1,2 " + out("z.safetensors") + " --data-dir '" + data.string() + "' " +
                session("u")),
            0)
      << stderr_;
  {
    Store store(data / "sessions.sqlite");
    ASSERT_TRUE(store.find_session("s").has_value());
    EXPECT_EQ(store.checkpoints(store.find_session("s")->id).back().position, 9);
    EXPECT_FALSE(store.find_session("u").has_value());
  }
  EXPECT_TRUE(Store(scratch_ / "env" / "sessions.sqlite").find_session("t").has_value());
  EXPECT_TRUE(Store(scratch_ / "sessions.db").find_session("u").has_value());

  EXPECT_EQ(cli("logits " + model() + " --ids 1,2 " + out("x.safetensors") + " --session-db x.db"), 2);
  EXPECT_NE(stderr_.find("--session-db requires --session"), std::string::npos) << stderr_;
  EXPECT_EQ(cli("info " + model() + " " + session()), 2);
}

TEST_F(CliSessionTest, UnreadableDatabaseFailsClearly) {
  std::ofstream(scratch_ / "sessions.db") << std::string(8192, 'x');
  EXPECT_EQ(cli("logits " + model() + " --ids 1,2 " + out("x.safetensors") + " " + session()), 1);
  EXPECT_NE(stderr_.find((scratch_ / "sessions.db").string()), std::string::npos) << stderr_;
}

}  // namespace
}  // namespace lightdesk::store
