// Lightdesk session store: conversations, documents and saved model state in one SQLite file.
//
// A session holds a tree of messages (each message names its parent, so an edited message
// starts a branch), the documents and images attached to it, and state checkpoints: the engine's
// exported state at a token position (Session::export_state), so that reopening a session reads
// its state instead of re-prefilling it.
//
// Checkpoints are stored in chunked rows, written and read in pieces, never as one allocation:
// one BLOB row per lightning layer (written and read with SQLite's incremental blob I/O), and
// softmax keys/values in rows of at most Options::kv_row_bytes. Softmax K/V live in append-only
// "spans" of positions owned by the session; a checkpoint references the spans that cover its
// positions, and a new checkpoint reuses every span whose token prefix it shares, so a
// checkpoint per message costs only its new tokens plus the lightning states. A span of at
// least Options::kv_file_bytes keeps its rows' bytes in one file beside the database
// (<database>.kv/), written with large writes and read with large reads at the disk's speed;
// smaller spans keep them in BLOBs. Rows are written in many small transactions and the
// checkpoint becomes visible through one small final commit marking it complete (WAL mode),
// after its span file is synced: a process killed at any moment leaves the previous
// checkpoints intact and no partial one visible, and the files of unfinished or deleted spans
// are removed by the next save of that session or by collect_garbage. Every row carries an
// XXH3-64 checksum of its bytes; loading verifies them, the layout version and the model
// fingerprint, and refuses a damaged or missing state or one from another model with
// StateRefused, naming the cause. The messages stay readable either way.
//
// Threads: a Store is one SQLite connection. Use it from one thread at a time (for instance,
// own it in the GUI's worker thread); for work in parallel, open one Store per thread on the
// same file: WAL mode lets readers proceed while one connection writes, and a connection waits
// up to Options::busy_timeout_ms for another's write lock. Only one Store at a time may save
// checkpoints of a given session (a save first clears that session's unfinished checkpoints).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/expert_patterns.h"

