// Text generation on top of a Session: prompts for document questions and the sample-decode
// loop with streaming text.
#include <algorithm>

#include "lightdesk/text.h"
#include "prompt_encoding.h"

namespace lightdesk {
namespace {

// Where a document's text went in the user message: byte offsets in that message's text.
struct Placement {
  std::size_t begin = 0, end = 0;
  std::vector<std::pair<DocumentAnchor, std::size_t>> anchors;
};

// The user message with each document's text left out, and where that text goes: the text is
// read where the Document holds it, so that it exists once between the file and the tokenizer.
struct QuestionText {
  std::string skeleton;
  std::vector<std::pair<std::size_t, std::string_view>> inserts;  // skeleton offset, text (in order)

  std::string joined() const {
    std::string text;
    std::size_t done = 0;
    for (const auto& [at, insert] : inserts) {
      text.append(skeleton, done, at - done);
      text += insert;
      done = at;
    }
    return text.append(skeleton, done);
  }
};

QuestionText question_text(const std::vector<Document>& documents, const std::string& question,
                           std::vector<Placement>& placements) {
  QuestionText q;
  std::string& text = q.skeleton;
  std::size_t inserted = 0;  // bytes of document text before the end of the skeleton
  auto insert = [&](std::string_view part) {
    q.inserts.emplace_back(text.size(), part);
    inserted += part.size();
  };
  for (const Document& doc : documents) {
    text += "Document: " + doc.path.filename().string() + "\n";
    Placement placement;
    placement.begin = text.size() + inserted;
    std::size_t done = 0;
    const std::string_view doc_text = doc.text;
    for (const DocumentAnchor& anchor : doc.anchors) {
      const std::string_view page = doc_text.substr(done, anchor.offset - done);
      insert(page);
      if ((page.empty() ? text.back() : page.back()) != '\n') text += '\n';
      text += "[page " + std::to_string(anchor.page) + "]\n";
      placement.anchors.emplace_back(anchor, text.size() + inserted);
      done = anchor.offset;
    }
    insert(doc_text.substr(done));
    placement.end = text.size() + inserted;
    placements.push_back(std::move(placement));
    text += "\n\n";
  }
  text += "Question: " + question;
  return q;
}

}  // namespace

std::string document_question_text(const std::vector<Document>& documents, const std::string& question) {
  std::vector<Placement> placements;
  return question_text(documents, question, placements).joined();
}

DocumentPrompt document_prompt(const ChatFormat& format, const Tokenizer& tokenizer,
                               const std::vector<Document>& documents, const std::string& question, int threads,
                               const UserTurnOptions& turn) {
  std::vector<Placement> placements;
  ChatMessage message{ChatMessage::Role::User, {}};
  message.parts.resize(static_cast<std::size_t>(turn.images), ChatPart{ChatPart::Kind::Image, {}, {}});
  const QuestionText text = question_text(documents, question, placements);
  message.parts.push_back({ChatPart::Kind::Text, text.skeleton, {}});
  Conversation conversation;
  if (!turn.system.empty() && !turn.continues)
    conversation.messages.push_back({ChatMessage::Role::System, {{ChatPart::Kind::Text, turn.system, {}}}});
  conversation.messages.push_back(std::move(message));
  const ChatPrompt prompt = turn.continues ? format.render_continuation(conversation) : format.render(conversation);
  // The user's text is the prompt's last untrusted piece (a system message's text comes before
  // it; the image placeholders before it and the generation prompt after it are trusted): its
  // offset places the documents, whose text goes in there.
  std::size_t last_untrusted = 0;
  for (std::size_t i = 0; i < prompt.pieces.size(); ++i)
    if (!prompt.pieces[i].trusted) last_untrusted = i;
  std::size_t message_offset = 0;
  std::vector<PromptTextView> views;
  bool message_seen = false;
  for (std::size_t i = 0; i < prompt.pieces.size(); ++i) {
    const ChatPrompt::Piece& piece = prompt.pieces[i];
    if (i != last_untrusted) {
      if (!message_seen) message_offset += piece.text.size();
      views.push_back({piece.text, piece.trusted});
      continue;
    }
    message_seen = true;
    const std::string_view skeleton = piece.text;
    std::size_t done = 0;
    for (const auto& [at, insert] : text.inserts) {
      views.push_back({skeleton.substr(done, at - done), false});
      views.push_back({insert, false});
      done = at;
    }
    views.push_back({skeleton.substr(done), false});
  }
  DocumentPrompt result;
  result.ids = encode_prompt_text(views, tokenizer, threads);
  // Byte offset at which each token starts in the rendered text (exact for byte-level BPE,
  // whose tokens are the text's bytes; approximate where a normalizer changes the text).
  std::vector<std::size_t> token_starts;
  token_starts.reserve(result.ids.size());
  std::size_t offset = 0;
  for (TokenId id : result.ids) {
    token_starts.push_back(offset);
    offset += tokenizer.token_bytes(id).size();
  }
  auto token_at = [&](std::size_t byte) {
    const auto it = std::upper_bound(token_starts.begin(), token_starts.end(), message_offset + byte);
    return static_cast<std::int64_t>(it - token_starts.begin()) - 1;
  };
  for (std::size_t i = 0; i < documents.size(); ++i) {
    DocumentPrompt::Span span{documents[i].path, token_at(placements[i].begin), token_at(placements[i].end), {}};
    for (const auto& [anchor, byte] : placements[i].anchors) span.anchors.emplace_back(anchor, token_at(byte));
    result.documents.push_back(std::move(span));
  }
  return result;
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
    // The context ends generation too, two positions early: finish_assistant_turn feeds the
    // last id and an end-of-turn token after it.
    if (session.position() + 3 > session.model().info().max_context) break;
    if (i + 1 < options.max_new_tokens) session.feed(std::span(&next, 1));
  }
  if (const std::string rest = decoder.finish(); !rest.empty() && on_text) on_text(rest);
  return generated;
}

void finish_assistant_turn(Session& session, std::span<const TokenId> generated, TokenId end_of_turn) {
  if (!generated.empty()) session.feed(generated.last(1));
  if (generated.empty() || generated.back() != end_of_turn) session.feed(std::span(&end_of_turn, 1));
}

}  // namespace lightdesk
