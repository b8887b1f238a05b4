#include "lightdesk/conversation.h"

#include <algorithm>
#include <string_view>

namespace lightdesk::conversation {
namespace {

bool same_document(const Document& a, const Document& b) {
  return a.path == b.path && a.text == b.text && a.anchors.size() == b.anchors.size() &&
         std::equal(a.anchors.begin(), a.anchors.end(), b.anchors.begin(),
                    [](const DocumentAnchor& x, const DocumentAnchor& y) { return x.offset == y.offset && x.page == y.page; });
}

std::string with_thousands(std::int64_t value) {
  std::string digits = std::to_string(value);
  for (auto i = static_cast<std::ptrdiff_t>(digits.size()) - 3; i > 0; i -= 3)
    digits.insert(static_cast<std::size_t>(i), ",");
  return digits;
}

}  // namespace

bool operator==(const Turn& a, const Turn& b) {
  return a.from_user == b.from_user && a.text == b.text && a.images == b.images &&
         std::equal(a.documents.begin(), a.documents.end(), b.documents.begin(), b.documents.end(), same_document);
}

std::string prompt_text(const Turn& turn) {
  return turn.from_user ? document_question_text(turn.documents, turn.text) : turn.text;
}

Conversation to_chat(std::span<const Turn> turns, const std::string& system_prompt) {
  Conversation chat;
  if (!system_prompt.empty())
    chat.messages.push_back({ChatMessage::Role::System, {{ChatPart::Kind::Text, system_prompt, {}}}});
  for (const Turn& turn : turns) {
    ChatMessage message{turn.from_user ? ChatMessage::Role::User : ChatMessage::Role::Assistant, {}};
    message.parts.resize(turn.images.size(), ChatPart{ChatPart::Kind::Image, {}, {}});
    message.parts.push_back({ChatPart::Kind::Text, prompt_text(turn), {}});
    chat.messages.push_back(std::move(message));
  }
  return chat;
}

ReadDocument read_document(const std::filesystem::path& path, const Tokenizer& tokenizer, std::int64_t context_tokens,
                           const CountProgress& progress, std::size_t slice_bytes) {
  ReadDocument read{load_document(path), 0};
  const std::string_view text = read.document.text;
  // Slices end after a line break, where the pre-tokenizer splits anyway, so that their counts
  // add up to the whole text's (a line longer than a slice is cut where the slice ends).
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = std::min(text.size(), begin + slice_bytes);
    if (end < text.size()) {
      const std::size_t line_end = text.rfind('\n', end);
      if (line_end != std::string_view::npos && line_end > begin) end = line_end + 1;
    }
    read.tokens += static_cast<std::int64_t>(tokenizer.encode(text.substr(begin, end - begin)).size());
    begin = end;
    if (context_tokens > 0 && read.tokens > context_tokens)
      throw Error(path.filename().string() + " has more than " + with_thousands(read.tokens) +
                  " tokens: it does not fit the model's context of " + with_thousands(context_tokens) + " tokens");
    if (progress && !progress(static_cast<std::int64_t>(begin), static_cast<std::int64_t>(text.size())))
      throw Cancelled("stopped by the user");
  }
  return read;
}

Chat::Chat(Model& model, const Tokenizer& tokenizer, const ChatFormat& format, vision::VisionModel* vision,
           int threads)
    : model_(model),
      tokenizer_(tokenizer),
      format_(format),
      vision_(vision),
      threads_(threads),
      session_(model.create_session()) {}

