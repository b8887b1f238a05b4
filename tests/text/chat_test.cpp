// The native chat formats against MiniMax's published Jinja templates rendered by jinja2
// (tests/data/chat/references.json, tools/make_chat_references.py), and the output parser.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::filesystem::path kData = LIGHTDESK_TEST_DATA;

Conversation to_conversation(const nlohmann::ordered_json& reference) {
  Conversation c;
  for (const auto& m : reference.at("messages")) {
    ChatMessage message;
    const std::string role = m.at("role");
    if (role == "system") message.role = ChatMessage::Role::System;
    else if (role == "user") message.role = ChatMessage::Role::User;
    else if (role == "assistant") message.role = ChatMessage::Role::Assistant;
    else message.role = ChatMessage::Role::Tool;  // M1 "tool", Text-01 "function"
    for (const auto& item : m.at("content")) {
      ChatPart part;
      if (item.at("type") == "image") part.kind = ChatPart::Kind::Image;
      part.text = item.value("text", "");
      part.name = item.value("name", m.value("name", ""));
      message.parts.push_back(part);
    }
    c.messages.push_back(message);
  }
  for (const auto& tool : reference.at("tools")) c.tools.push_back(tool.dump());
  c.add_generation_prompt = reference.at("add_generation_prompt");
  return c;
}

nlohmann::ordered_json references() {
  std::ifstream in(kData / "chat" / "references.json");
  return nlohmann::ordered_json::parse(in);
}

TEST(ChatFormat, RendersLikeThePublishedTemplates) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / "cl100k-bpe");
  const ChatFormat m1(ChatFamily::M1, *tokenizer, "<beginning_of_sentence>", "<end_of_sentence>");
  const ChatFormat text01(ChatFamily::Text01, *tokenizer, "<beginning_of_sentence>", "<end_of_sentence>");
  int checked = 0;
  for (const auto& reference : references()) {
    const ChatFormat& format = reference.at("family") == "m1" ? m1 : text01;
    const ChatPrompt prompt = format.render(to_conversation(reference));
    EXPECT_EQ(prompt.to_string(), reference.at("rendered").get<std::string>()) << reference.at("name");
    ++checked;
  }
  EXPECT_GE(checked, 9);
}

TEST(ChatFormat, EncodesTemplateSpecialsButNeverUserText) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / "cl100k-bpe");
  const ChatFormat m1(ChatFamily::M1, *tokenizer, "<beginning_of_sentence>", "<end_of_sentence>");
  const TokenId eos = m1.end_of_turn();
  for (const auto& reference : references()) {
    if (reference.at("family") != "m1") continue;
    const ChatPrompt prompt = m1.render(to_conversation(reference));
    const auto ids = prompt.encode(*tokenizer);
    const std::string rendered = prompt.to_string();
    // Hugging Face encodes the whole rendered string with special tokens matched everywhere;
    // that agrees with ours wherever the user did not type a special token's text.
    const auto hf_like = tokenizer->encode_with_special(rendered);
    std::size_t turns = 0;
    for (const auto& piece : prompt.pieces)
      if (piece.trusted)
        for (std::size_t at = piece.text.find("<end_of_sentence>"); at != std::string::npos;
             at = piece.text.find("<end_of_sentence>", at + 1))
          ++turns;
    EXPECT_EQ(static_cast<std::size_t>(std::count(ids.begin(), ids.end(), eos)), turns) << reference.at("name");
    EXPECT_EQ(tokenizer->decode(ids), rendered);
    if (reference.at("name") == "user_text_with_special_strings")
      EXPECT_NE(ids, hf_like);  // the user's "<end_of_sentence>" stays text
    else
      EXPECT_EQ(ids, hf_like) << reference.at("name");
  }
}

