// Lightdesk text: tokenizers, the MiniMax conversation formats and document loading. Part of the
// engine's public API beside engine.h (library lightdesk_text); no Qt, no network.
//
// The rule that runs through it: text from users and documents never becomes a special token.
// Tokenizer::encode treats special-token strings in its input as plain text; only the chat
// renderer produces special ids, through ChatPrompt's special pieces.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk {

// ---- UTF-8 ----

// `bytes` with every invalid UTF-8 sequence replaced by U+FFFD (one per maximal invalid
// subpart, as Python's and Rust's lossy decoders do).
std::string sanitize_utf8(std::string_view bytes);

// ---- Tokenizer ----

class Tokenizer {
 public:
  // Reads the tokenizer of a model directory: tokenizer.json (Hugging Face byte-level BPE) when
  // there is one, else tokenizer.model (SentencePiece). Throws Error naming the file and field
  // when it is missing or of a kind not supported.
  static std::unique_ptr<Tokenizer> open(const std::filesystem::path& model_directory);

  virtual ~Tokenizer() = default;

  // Ids of user or document text. Special-token strings in it stay text (Hugging Face's
  // encode_special_tokens = true); invalid UTF-8 is read as U+FFFD. Byte-level BPE splits large
  // texts at pre-tokenizer boundaries, SentencePiece where its model's merges cannot cross (see
  // sentencepiece_tokenizer.cpp), and both encode the pieces on `threads` threads (0 = all
  // hardware threads); the ids are those of one pass whatever the thread count.
  virtual std::vector<TokenId> encode(std::string_view text, int threads = 0) const = 0;
  // encode() of the concatenation of `parts`. SentencePiece reads the parts where they lie and
  // copies only short stretches around the joins; byte-level BPE joins them first.
  virtual std::vector<TokenId> encode_joined(std::span<const std::string_view> parts, int threads = 0) const;
  // Ids of trusted text (what the chat renderer writes): special-token strings become their ids.
  virtual std::vector<TokenId> encode_with_special(std::string_view text) const = 0;

  // The bytes a token stands for (possibly part of a UTF-8 character). Throws Error for an id
  // outside the vocabulary.
  virtual std::string token_bytes(TokenId id) const = 0;
  // Id of an added (special) token given its text, e.g. "<end_of_sentence>".
  virtual std::optional<TokenId> special_token_id(std::string_view content) const = 0;
  virtual bool is_special(TokenId id) const = 0;
  // The contents of all special tokens.
  virtual std::vector<std::string> special_tokens() const = 0;
  // Ids are 0 .. vocab_size()-1 (including added tokens).
  virtual int vocab_size() const = 0;
  // SentencePiece's dummy prefix: encoding put a space before the text that decoding removes.
  virtual bool drops_leading_space() const { return false; }

  // The text of `ids`, invalid UTF-8 replaced by U+FFFD; special tokens are kept as their text.
  std::string decode(std::span<const TokenId> ids) const;
};

// Turns tokens into text one token at a time, emitting only complete UTF-8 characters: a
// character split over several tokens comes out with its last byte.
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Text completed by this token (possibly empty).
  std::string feed(TokenId id);
  // Whatever is left at the end, an incomplete character as U+FFFD.
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // bytes of an incomplete character
  bool started_ = false;  // a token was fed already
};

// ---- Chat format ----

// MiniMax-M1, or MiniMax-Text-01 / VL-01 (same role strings).
enum class ChatFamily { M1, Text01 };

struct ChatPart {
  enum class Kind { Text, Image };
  Kind kind = Kind::Text;
  std::string text;  // Text
  std::string name;  // tool results: the tool's name
};

struct ChatMessage {
  enum class Role { System, User, Assistant, Tool };
  Role role = Role::User;
  std::vector<ChatPart> parts;
};

struct Conversation {
  std::vector<ChatMessage> messages;
  // Tool definitions, each a JSON object as text (re-serialised the way the templates do).
  std::vector<std::string> tools;
  bool add_generation_prompt = true;
};

// A rendered conversation: the template's own text (trusted: the special-token strings in it
// become special ids) apart from the text of messages and tools (never special), so that text a
// user wrote can never become a special token.
struct ChatPrompt {
  struct Piece {
    std::string text;
    bool trusted = false;
  };
  std::vector<Piece> pieces;

