#include "answer_text.h"

#include <algorithm>
#include <utility>

namespace lightdesk::server {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase(stops_, std::string());
  for (const auto& s : stops_) longest_ = std::max(longest_, s.size());
}

std::string StopMatcher::feed(std::string_view text) {
  if (stopped_) return {};
  held_ += text;
  std::size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  std::size_t emit = held_.size() - std::min(held_.size(), longest_ > 0 ? longest_ - 1 : 0);
  while (emit > 0 && emit < held_.size() && (static_cast<unsigned char>(held_[emit]) & 0xC0) == 0x80) --emit;
  std::string out = held_.substr(0, emit);
  held_.erase(0, emit);
  return out;
}

std::string StopMatcher::finish() { return stopped_ ? std::string() : std::exchange(held_, {}); }

AnswerText::AnswerText(std::optional<ChatFamily> chat, std::vector<std::string> stops) : stops_(std::move(stops)) {
  if (chat) parser_.emplace(*chat);
}

AnswerPiece AnswerText::route(ChatOutputParser::Delta delta, bool last) {
  AnswerPiece piece;
  piece.reasoning = std::move(delta.reasoning);
  piece.content = stops_.feed(delta.answer);
  if (last) piece.content += stops_.finish();
  return piece;
}

AnswerPiece AnswerText::feed(std::string_view text) {
  if (!parser_) return route({{}, std::string(text)}, false);
  return route(parser_->feed(text), false);
}

AnswerPiece AnswerText::finish() { return route(parser_ ? parser_->finish() : ChatOutputParser::Delta{}, true); }

const std::vector<ToolCall>& AnswerText::tool_calls() const { return parser_ ? parser_->tool_calls() : no_calls_; }

nlohmann::json tool_calls_json(const std::vector<ToolCall>& calls, bool streamed) {
  nlohmann::json out = nlohmann::json::array();
  for (std::size_t i = 0; i < calls.size(); ++i) {
    nlohmann::json call = {{"id", "call_" + std::to_string(i)},
                           {"type", "function"},
                           {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (streamed) call["index"] = i;
    out.push_back(std::move(call));
  }
  return out;
}

nlohmann::json assistant_message_json(const std::string& reasoning, const std::string& content,
                                      const std::vector<ToolCall>& calls) {
  nlohmann::json message = {{"role", "assistant"}, {"content", content}};
  if (!reasoning.empty()) message["reasoning_content"] = reasoning;
  if (!calls.empty()) message["tool_calls"] = tool_calls_json(calls, false);
  return message;
}

}  // namespace lightdesk::server