namespace lightdesk::store {

// Everything the store throws: database errors name the file, state errors the checkpoint.
class Error : public lightdesk::Error {
 public:
  using lightdesk::Error::Error;
};

// A checkpoint that cannot be loaded into this session: damaged (checksum), from another model
// (fingerprint), incomplete or of an unknown layout. The caller can fall back to re-prefilling.
class StateRefused : public Error {
 public:
  using Error::Error;
};

// Highest schema version this build writes; opening upgrades older files step by step.
inline constexpr int kSchemaVersion = 9;

enum class Role { System, User, Assistant, Tool };
const char* role_name(Role role);

struct SessionRecord {
  std::int64_t id = 0;
  std::optional<std::string> name;  // unique handle (the CLI's --session), if any
  std::string title;
  std::optional<std::int64_t> model_id;
  std::string settings_json = "{}";
  std::int64_t created_at = 0;  // Unix seconds
  std::int64_t updated_at = 0;
};

struct Message {
  std::int64_t id = 0;
  std::int64_t session_id = 0;
  std::optional<std::int64_t> parent_id;  // none for a root
  Role role = Role::User;
  std::string text;
  std::string reasoning;
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
  std::optional<double> prefill_seconds;
  std::optional<double> generation_seconds;
  // A pruned or exact-mode model's turn: the mean share of router probability mass (per token
  // and layer) that fell on experts not resident (RoutingTally::lost_share): lost in the pruned
  // mode, missed and copied in in exact mode (the checkpoint's expert selection says which).
  std::optional<double> expert_lost_mass;
  std::int64_t created_at = 0;
};

struct Document {
  std::int64_t id = 0;
  std::optional<std::int64_t> session_id;  // none for a library document
  std::optional<std::int64_t> message_id;  // the message it was sent with, if any
  std::string source_path;
  std::string content_hash;
  std::string mime_type;
  std::optional<std::int64_t> token_count;
  std::string text;  // extracted text (empty when only text_ref is kept)
  std::string text_ref;  // where the extracted text lives when not stored inline
  std::vector<std::int64_t> page_offsets;  // a PDF's: the byte offset in `text` where each page starts
  std::int64_t created_at = 0;
};

struct Image {
  std::int64_t id = 0;
  std::optional<std::int64_t> session_id;
  std::optional<std::int64_t> message_id;
  std::string source_path;
  std::string content_hash;
  std::string mime_type;
  std::optional<std::int64_t> width;
  std::optional<std::int64_t> height;
  std::optional<std::int64_t> token_count;
  std::int64_t created_at = 0;
};

struct CheckpointRecord {
  std::int64_t id = 0;
  std::int64_t session_id = 0;
  std::optional<std::int64_t> message_id;
  std::int64_t model_id = 0;
  std::string model_fingerprint;
  std::int64_t position = 0;
  std::uint32_t layout_version = 0;
  std::string dtype;  // the K/V type its saver exported: "f32" or "bf16" (reused spans may hold the other)
  ExpertSelection experts;  // what the state was computed with (ModelInfo::experts)
  std::string system_prompt;  // the system prompt in the state's prefix (empty: none)
  bool complete = false;
  std::int64_t created_at = 0;
};

struct SearchHit {
  enum class Kind { Message, Document };
  Kind kind = Kind::Message;
  std::int64_t id = 0;  // message or document id
  std::optional<std::int64_t> session_id;
  std::string snippet;  // matched terms between [ and ]
};

// What a checkpoint is made from: a Session (see Store::save_checkpoint), or anything else that
// streams its state the way Session::export_state does (benchmarks, conversion tools).
struct StateSource {
  const ModelInfo& model;
  std::span<const TokenId> tokens;  // one per position of the state
  // Calls the sink with every lightning part and the softmax parts of positions kv_from and
  // later (kv_from >= kv_first: the store already holds the earlier ones), each of at most
  // kv_chunk_tokens positions.
  std::function<void(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                     std::int64_t kv_from)>
      export_state;
  // The first position whose K/V the source has: the session's stored spans must hold the
  // earlier ones (a source that continues the session's last checkpoint).
  std::int64_t kv_first = 0;
  // The element type of the softmax parts it streams (Session::kv_dtype); the store keeps them so.
  StateDType kv_dtype = StateDType::F32;
  // The system prompt the conversation in the state began with (empty: none): a restore under
  // another one is refused.
  std::string system_prompt{};
};

// Why a state computed with the system prompt `saved` cannot continue a conversation under
// `wanted` ("checkpoint 3 was computed with the system prompt “…”, not with none"); empty when
// they are the same. `name` names the state.
std::string system_prompt_mismatch(const std::string& name, const std::string& saved, const std::string& wanted);

class Store {
 public:
  struct Options {
    int busy_timeout_ms = 10000;
    // Page cache of this connection; a K/V row should fit so it is written to the WAL once.
    std::int64_t cache_bytes = 64 << 20;
    // Softmax K/V rows written by this connection hold at most this many bytes (but at least
    // one position); reading accepts any row size.
    std::int64_t kv_row_bytes = 16 << 20;
    // A new K/V span of at least this many bytes is kept as a file beside the database;
    // smaller ones (a message's few positions) as BLOB rows, without a file and its fsync.
    std::int64_t kv_file_bytes = 16 << 20;
    // Page size of a file this connection creates (512..65536, a power of two). Large pages
    // make big blobs cheaper to write and read: fewer overflow pages to chain (see BENCHMARK.md).
    int page_size = 65536;
  };