TEST(ChatFormat, ReadsTheModelsTokenizerConfig) {
  const auto tokenizer = Tokenizer::open(LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8");
  const ChatFormat format = ChatFormat::for_model(LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8", *tokenizer);
  EXPECT_EQ(format.family(), ChatFamily::M1);  // config.json: minimax_m1, no template
  EXPECT_EQ(format.end_of_turn(), 2);
  EXPECT_FLOAT_EQ(format.sampling_defaults().temperature, 1.0f);
  EXPECT_FLOAT_EQ(format.sampling_defaults().top_p, 0.95f);
  // The published M1 config (with its template) decides the family by itself.
  const auto m1_dir = std::filesystem::temp_directory_path() / "lightdesk_chat_m1_config";
  std::filesystem::create_directories(m1_dir);
  std::filesystem::copy_file(kData / "chat" / "m1_tokenizer_config.json", m1_dir / "tokenizer_config.json",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_EQ(ChatFormat::for_model(m1_dir, *tokenizer).family(), ChatFamily::M1);
  // A tokenizer without the format's tokens is refused by name.
  try {
    ChatFormat(ChatFamily::M1, *tokenizer, "<s>", "<end_of_sentence>");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"<s>\""), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(m1_dir);
}

// A conversation rendered turn by turn (the first exchange, then each later user turn with
// render_continuation after the assistant turn's end-of-turn token) gives the ids and text of
// the whole conversation rendered at once.
TEST(ChatFormat, ContinuationsAddUpToTheWholeConversation) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / "cl100k-bpe");
  auto user = [](std::string text) { return ChatMessage{ChatMessage::Role::User, {{ChatPart::Kind::Text, std::move(text), {}}}}; };
  auto assistant = [](std::string text) {
    return ChatMessage{ChatMessage::Role::Assistant, {{ChatPart::Kind::Text, std::move(text), {}}}};
  };
  for (const ChatFamily family : {ChatFamily::M1, ChatFamily::Text01}) {
    const ChatFormat format(family, *tokenizer, "<beginning_of_sentence>", "<end_of_sentence>");
    Conversation whole;
    whole.messages = {user("Hello <end_of_sentence> there"), assistant("Hi! How can I help?"), user("Tell me more."),
                      assistant("More."), user("Thanks.")};
    std::vector<TokenId> ids;
    std::string text;
    auto append = [&](const ChatPrompt& prompt) {
      const auto part = prompt.encode(*tokenizer);
      ids.insert(ids.end(), part.begin(), part.end());
      text += prompt.to_string();
    };
    Conversation turn;
    turn.messages = {whole.messages[0]};
    append(format.render(turn));
    for (std::size_t m = 1; m < whole.messages.size(); m += 2) {
      // The assistant turn as generated: its text, then the end-of-turn token.
      append(ChatPrompt{{{whole.messages[m].parts[0].text, false}, {"<end_of_sentence>", true}}});
      turn.messages = {whole.messages[m + 1]};
      append(format.render_continuation(turn));
    }
    const ChatPrompt expected = format.render(whole);
    EXPECT_EQ(text, expected.to_string());
    EXPECT_EQ(ids, expected.encode(*tokenizer));

    Conversation with_tools = turn;
    with_tools.tools = {R"({"name": "f"})"};
    EXPECT_THROW(format.render_continuation(with_tools), Error);
  }
  const ChatFormat m1(ChatFamily::M1, *tokenizer, "<beginning_of_sentence>", "<end_of_sentence>");
  Conversation system;
  system.messages = {{ChatMessage::Role::System, {{ChatPart::Kind::Text, "Be brief.", {}}}}, user("Hi")};
  EXPECT_THROW(m1.render_continuation(system), Error);
}

// Feeds `text` in chunks of `step` bytes.
ChatOutputParser parse_in_chunks(ChatFamily family, const std::string& text, std::size_t step,
                                 std::string& streamed_answer, std::string& streamed_reasoning) {
  ChatOutputParser parser(family);
  for (std::size_t i = 0; i < text.size(); i += step) {
    const auto d = parser.feed(std::string_view(text).substr(i, step));
    streamed_answer += d.answer;
    streamed_reasoning += d.reasoning;
  }
  const auto d = parser.finish();
  streamed_answer += d.answer;
  streamed_reasoning += d.reasoning;
  return parser;
}

TEST(ChatOutputParser, SeparatesReasoningAnswerAndM1ToolCallsWhateverTheChunking) {
  const std::string output =
      "<think>\nThe user wants weather. <thinking> is not a tag.\n</think>\nLet me check."
      "<tool_calls>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"上海\"}}\n"
      "{\"name\": \"search_web\", \"arguments\": {\"query_list\": [\"a<b\"]}}\n</tool_calls> Done <";
  for (std::size_t step : {1, 2, 3, 5, 7, 64, 1000}) {
    std::string answer, reasoning;
    const auto parser = parse_in_chunks(ChatFamily::M1, output, step, answer, reasoning);
    EXPECT_EQ(parser.reasoning(), "\nThe user wants weather. <thinking> is not a tag.\n") << step;
    EXPECT_EQ(parser.answer(), "\nLet me check. Done <") << step;
    EXPECT_EQ(reasoning, parser.reasoning());
    EXPECT_EQ(answer, parser.answer());
    ASSERT_EQ(parser.tool_calls().size(), 2u) << step;
    EXPECT_EQ(parser.tool_calls()[0].name, "get_current_weather");
    EXPECT_EQ(parser.tool_calls()[0].arguments, "{\"location\":\"上海\"}");
    EXPECT_EQ(parser.tool_calls()[1].name, "search_web");
  }
}

TEST(ChatOutputParser, ExtractsText01FunctionCalls) {
  const std::string output =
      "Sure.<function_call>```typescript\nfunctions.get_current_weather({\"location\": \"Shanghai\"})\n```"
      " After.";
  for (std::size_t step : {1, 4, 1000}) {
    std::string answer, reasoning;
    const auto parser = parse_in_chunks(ChatFamily::Text01, output, step, answer, reasoning);
    EXPECT_EQ(parser.answer(), "Sure. After.") << step;
    ASSERT_EQ(parser.tool_calls().size(), 1u) << step;
    EXPECT_EQ(parser.tool_calls()[0].name, "get_current_weather");
    EXPECT_EQ(parser.tool_calls()[0].arguments, "{\"location\": \"Shanghai\"}");
  }
}

TEST(ChatOutputParser, HoldsBackOnlyPossibleTagStarts) {
  ChatOutputParser parser(ChatFamily::M1);
  EXPECT_EQ(parser.feed("a <b").answer, "a <b");
  EXPECT_EQ(parser.feed(" <thi").answer, " ");
  EXPECT_EQ(parser.feed("n").answer, "");  // "<thin" may still become "<think>"
  EXPECT_EQ(parser.feed("g").answer, "<thing");
}

}  // namespace
}  // namespace lightdesk
