// The conversation logic every front end shares (the desktop app, lightdesk-cli ask, a server):
// the turns of a conversation with the documents and images sent along, rendered in the model's
// chat format; the session's state reused for the turns it already holds (only what follows is
// fed); a saved state continued; documents read and counted for the model's context. No Qt: the
// front ends put their own threads and widgets around it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/engine_state.h"
#include "lightdesk/text.h"
#include "lightdesk/vision.h"

namespace lightdesk::conversation {

// One message of a conversation: a question with the documents and images sent along, or an
// answer.
struct Turn {
  bool from_user = true;
  std::string text;                                // the question as typed, or the answer
  std::vector<Document> documents;                 // a question's documents
  std::vector<std::filesystem::path> images;       // a question's images, placed before its text
};
bool operator==(const Turn& a, const Turn& b);

// The text the model reads for `turn`: a question in the document-question layout of
// document_question_text (its documents as "Document: NAME" blocks, PDF pages marked, then
// "Question: ..."), the same for every front end; an answer as it is.
std::string prompt_text(const Turn& turn);
// The turns as a chat of the model's format (one image part per image, then the text), after a
// system message of `system_prompt` unless it is empty.
Conversation to_chat(std::span<const Turn> turns, const std::string& system_prompt = {});

// A document read and its tokens counted.
struct ReadDocument {
  Document document;
  std::int64_t tokens = 0;
};
// Progress of read_document's count: bytes of the text counted of `total`; returning false stops
// the count (read_document then throws Cancelled).
using CountProgress = std::function<bool(std::int64_t bytes_done, std::int64_t bytes_total)>;
// Reads `path` (load_document) and counts its tokens in slices of about `slice_bytes` cut at line
// ends, reporting progress after each; a file whose tokens exceed `context_tokens` is refused with
// an Error naming both counts (it could never be sent), as soon as the count passes it.
ReadDocument read_document(const std::filesystem::path& path, const Tokenizer& tokenizer, std::int64_t context_tokens,
                           const CountProgress& progress = {}, std::size_t slice_bytes = std::size_t{1} << 20);

// A chat over one engine Session: renders the turns, reuses the session's state for the turns it
// holds and records what it holds after each answer. The model, tokenizer, format and vision
// tower (null for a model without one) must outlive it.
class Chat {
 public:
  // `threads`: for tokenizing a long prompt (0: all hardware threads).
  Chat(Model& model, const Tokenizer& tokenizer, const ChatFormat& format, vision::VisionModel* vision,
       int threads = 0);

  Session& session() { return *session_; }
  const ChatFormat& format() const { return format_; }