  std::string to_string() const;  // what the published template renders
  // The ids a tokenizer gives to_string() with special tokens matched only in trusted pieces:
  // the text between special tokens is encoded as one run, as `tokenizers` does.
  std::vector<TokenId> encode(const Tokenizer& tokenizer, int threads = 0) const;
};

struct SamplingDefaults {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;
};

class ChatFormat {
 public:
  // Reads tokenizer_config.json (bos/eos tokens, chat template) and config.json of a model
  // directory; `tokenizer` must know every special token the format uses. The family follows
  // the published template when present, else config.json's model_type. Throws Error naming the
  // missing token or field.
  static ChatFormat for_model(const std::filesystem::path& model_directory, const Tokenizer& tokenizer);
  ChatFormat(ChatFamily family, const Tokenizer& tokenizer, std::string bos_token, std::string eos_token);

  ChatFamily family() const { return family_; }
  ChatPrompt render(const Conversation& conversation) const;
  // The turns that continue a conversation whose ids end with an assistant turn's end_of_turn()
  // token (as generated): the newline that closes that turn, then `conversation`'s messages and
  // the generation prompt. Appended to the earlier ids, it gives the ids render() gives the whole
  // conversation (its assistant turns as the ids the model generated, which re-encoding their
  // text need not give back). What a render places at the conversation's start or end rather than in turn
  // order (tool definitions; M1's system messages) cannot be continued: Error.
  ChatPrompt render_continuation(const Conversation& conversation) const;
  TokenId end_of_turn() const { return end_of_turn_; }
  // The "<image>" placeholder's id, if the tokenizer has one. for_model checks that it is the
  // image_token_index of a VL-01 config.json.
  std::optional<TokenId> image_token() const { return image_token_; }
  // The model family's recommended interactive sampling (M1: T 1.0, top-p 0.95; Text-01: greedy).
  SamplingDefaults sampling_defaults() const;

 private:
  ChatPrompt render(const Conversation& conversation, bool continues) const;

  ChatFamily family_;
  std::string bos_, eos_;
  TokenId end_of_turn_;
  std::optional<TokenId> image_token_;  // images need "<image>" (Text-01 / VL-01)
};

// What the model said in an assistant turn, separated as it streams in: M1's <think> reasoning,
// the answer, and tool calls (M1 <tool_calls> JSON lines, Text-01 <function_call> calls). Tags
// may arrive split over any number of chunks.
struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text as the model wrote it
};

class ChatOutputParser {
 public:
  explicit ChatOutputParser(ChatFamily family) : family_(family) {}

  struct Delta {
    std::string reasoning;
    std::string answer;
  };
  // Feeds decoded text; returns the reasoning and answer text now known to be complete.
  Delta feed(std::string_view text);
  // End of the turn: flushes held-back text and parses the tool calls.
  Delta finish();

  const std::string& reasoning() const { return reasoning_; }
  const std::string& answer() const { return answer_; }
  const std::vector<ToolCall>& tool_calls() const { return tool_calls_; }

 private:
  enum class State { Answer, Reasoning, ToolCalls };
  void route(std::string_view text, Delta& delta);
  void close_tool_calls();

  ChatFamily family_;
  State state_ = State::Answer;
  std::string held_;        // text that may be the start of a tag
  std::string tool_text_;   // body of the current tool-call block
  std::string reasoning_, answer_;
  std::vector<ToolCall> tool_calls_;
};

// ---- Documents ----

// A place in a document's text that a citation can point to.
struct DocumentAnchor {
  std::size_t offset = 0;  // byte offset in Document::text
  int page = 0;            // 1-based for PDF pages; 0 for text
  int line = 0;            // 1-based line in the page (or file)
};

struct Document {
  std::filesystem::path path;
  std::string format;  // "text", "html", "pdf"
  std::string text;    // valid UTF-8
  // PDF: one anchor at the start of every page; text: none (lines are counted from offsets).
  std::vector<DocumentAnchor> anchors;
  // Empty, or one line that front ends show the user: the file gave less text than it should
  // have (PDF pages without text, an HTML file that is nearly all markup).
  std::string notice;
};

