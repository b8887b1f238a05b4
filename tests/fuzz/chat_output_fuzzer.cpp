// The assistant-turn parser (<think> reasoning, M1 <tool_calls>, Text-01 <function_call>): the
// first byte picks the family and the chunk size, the rest is the model's text. The text fed in
// chunks must parse as it does fed whole, and the deltas must add up to the parsed text.
#include <algorithm>

#include "fuzz_util.h"
#include "lightdesk/text.h"

using namespace lightdesk;

namespace {

struct Parsed {
  std::string reasoning, answer;  // as the deltas streamed them
  ChatOutputParser parser;
};

void parse(Parsed& out, std::string_view text, std::size_t chunk) {
  auto add = [&](const ChatOutputParser::Delta& delta) {
    out.reasoning += delta.reasoning;
    out.answer += delta.answer;
  };
  for (std::size_t at = 0; at < text.size(); at += chunk) add(out.parser.feed(text.substr(at, chunk)));
  add(out.parser.finish());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const ChatFamily family = data[0] % 2 == 0 ? ChatFamily::M1 : ChatFamily::Text01;
  const std::size_t chunk = 1 + data[0] / 2 % 16;
  const std::string_view text = fuzz::as_text(data + 1, size - 1);

  Parsed whole{{}, {}, ChatOutputParser(family)}, chunked{{}, {}, ChatOutputParser(family)};
  parse(whole, text, std::max<std::size_t>(text.size(), 1));
  parse(chunked, text, chunk);
  for (const Parsed* p : {&whole, &chunked}) {
    fuzz::check(p->reasoning == p->parser.reasoning() && p->answer == p->parser.answer(),
                "the deltas add up to the parsed reasoning and answer");
  }
  fuzz::check(whole.parser.reasoning() == chunked.parser.reasoning() && whole.parser.answer() == chunked.parser.answer(),
              "text fed in chunks parses as the whole text does");
  const auto& a = whole.parser.tool_calls();
  const auto& b = chunked.parser.tool_calls();
  fuzz::check(a.size() == b.size(), "text fed in chunks has the whole text's tool calls");
  for (std::size_t i = 0; i < a.size(); ++i)
    fuzz::check(a[i].name == b[i].name && a[i].arguments == b[i].arguments,
                "text fed in chunks has the whole text's tool calls");
  return 0;
}
