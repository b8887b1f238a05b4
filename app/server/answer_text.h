// An answer's text as it is generated, in the pieces the OpenAI API returns: the reasoning apart
// from the content (chat), tool calls, and the content cut before the first stop sequence; and
// the JSON of those parts.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "lightdesk/text.h"

namespace lightdesk::server {

// Holds back the text that may be the start of a stop sequence; cuts the text at the first one.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // The text now known to come before any stop sequence (whole UTF-8 characters).
  std::string feed(std::string_view text);
  // What was held back, at the end of the answer.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::size_t longest_ = 0;
  std::string held_;
  bool stopped_ = false;
};

struct AnswerPiece {
  std::string reasoning, content;
  bool empty() const { return reasoning.empty() && content.empty(); }
};

class AnswerText {
 public:
  // `chat`: the family whose reasoning and tool-call tags are parsed; none for raw completions.
  AnswerText(std::optional<ChatFamily> chat, std::vector<std::string> stops);
  AnswerPiece feed(std::string_view text);
  AnswerPiece finish();
  // A stop sequence was met: the answer ends.
  bool stopped() const { return stops_.stopped(); }
  const std::vector<ToolCall>& tool_calls() const;

 private:
  AnswerPiece route(ChatOutputParser::Delta delta, bool last);

  std::optional<ChatOutputParser> parser_;
  StopMatcher stops_;
  std::vector<ToolCall> no_calls_;
};

// OpenAI's tool_calls list (`streamed`: with the index a streamed delta carries).
nlohmann::json tool_calls_json(const std::vector<ToolCall>& calls, bool streamed);
// A chat.completion's message.
nlohmann::json assistant_message_json(const std::string& reasoning, const std::string& content,
                                      const std::vector<ToolCall>& calls);

}  // namespace lightdesk::server
