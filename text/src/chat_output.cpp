// Splits an assistant turn into reasoning, answer and tool calls while it streams in. Text that
// could be the beginning of a tag is held back until the next chunk decides.
#include <nlohmann/json.hpp>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolCallsOpen = "<tool_calls>";    // M1
constexpr std::string_view kToolCallsClose = "</tool_calls>";  // M1
constexpr std::string_view kFunctionCall = "<function_call>";  // Text-01 / VL-01
// A Text-01 call is a fenced block: ```typescript\nfunctions.NAME({...})\n```
constexpr std::string_view kFenceOpen = "```typescript\n";
constexpr std::string_view kFenceClose = "\n```";

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
std::size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (std::size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

// M1: one {"name": ..., "arguments": {...}} object per line.
void parse_m1_calls(const std::string& body, std::vector<ToolCall>& calls) {
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string::npos) end = body.size();
    const std::string line = body.substr(pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto parsed = nlohmann::json::parse(line, nullptr, false);
    if (parsed.is_object() && parsed.contains("name") && parsed["name"].is_string())
      calls.push_back({parsed["name"].get<std::string>(),
                       parsed.contains("arguments") ? parsed["arguments"].dump() : std::string("{}")});
    else
      calls.push_back({"", line});  // kept so the caller can report what the model wrote
  }
}

// Text-01: ```typescript\nfunctions.NAME(ARGUMENTS)\n```
void parse_text01_call(const std::string& body, std::vector<ToolCall>& calls) {
  std::string code = body;
  if (code.rfind(kFenceOpen, 0) == 0) code.erase(0, kFenceOpen.size());
  if (const auto close = code.rfind(kFenceClose); close != std::string::npos) code.erase(close);
  const std::string_view prefix = "functions.";
  const auto name_at = code.find(prefix);
  const auto open = code.find('(', name_at == std::string::npos ? 0 : name_at);
  const auto close = code.rfind(')');
  if (name_at == std::string::npos || open == std::string::npos || close == std::string::npos || close < open) {
    calls.push_back({"", body});
    return;
  }
  const std::size_t name_begin = name_at + prefix.size();
  calls.push_back({code.substr(name_begin, open - name_begin), code.substr(open + 1, close - open - 1)});
}

}  // namespace

ChatOutputParser::Delta ChatOutputParser::feed(std::string_view text) {
  Delta delta;
  route(text, delta);
  return delta;
}

ChatOutputParser::Delta ChatOutputParser::finish() {
  Delta delta;
  std::string rest = std::move(held_);
  held_.clear();
  if (state_ == State::ToolCalls) {
    tool_text_ += rest;
    close_tool_calls();
  } else {
    (state_ == State::Reasoning ? delta.reasoning : delta.answer) += rest;
    (state_ == State::Reasoning ? reasoning_ : answer_) += rest;
  }
  state_ = State::Answer;
  return delta;
}

void ChatOutputParser::route(std::string_view text, Delta& delta) {
  held_ += text;
  while (!held_.empty()) {
    // The tags that end the current state, and the state each leads to.
    struct Transition {
      std::string_view tag;
      State next;
    };
    std::vector<Transition> transitions;
    switch (state_) {
      case State::Answer:
        transitions.push_back({kThinkOpen, State::Reasoning});
        transitions.push_back({family_ == ChatFamily::M1 ? kToolCallsOpen : kFunctionCall, State::ToolCalls});
        break;
      case State::Reasoning:
        transitions.push_back({kThinkClose, State::Answer});
        break;
      case State::ToolCalls:
        if (family_ == ChatFamily::M1) {
          transitions.push_back({kToolCallsClose, State::Answer});
        } else {
          // The block ends with the fence that closes ```typescript.
          tool_text_ += held_;
          held_.clear();
          const std::size_t search_from = tool_text_.rfind(kFenceOpen, 0) == 0 ? kFenceOpen.size() : 0;
          const std::size_t close = tool_text_.find(kFenceClose, search_from);
          if (close == std::string::npos) return;
          held_ = tool_text_.substr(close + kFenceClose.size());
          tool_text_.erase(close + kFenceClose.size());
          close_tool_calls();
          state_ = State::Answer;
          continue;
        }
        break;
    }
    std::size_t best_at = std::string::npos;
    const Transition* best = nullptr;
    for (const Transition& t : transitions) {
      const std::size_t at = held_.find(t.tag);
      if (at < best_at) {
        best_at = at;
        best = &t;
      }
    }
    std::size_t emit = held_.size();
    if (best) {
      emit = best_at;
    } else {
      for (const Transition& t : transitions) emit = std::min(emit, held_.size() - partial_tag_suffix(held_, t.tag));
    }
    const std::string_view out = std::string_view(held_).substr(0, emit);
    switch (state_) {
      case State::Answer:
        delta.answer += out;
        answer_ += out;
        break;
      case State::Reasoning:
        delta.reasoning += out;
        reasoning_ += out;
        break;
      case State::ToolCalls:
        tool_text_ += out;
        break;
    }
    if (!best) {
      held_.erase(0, emit);
      return;
    }
    held_.erase(0, best_at + best->tag.size());
    if (state_ == State::ToolCalls) close_tool_calls();
    state_ = best->next;
  }
}

void ChatOutputParser::close_tool_calls() {
  if (family_ == ChatFamily::M1)
    parse_m1_calls(tool_text_, tool_calls_);
  else
    parse_text01_call(tool_text_, tool_calls_);
  tool_text_.clear();
}

}  // namespace lightdesk
