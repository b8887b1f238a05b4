// Text generation on top of a Session: prompt building for document questions and the
// sample-decode loop with streaming text.
#include "lightdesk/text.h"

namespace lightdesk {

Conversation document_question(const std::vector<Document>& documents, const std::string& question) {
  std::string text;
  for (const Document& doc : documents) {
    text += "Document: " + doc.path.filename().string() + "\n";
    std::size_t done = 0;
    for (const DocumentAnchor& anchor : doc.anchors) {
      text.append(doc.text, done, anchor.offset - done);
      if (!text.empty() && text.back() != '\n') text += '\n';
      text += "[page " + std::to_string(anchor.page) + "]\n";
      done = anchor.offset;
    }
    text.append(doc.text, done);
    text += "\n\n";
  }
  text += "Question: " + question;
  Conversation conversation;
  conversation.messages.push_back({ChatMessage::Role::User, {ChatPart{ChatPart::Kind::Text, std::move(text), {}}}});
  return conversation;
}

std::vector<TokenId> generate_text(Session& session, const Tokenizer& tokenizer, std::span<const TokenId> prompt,
                                   const GenerationOptions& options,
                                   const std::function<void(std::string_view)>& on_text) {
  session.feed(prompt, options.prefill);
  TokenStreamDecoder decoder(tokenizer);
  std::vector<TokenId> generated;
  for (std::int64_t i = 0; i < options.max_new_tokens; ++i) {
    const TokenId next = session.sample(options.sampling);
    generated.push_back(next);
    if (options.stop_token && next == *options.stop_token) break;
    if (const std::string text = decoder.feed(next); !text.empty() && on_text) on_text(text);
    if (i + 1 < options.max_new_tokens) session.feed(std::span(&next, 1));
  }
  if (const std::string rest = decoder.finish(); !rest.empty() && on_text) on_text(rest);
  return generated;
}

}  // namespace lightdesk