// Bytes of document text that `tokens` tokens can hold at most: no token of the supported
// vocabularies stands for more. A front end passes what is left of the model's context.
inline constexpr std::uint64_t kDocumentBytesPerToken = 32;
std::uint64_t document_byte_limit(std::int64_t tokens);
// The limit when no model says otherwise.
inline constexpr std::uint64_t kMaxDocumentBytes = std::uint64_t{256} << 20;
// A PDF file's own limit: its bytes are mostly not text (fonts, images).
inline constexpr std::uint64_t kMaxPdfFileBytes = std::uint64_t{1} << 30;

// Loads plain text, Markdown or source code (UTF-8; UTF-16 and UTF-32 with a BOM or recognised
// by their zero bytes; text that is not valid UTF-8 is read as UTF-8 with U+FFFD for the damage
// when most of its non-ASCII bytes are valid UTF-8, else as Latin-1), HTML (*.html, *.htm: text
// with headings, lists and paragraphs kept as Markdown-like lines) or a PDF (text per page).
// Only a regular file is read. Throws Error naming the file for unreadable, broken or encrypted
// files, binary data, a document that yields no text, and text (or a text file) larger than
// `max_text_bytes`.
Document load_document(const std::filesystem::path& path, std::uint64_t max_text_bytes = kMaxDocumentBytes);

// ---- Generation ----

// The user-message text document_prompt renders: each document under a "Document: NAME" line,
// PDF pages marked "[page N]", then "Question: ...". For front ends that keep a conversation of
// several turns and render it whole.
std::string document_question_text(const std::vector<Document>& documents, const std::string& question);

// A conversation of one user turn asking `question` about `documents` (each under a
// "Document: NAME" line, PDF pages marked "[page N]" so that answers can cite them, then
// "Question: ..."), encoded in the model's chat format, with the token span of every document
// and the token each of its anchors falls in: where an answer can point back to.
struct DocumentPrompt {
  struct Span {
    std::filesystem::path path;
    std::int64_t first_token = 0;  // the document's text is in tokens [first_token, end_token)
    std::int64_t end_token = 0;
    std::vector<std::pair<DocumentAnchor, std::int64_t>> anchors;  // anchor, token it starts in
  };
  std::vector<TokenId> ids;
  std::vector<Span> documents;
};
// Where document_prompt's user turn goes and what it holds besides text.
struct UserTurnOptions {
  // Images shown with the question: one image placeholder each before the text (positions in
  // DocumentPrompt count each as one token until vision::expand_image_placeholders expands it).
  int images = 0;
  // The turn continues a conversation that ends with an assistant turn (render_continuation).
  bool continues = false;
  // A system message before the turn (empty: none); a continued turn has its system message
  // in what it continues already.
  std::string system;
};
DocumentPrompt document_prompt(const ChatFormat& format, const Tokenizer& tokenizer,
                               const std::vector<Document>& documents, const std::string& question,
                               int threads = 0, const UserTurnOptions& turn = {});

struct GenerationOptions {
  std::int64_t max_new_tokens = 256;
  SamplingParams sampling;            // greedy by default, so runs repeat
  std::optional<TokenId> stop_token;  // e.g. ChatFormat::end_of_turn(); not emitted
  FeedOptions prefill;                // chunk size and progress of the prompt's prefill
};

// Feeds `prompt` to the session, then samples up to max_new_tokens (stopping after the stop
// token, and where the model's maximum context leaves two positions, which
// finish_assistant_turn may need), passing each piece of completed UTF-8 text to on_text as it
// comes. Returns the new ids (the stop token included when reached).
std::vector<TokenId> generate_text(Session& session, const Tokenizer& tokenizer, std::span<const TokenId> prompt,
                                   const GenerationOptions& options,
                                   const std::function<void(std::string_view)>& on_text);

// Ends in `session` the assistant turn that generate_text produced (`generated`, with options'
// stop_token = end_of_turn): feeds the last generated id, which generate_text samples but does
// not feed, and end_of_turn when max_new_tokens cut the turn short. The session then holds the
// turn as a render of the conversation has it, and a render_continuation turn can follow.
void finish_assistant_turn(Session& session, std::span<const TokenId> generated, TokenId end_of_turn);

}  // namespace lightdesk