  // Opens or creates the database, switches it to WAL mode and upgrades its schema to
  // kSchemaVersion. Throws Error for a file that is not a database, is damaged, or was written
  // by a newer schema.
  explicit Store(const std::filesystem::path& path);
  Store(const std::filesystem::path& path, const Options& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::filesystem::path& path() const;
  // Where the span files are: <path()>.kv (created with the first one).
  std::filesystem::path kv_directory() const;
  int schema_version() const;
  // PRAGMA integrity_check: "ok" or SQLite's list of problems.
  std::string integrity_check();

  // Models are known by fingerprint; the path is updated to the latest one seen.
  std::int64_t ensure_model(const ModelInfo& info);

  std::int64_t create_session(const std::string& title, std::optional<std::int64_t> model_id = {},
                              std::optional<std::string> name = {}, const std::string& settings_json = "{}");
  std::optional<SessionRecord> find_session(const std::string& name);
  SessionRecord session(std::int64_t id);
  std::vector<SessionRecord> sessions();
  void rename_session(std::int64_t id, const std::string& title);
  void set_session_settings(std::int64_t id, const std::string& settings_json);
  // Deletes the session with its messages, attachments and checkpoints.
  void delete_session(std::int64_t id);

  // `message.id` and `created_at` are assigned; returns the new id. A parent must belong to the
  // same session.
  std::int64_t add_message(const Message& message);
  Message message(std::int64_t id);
  // All messages of the session, in creation order (the whole tree).
  std::vector<Message> messages(std::int64_t session_id);
  // The branch ending at `leaf`: root first.
  std::vector<Message> thread(std::int64_t leaf_message_id);
  std::vector<Message> children(std::int64_t message_id);

  std::int64_t add_document(const Document& document);
  Document document(std::int64_t id);
  std::vector<Document> documents(std::optional<std::int64_t> session_id);
  std::int64_t add_image(const Image& image);
  std::vector<Image> images(std::int64_t session_id);

  // FTS5 query syntax over message text and reasoning and document text and paths; best
  // matches first.
  std::vector<SearchHit> search(const std::string& query, int limit = 50);

  // Saves the session's state as a checkpoint of `session_id` (optionally tied to the message
  // whose tokens it ends with) and returns its id. The session must have been created from
  // the model whose state it holds; the model is recorded with ensure_model.
  std::int64_t save_checkpoint(std::int64_t session_id, const Session& session,
                               std::optional<std::int64_t> message_id = {}, const std::string& system_prompt = {});
  std::int64_t save_checkpoint(std::int64_t session_id, const StateSource& source,
                               std::optional<std::int64_t> message_id = {});
  // Complete checkpoints of the session, oldest first.
  std::vector<CheckpointRecord> checkpoints(std::int64_t session_id);
  std::optional<CheckpointRecord> latest_checkpoint(std::int64_t session_id);
  // The newest complete checkpoint tied to this message.
  std::optional<CheckpointRecord> checkpoint_at(std::int64_t message_id);
  // The token ids a checkpoint covers (checksum verified; throws StateRefused if damaged).
  std::vector<TokenId> checkpoint_tokens(std::int64_t checkpoint_id);
  // Replaces `session`'s state with the checkpoint after verifying model fingerprint, layout
  // version, every checksum and that it was computed with `system_prompt` (empty: none). Throws
  // StateRefused naming the cause; `session` then keeps its previous state.
  void load_checkpoint(std::int64_t checkpoint_id, Session& session, const std::string& system_prompt = {});
  // The verification and reading half of load_checkpoint: checks that the checkpoint is
  // complete and belongs to `model`, streams its parts (lightning layers first, then K/V rows by
  // layer, position and kind, the order of Session::export_state; each part's data is valid only
  // during the call) after checking each one's checksum, and returns the token ids. Reading a
  // span file asks the disk for the next row while the sink takes the current one. Throws
  // StateRefused naming the cause.
  std::vector<TokenId> read_checkpoint(std::int64_t checkpoint_id, const ModelInfo& model,
                                       const std::function<void(const StatePart&)>& sink,
                                       const std::string& system_prompt = {});
  // Deletes the checkpoint and the K/V spans no other checkpoint uses.
  void delete_checkpoint(std::int64_t checkpoint_id);
  // Removes unfinished checkpoints (left by a killed writer) of every session, unused K/V
  // spans and the span files no span names. Call only while no other connection is saving a
  // checkpoint.
  void collect_garbage();
  // Bytes of stored state (lightning rows and K/V rows, in BLOBs or span files) a checkpoint
  // references.
  std::int64_t checkpoint_bytes(std::int64_t checkpoint_id);

  // Task expert patterns (lightdesk/expert_patterns.h), one per model fingerprint and task: a
  // new one of the same task replaces the stored one.
  void save_expert_pattern(const ExpertPattern& pattern);
  // The patterns of one model (or every model's), by fingerprint and task.
  std::vector<ExpertPattern> expert_patterns(const std::optional<std::string>& model_fingerprint = {});
  std::optional<ExpertPattern> expert_pattern(const std::string& model_fingerprint, const std::string& task);
  // Stores the patterns of `model_fingerprint` that a model ships (its directory's
  // expert_patterns.json, see expert_patterns_json) and the database does not hold yet (a task
  // calibrated here stays); returns how many. No file: none.
  int import_shipped_patterns(const std::filesystem::path& model_directory, const std::string& model_fingerprint);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Expert patterns as JSON ({"patterns": [{"task", "model_fingerprint", "score", "tcess_top_k",
// "tcess_confidence", "calibration_tokens", "layers": [[[expert, score] best first] per layer]}]}):
// how patterns ship beside a model (its directory's expert_patterns.json). Reading throws Error
// naming `source` and the fault.
std::string expert_patterns_json(std::span<const ExpertPattern> patterns);
std::vector<ExpertPattern> parse_expert_patterns_json(const std::string& text, const std::string& source);
// An ExpertSelection as checkpoints record it (nullopt: all experts), and back.
std::optional<std::string> expert_selection_json(const ExpertSelection& experts);
ExpertSelection parse_expert_selection_json(const std::optional<std::string>& text);

// The command-line session contract (lightdesk-cli --session-db FILE --session NAME): the named
// session's latest checkpoint is loaded into a fresh Session before the run and a new
// checkpoint is saved after it, so new ids continue at the stored position.
class NamedSessionState {
 public:
  // Opens `db`, finds or creates the session `name` and loads its latest checkpoint into
  // `session`. If the stored state is refused, notice() says why and, when the checkpoint's
  // token ids are intact, the session is re-prefilled from them (in chunks of
  // `prefill_chunk_tokens`; 0: the backend's own size, see FeedOptions). A state computed with
  // another system prompt than `system_prompt` (empty: none) cannot go on: Error naming both.
  NamedSessionState(const std::filesystem::path& db, const std::string& name, Session& session,
                    std::int64_t prefill_chunk_tokens = 0, std::string system_prompt = {});
  // Saves the session's current state as the session's newest checkpoint. Throws Error, saving
  // nothing, when the session moved on since it was loaded (another process saved a newer
  // checkpoint of it): this state does not continue that one, and saving it would silently
  // drop the other's.
  void save();
  // For conversations: adds `question` as a user message, child of the message the loaded
  // state ends with (a root if none), `answer` as an assistant message, its child, and saves
  // the session's current state as a checkpoint tied to the answer, where the next exchange
  // continues. Their session ids, parent ids and roles are set here. Returns the answer's id.
  // When the session moved on since it was loaded, the exchange is a branch beside the other
  // process's, and notice() says so.
  std::int64_t save_exchange(Message question, Message answer);
  // Empty, or why the stored state was not loaded as is (after construction), or that the
  // exchange became a branch (after save_exchange).
  const std::string& notice() const { return notice_; }

 private:
  Store store_;
  Session& session_;
  std::string system_prompt_;  // saved with each checkpoint
  std::int64_t session_id_ = 0;
  std::optional<std::int64_t> last_message_id_;  // the message the loaded checkpoint ends with
  // The session's newest checkpoint when it was loaded (or this object's own last save): a
  // newer one at save time is another writer's.
  std::optional<std::int64_t> base_checkpoint_id_;
  std::string notice_;

  // The newest checkpoint, when another writer saved it after base_checkpoint_id_.
  std::optional<CheckpointRecord> newer_checkpoint();
};

}  // namespace lightdesk::store