Chat::Prompt Chat::prepare(std::span<const Turn> turns, std::int64_t owner, const std::string& system_prompt) {
  if (unfinished_ && unfinished_->owner == owner && unfinished_->system_prompt == system_prompt &&
      std::equal(turns.begin(), turns.end(), unfinished_->turns.begin(), unfinished_->turns.end())) {
    // A stopped read of the same prompt: the session holds its first positions.
    const std::int64_t read = session_->position() - unfinished_->base;
    const std::vector<TokenId>& held_tokens = session_->tokens();
    if (read >= 0 && read < static_cast<std::int64_t>(unfinished_->tokens.size()) &&
        std::equal(held_tokens.end() - read, held_tokens.end(), unfinished_->tokens.begin())) {
      Prompt rest;
      rest.tokens.assign(unfinished_->tokens.begin() + read, unfinished_->tokens.end());
      rest.reused = session_->position();
      rest.kv_saved = unfinished_->kv_saved;
      kv_saved_ = rest.kv_saved;
      return rest;
    }
  }
  unfinished_.reset();
  // The system prompt opens the state: under another one nothing of it can be reused. (A state of
  // unknown turns was checked by whoever restored it.)
  const bool continues =
      (held_unknown_ && session_->position() > 0) ||
      (!held_.empty() && held_system_ == system_prompt && turns.size() > held_.size() &&
       std::equal(held_.begin(), held_.end(), turns.begin()));
  const std::span<const Turn> fed = continues && !held_unknown_ ? turns.subspan(held_.size()) : turns;
  Prompt prompt;
  for (const Turn& turn : fed) {
    if (!turn.images.empty() && vision_ == nullptr)
      throw Error("this model cannot read images: open a MiniMax-VL-01 model for them");
    for (const auto& image : turn.images) prompt.image_rows.push_back(image_rows(image));
  }
  // One new question (the usual turn) is rendered by document_prompt, which also says where its
  // documents lie; the same text as to_chat's.
  std::vector<TokenId> rendered;
  if (fed.size() == 1 && fed.front().from_user) {
    DocumentPrompt single = document_prompt(format_, tokenizer_, fed.front().documents, fed.front().text, threads_,
                                            {static_cast<int>(fed.front().images.size()), continues,
                                             continues ? std::string() : system_prompt});
    rendered = std::move(single.ids);
    prompt.documents = std::move(single.documents);
  } else {
    const Conversation chat = to_chat(fed, continues ? std::string() : system_prompt);
    rendered = (continues ? format_.render_continuation(chat) : format_.render(chat)).encode(tokenizer_, threads_);
  }
  const std::int64_t reused = continues ? session_->position() : 0;
  const std::int64_t context = model_.info().max_context;
  if (reused + static_cast<std::int64_t>(rendered.size()) >= context)
    throw Error("the conversation (" + with_thousands(reused + static_cast<std::int64_t>(rendered.size())) +
                " tokens) does not fit the model's context of " + with_thousands(context) + " tokens");
  // Checked before anything changes: a refused prompt leaves the state and what it holds.
  const bool owner_saved = continues && !held_unknown_ && held_state_saved_ && held_owner_ == owner;
  if (!continues) session_->reset();
  held_.clear();
  held_unknown_ = false;
  if (prompt.image_rows.empty()) {
    prompt.tokens = rendered;
  } else {
    vision::MultimodalInput input = vision::expand_image_placeholders(
        rendered, *format_.image_token(), prompt.image_rows, static_cast<int>(model_.info().hidden_size));
    prompt.tokens = std::move(input.tokens);
    prompt.embedding_overrides = std::move(input.embedding_overrides);
  }
  prompt.reused = reused;
  // Into session positions: the images come first in the turn, so each moves the documents by its
  // rows less its placeholder.
  const std::int64_t shift = reused + static_cast<std::int64_t>(prompt.tokens.size() - rendered.size());
  for (DocumentPrompt::Span& span : prompt.documents) {
    span.first_token += shift;
    span.end_token += shift;
    for (auto& anchor : span.anchors) anchor.second += shift;
  }
  // A prompt with images is read again whole after a stop (its rows are not kept).
  if (prompt.image_rows.empty())
    unfinished_ = Unfinished{{turns.begin(), turns.end()}, owner, system_prompt, reused, prompt.tokens, 0};
  // The owner keeps the K/V of the held positions already: the answer's state to save needs
  // only its own (for a long session nearly all of the state is the earlier K/V). Another
  // conversation's saved state, continued because its turns are the same, is not its owner's.
  prompt.kv_saved = owner_saved ? reused : 0;
  kv_saved_ = prompt.kv_saved;
  if (unfinished_) unfinished_->kv_saved = prompt.kv_saved;
  held_owner_ = owner;
  held_system_ = system_prompt;
  return prompt;
}

void Chat::finish(std::span<const Turn> turns, const std::string& answer, const std::vector<TokenId>& generated) {
  unfinished_.reset();
  finish_assistant_turn(*session_, generated, format_.end_of_turn());
  held_.assign(turns.begin(), turns.end());
  held_.push_back({false, answer, {}, {}});
  held_state_saved_ = true;  // the owner saves it; forget_saved_state() says when that failed
}

EngineState::Streamed Chat::stream_state() const {
  return EngineState::stream_of(*session_, kv_saved_, held_system_);
}

void Chat::adopt(const SavedState& state, std::vector<Turn> held, std::int64_t owner, const std::string& system_prompt) {
  forget_held_turns();
  state.import_into(*session_, system_prompt);
  held_ = std::move(held);
  held_owner_ = owner;
  held_system_ = system_prompt;
  held_state_saved_ = true;
}

void Chat::continue_unknown_turns() {
  held_.clear();
  unfinished_.reset();
  held_unknown_ = true;
}

void Chat::forget_held_turns() {
  held_.clear();
  unfinished_.reset();
  held_unknown_ = false;
}

const std::vector<float>& Chat::image_rows(const std::filesystem::path& path) {
  auto found = image_rows_.find(path);
  if (found == image_rows_.end()) {
    const vision::PreparedImage image = vision::prepare_image(vision::decode_image_file(path), vision_->config().anyres);
    found = image_rows_.emplace(path, vision_->image_embeddings(image)).first;
  }
  return found->second;
}

void PrefillEstimate::add(std::int64_t done, double seconds) {
  if (done <= done_ || seconds <= 0) return;
  done_ = done;
  seconds_ = seconds;
  const double n = static_cast<double>(done);
  const double c = constant_part(n), g = growing_part(n);
  cc_ += c * c;
  cg_ += c * g;
  gg_ += g * g;
  cs_ += c * seconds;
  gs_ += g * seconds;
  ++reports_;
}

double PrefillEstimate::seconds_left() const {
  if (reports_ < 2) return -1;
  const double total = static_cast<double>(total_), done = static_cast<double>(done_);
  const double determinant = cc_ * gg_ - cg_ * cg_;
  double a = 0, b = 0;
  if (determinant > 1e-12 * cc_ * gg_) {
    a = (cs_ * gg_ - gs_ * cg_) / determinant;
    b = (cc_ * gs_ - cg_ * cs_) / determinant;
  }
  // Noisy early reports can fit a cost that falls: then the mean rate so far is the better guess.
  if (a < 0 || b < 0) return seconds_ / done * (total - done);
  return std::max(0.0, a * (constant_part(total) - constant_part(done)) + b * (growing_part(total) - growing_part(done)));
}

}  // namespace lightdesk::conversation