  // The prompt of the next answer: what is fed after the `reused` positions the session keeps.
  struct Prompt {
    std::vector<TokenId> tokens;
    // One per token: an image's input row at its placeholders (pointing into `image_rows`), else
    // null. A moved Prompt keeps them valid.
    std::vector<const float*> embedding_overrides;
    std::vector<std::vector<float>> image_rows;
    // Where each document of a single new question lies, in session positions (where an answer
    // can point back to); empty when the prompt holds more than one turn.
    std::vector<DocumentPrompt::Span> documents;
    std::int64_t reused = 0;    // positions of the session's state the answer continues
    // The positions whose K/V the state's owner has saved already (a state to save after this
    // answer needs only the later ones: EngineState::copy_of's kv_first).
    std::int64_t kv_saved = 0;
  };
  // Makes the session ready to answer `turns` (ending with a question) of conversation `owner`
  // (any id the front end gives its conversations) under `system_prompt` (empty: none; the chat
  // format's system message before the first turn): turns that continue the ones the state
  // holds under the same system prompt feed only themselves; the same turns again after a
  // prompt read was stopped feed only what the stopped read left; anything else (another
  // conversation, an edited message, a stopped answer, another system prompt) starts from an
  // empty state. Throws Error for images without a vision tower and for a prompt that leaves no
  // room in the model's context. The state is forgotten until finish().
  Prompt prepare(std::span<const Turn> turns, std::int64_t owner, const std::string& system_prompt = {});
  // After the answer to prepare()'s turns: closes the turn in the session (`generated`: the ids
  // the model wrote) and records that the state holds `turns` and `answer`.
  void finish(std::span<const Turn> turns, const std::string& answer, const std::vector<TokenId>& generated);
  // The state after finish(), to save, streamed from the session (EngineState::stream_of): the
  // K/V of the positions from Prompt::kv_saved on, the owner having the earlier ones.
  EngineState::Streamed stream_state() const;
  // Takes `state` (saved after `held`, in conversation `owner`, under `system_prompt`) as the
  // session's state. Throws the state's reason when it cannot be used (a state computed with
  // another system prompt among them; the session then holds nothing reusable).
  void adopt(const SavedState& state, std::vector<Turn> held, std::int64_t owner, const std::string& system_prompt = {});
  // The session's state (a stored session the command line restored) holds turns not known here:
  // the next prepare() continues it whatever its turns (they are all new).
  void continue_unknown_turns();
  // A state handed out for saving may not have been saved (a write failed): the next finished
  // turn's state is copied whole.
  void forget_saved_state() { held_state_saved_ = false; }
  // Forgets what the state holds (a model reload, a stopped answer).
  void forget_held_turns();
  const std::vector<Turn>& held_turns() const { return held_; }

 private:
  // The rows of an image for the model, computed once per path.
  const std::vector<float>& image_rows(const std::filesystem::path& path);

  Model& model_;
  const Tokenizer& tokenizer_;
  const ChatFormat& format_;
  vision::VisionModel* vision_;
  int threads_;
  std::unique_ptr<Session> session_;
  // The input rows of each image read so far (a conversation read again after a restart or an
  // edit shows them again).
  std::map<std::filesystem::path, std::vector<float>> image_rows_;
  // The turns whose answers session_ holds complete; empty when its state is anything else.
  std::vector<Turn> held_;
  bool held_unknown_ = false;  // continue_unknown_turns()
  // The conversation those turns belong to, and whether its owner holds their state (adopted
  // from it, or handed out by finish() to be saved).
  std::int64_t held_owner_ = 0;
  std::string held_system_;  // the system prompt the state began with
  bool held_state_saved_ = false;
  std::int64_t kv_saved_ = 0;  // the last Prompt's
  // The last prepared prompt until its answer is finished: if its read is stopped, the session
  // keeps the positions read and sending the same turns again goes on from there.
  struct Unfinished {
    std::vector<Turn> turns;
    std::int64_t owner = 0;
    std::string system_prompt;
    std::int64_t base = 0;  // the session's position before the prompt
    std::vector<TokenId> tokens;
    std::int64_t kv_saved = 0;
  };
  std::optional<Unfinished> unfinished_;
};

// Time left of a prompt read, from the progress so far. Each token costs more the further into
// the context it lands (softmax layers attend to every earlier position): the cost of a token at
// position p is taken as a + b*p, fitted to the progress reports by least squares.
class PrefillEstimate {
 public:
  // The read starts at session position `start` and feeds `total` tokens.
  PrefillEstimate(std::int64_t start, std::int64_t total) : start_(start), total_(total) {}
  // `done` tokens read after `seconds`.
  void add(std::int64_t done, double seconds);
  // Seconds until all `total` tokens are read; negative until two reports are in.
  double seconds_left() const;

 private:
  // Cost of the first n tokens of the read in units of a and b.
  double constant_part(double n) const { return n; }
  double growing_part(double n) const { return static_cast<double>(start_) * n + n * n / 2; }

  std::int64_t start_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  double seconds_ = 0;
  // Sums of the normal equations of seconds = a*constant_part + b*growing_part.
  double cc_ = 0, cg_ = 0, gg_ = 0, cs_ = 0, gs_ = 0;
  int reports_ = 0;
};

}  // namespace lightdesk::conversation
