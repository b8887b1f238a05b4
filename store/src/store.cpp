#include "lightdesk/store.h"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "lightdesk/input_files.h"
#include "kv_files.h"
#include "schema.h"
#include "sqlite.h"

namespace lightdesk::store {
namespace {

std::int64_t now_seconds() { return static_cast<std::int64_t>(std::time(nullptr)); }

// Checksums are stored as SQLite's signed 64-bit integers.
std::int64_t stored_checksum(XXH64_hash_t hash) { return static_cast<std::int64_t>(hash); }

std::int64_t checksum_of(std::span<const std::byte> bytes) {
  return stored_checksum(XXH3_64bits(bytes.data(), bytes.size()));
}

std::span<const std::byte> token_bytes(std::span<const TokenId> tokens) { return std::as_bytes(tokens); }

// Identifies the token prefix [0, end): K/V at a position depend on every token before it.
std::vector<std::byte> prefix_hash(std::span<const TokenId> tokens, std::int64_t end) {
  const auto bytes = token_bytes(tokens.first(static_cast<std::size_t>(end)));
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes.data(), bytes.size()));
  const auto* p = reinterpret_cast<const std::byte*>(canonical.digest);
  return {p, p + sizeof canonical.digest};
}

Role parse_role(const std::string& text) {
  for (Role role : {Role::System, Role::User, Role::Assistant, Role::Tool})
    if (text == role_name(role)) return role;
  throw Error("unknown message role \"" + text + "\"");
}

constexpr const char* kMessageColumns =
    "id, session_id, parent_id, role, text, reasoning, prompt_tokens, completion_tokens, prefill_seconds, "
    "generation_seconds, expert_lost_mass, created_at";

Message read_message(const sql::Statement& row) {
  Message m;
  std::string role;
  row.columns(m.id, m.session_id, m.parent_id, role, m.text, m.reasoning, m.prompt_tokens, m.completion_tokens,
              m.prefill_seconds, m.generation_seconds, m.expert_lost_mass, m.created_at);
  m.role = parse_role(role);
  return m;
}

constexpr const char* kSessionColumns = "id, name, title, model_id, settings, created_at, updated_at";

SessionRecord read_session(const sql::Statement& row) {
  SessionRecord s;
  row.columns(s.id, s.name, s.title, s.model_id, s.settings_json, s.created_at, s.updated_at);
  return s;
}

constexpr const char* kDocumentColumns =
    "id, session_id, source_path, content_hash, mime_type, token_count, text, text_ref, created_at, message_id, "
    "page_offsets";

// documents.page_offsets: a JSON array of integers, NULL where there are none.
std::optional<std::string> page_offsets_json(const std::vector<std::int64_t>& offsets) {
  if (offsets.empty()) return std::nullopt;
  return nlohmann::json(offsets).dump();
}

Document read_document(const sql::Statement& row) {
  Document d;
  std::optional<std::string> page_offsets;
  row.columns(d.id, d.session_id, d.source_path, d.content_hash, d.mime_type, d.token_count, d.text, d.text_ref,
              d.created_at, d.message_id, page_offsets);
  // Offsets only place citations on pages: a damaged value leaves the document without them.
  if (page_offsets) {
    const nlohmann::json offsets = nlohmann::json::parse(*page_offsets, nullptr, false);
    if (offsets.is_array() && std::all_of(offsets.begin(), offsets.end(), [](const auto& v) { return v.is_number_integer(); }))
      d.page_offsets = offsets.get<std::vector<std::int64_t>>();
  }
  return d;
}

constexpr const char* kCheckpointColumns =
    "c.id, c.session_id, c.message_id, c.model_id, m.fingerprint, c.position, c.layout_version, c.dtype, "
    "c.expert_selection, c.system_prompt, c.complete, c.created_at FROM checkpoints c JOIN models m ON m.id = c.model_id";

CheckpointRecord read_checkpoint_record(const sql::Statement& row) {
  CheckpointRecord c;
  std::optional<std::string> experts;
  row.columns(c.id, c.session_id, c.message_id, c.model_id, c.model_fingerprint, c.position, c.layout_version,
              c.dtype, experts, c.system_prompt, c.complete, c.created_at);
  c.experts = parse_expert_selection_json(experts);
  return c;
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::System: return "system";
    case Role::User: return "user";
    case Role::Assistant: return "assistant";
    case Role::Tool: return "tool";
  }
  return "?";
}

struct Store::Impl {
  sql::Database db;
  Options options;
  KvFileDirectory kv_files;

  Impl(const std::filesystem::path& path, const Options& options_)
      : db(path), options(options_), kv_files(path) {
    sqlite3_busy_timeout(db.handle(), options.busy_timeout_ms);
    // Takes effect only when the file is created.
    db.exec(("PRAGMA page_size = " + std::to_string(options.page_size)).c_str());
    {
      sql::Statement journal(db, "PRAGMA journal_mode = WAL");
      if (!journal.step() || journal.text(0) != "wal") db.fail_plain("cannot switch to WAL mode");
    }
    // In WAL mode NORMAL keeps the file consistent on a crash; a power loss may drop the last
    // commits, never half of one.
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec("PRAGMA foreign_keys = ON");
    db.exec(("PRAGMA cache_size = -" + std::to_string(options.cache_bytes / 1024)).c_str());
    migrate(db, kSchemaVersion);
  }

  template <class Row, class Reader, class... Values>
  std::vector<Row> query_all(std::string_view sql_text, Reader reader, const Values&... values) {
    sql::Statement query(db, sql_text);
    query.bind_all(values...);
    std::vector<Row> rows;
    while (query.step()) rows.push_back(reader(query));
    return rows;
  }

  // The first row, if any.
  template <class Row, class Reader, class... Values>
  std::optional<Row> query_first(std::string_view sql_text, Reader reader, const Values&... values) {
    auto rows = query_all<Row>(sql_text, reader, values...);
    if (rows.empty()) return std::nullopt;
    return rows.front();
  }

  template <class Row, class Reader, class... Values>
  Row query_one(std::string_view sql_text, const std::string& what, Reader reader, const Values&... values) {
    auto row = query_first<Row>(sql_text, reader, values...);
    if (!row) db.fail_plain("no " + what);
    return *row;
  }

  // Deletes checkpoints whose writer never finished and the K/V spans they alone created;
  // `session_id` limits it to one session. Then deletes the span files no span names: those
  // of the spans deleted here, and any a process killed between a commit and its deletes left.
  void clear_unfinished(std::optional<std::int64_t> session_id) {
    std::vector<std::string> files;
    {
      sql::Transaction transaction(db);
      const std::string where = session_id ? " AND session_id = " + std::to_string(*session_id) : "";
      sql::Statement(db, "DELETE FROM checkpoints WHERE complete = 0" + where).run();
      files = drop_unused_spans();
      const auto unfinished = drop_spans("complete = 0" + where);
      files.insert(files.end(), unfinished.begin(), unfinished.end());
      transaction.commit();
    }
    kv_files.remove(files);
    remove_unnamed_files();
  }

  // Deletes the spans matching `where` (inside the caller's transaction) and returns their
  // files, to delete once that transaction has committed: a file goes only after no committed
  // row names it.
  std::vector<std::string> drop_spans(const std::string& where) {
    std::vector<std::string> files;
    sql::Statement named(db, "SELECT file FROM kv_spans WHERE file IS NOT NULL AND " + where);
    while (named.step()) files.push_back(named.text(0));
    named.reset();
    sql::Statement(db, "DELETE FROM kv_spans WHERE " + where).run();
    return files;
  }

  std::vector<std::string> drop_unused_spans() {
    return drop_spans("complete = 1 AND NOT EXISTS (SELECT 1 FROM checkpoint_spans cs WHERE cs.span_id = kv_spans.id)");
  }

  // Span files that no span row names. The directory is listed before the names are read: a
  // file is created only after the row naming it commits, so a file being written by another
  // connection is always named.
  void remove_unnamed_files() {
    const std::vector<std::string> present = kv_files.names();
    if (present.empty()) return;
    std::vector<std::string> named;
    sql::Statement query(db, "SELECT file FROM kv_spans WHERE file IS NOT NULL");
    while (query.step()) named.push_back(query.text(0));
    query.reset();
    std::sort(named.begin(), named.end());
    std::vector<std::string> unnamed;
    for (const std::string& name : present)
      if (!std::binary_search(named.begin(), named.end(), name)) unnamed.push_back(name);
    kv_files.remove(unnamed);
  }

  std::vector<std::byte> verified_tokens_blob(std::int64_t checkpoint_id) {
    sql::Statement query(db, "SELECT tokens, tokens_checksum, position FROM checkpoints WHERE id = ?");
    query.bind_all(checkpoint_id);
    if (!query.step()) throw StateRefused("checkpoint " + std::to_string(checkpoint_id) + " does not exist");
    auto bytes = query.blob(0);
    const std::int64_t position = query.int64(2);
    if (static_cast<std::int64_t>(bytes.size()) != position * static_cast<std::int64_t>(sizeof(TokenId)))
      throw StateRefused("checkpoint " + std::to_string(checkpoint_id) + ": its token ids hold " +
                         std::to_string(bytes.size()) + " bytes for " + std::to_string(position) + " positions");
    if (checksum_of(bytes) != query.int64(1))
      throw StateRefused("checkpoint " + std::to_string(checkpoint_id) + ": its token ids are damaged (checksum mismatch)");
    return bytes;
  }

  std::vector<TokenId> read(std::int64_t checkpoint_id, const ModelInfo& info,
                            const std::function<void(const StatePart&)>& sink, const std::string& system_prompt);
};

Store::Store(const std::filesystem::path& path) : Store(path, Options{}) {}
Store::Store(const std::filesystem::path& path, const Options& options)
    : impl_(std::make_unique<Impl>(path, options)) {}
Store::~Store() = default;

const std::filesystem::path& Store::path() const { return impl_->db.path(); }
std::filesystem::path Store::kv_directory() const { return impl_->kv_files.path(); }
int Store::schema_version() const { return user_version(impl_->db); }

std::string Store::integrity_check() {
  std::string result;
  sql::Statement check(impl_->db, "PRAGMA integrity_check");
  while (check.step()) {
    if (!result.empty()) result += '\n';
    result += check.text(0);
  }
  return result;
}

std::int64_t Store::ensure_model(const ModelInfo& info) {
  sql::Statement upsert(impl_->db,
                        "INSERT INTO models(fingerprint, path, model_type, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(fingerprint) DO UPDATE SET path = excluded.path RETURNING id");
  // Models are known by their states' identity: a model run with quantized experts is another.
  upsert.bind_all(info.state_identity(), info.directory.string(), info.model_type, now_seconds());
  if (!upsert.step()) impl_->db.fail_plain("cannot record model " + info.state_identity());
  const std::int64_t id = upsert.int64(0);
  upsert.run();
  return id;
}

std::int64_t Store::create_session(const std::string& title, std::optional<std::int64_t> model_id,
                                   std::optional<std::string> name, const std::string& settings_json) {
  const std::int64_t now = now_seconds();
  sql::Statement(impl_->db,
                 "INSERT INTO sessions(name, title, model_id, settings, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
      .bind_all(name, title, model_id, settings_json, now, now)
      .run();
  return impl_->db.last_insert_rowid();
}

std::optional<SessionRecord> Store::find_session(const std::string& name) {
  return impl_->query_first<SessionRecord>(std::string("SELECT ") + kSessionColumns + " FROM sessions WHERE name = ?",
                                          read_session, name);
}

SessionRecord Store::session(std::int64_t id) {
  return impl_->query_one<SessionRecord>(std::string("SELECT ") + kSessionColumns + " FROM sessions WHERE id = ?",
                                         "session " + std::to_string(id), read_session, id);
}

std::vector<SessionRecord> Store::sessions() {
  return impl_->query_all<SessionRecord>(std::string("SELECT ") + kSessionColumns + " FROM sessions ORDER BY id",
                                         read_session);
}

void Store::rename_session(std::int64_t id, const std::string& title) {
  sql::Statement(impl_->db, "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?")
      .bind_all(title, now_seconds(), id)
      .run();
}

void Store::set_session_settings(std::int64_t id, const std::string& settings_json) {
  sql::Statement(impl_->db, "UPDATE sessions SET settings = ?, updated_at = ? WHERE id = ?")
      .bind_all(settings_json, now_seconds(), id)
      .run();
}

void Store::delete_session(std::int64_t id) {
  std::vector<std::string> files;
  {
    sql::Transaction transaction(impl_->db);
    // Its checkpoints first: they reference its spans.
    sql::Statement(impl_->db, "DELETE FROM checkpoints WHERE session_id = ?").bind_all(id).run();
    files = impl_->drop_spans("session_id = " + std::to_string(id));
    sql::Statement(impl_->db, "DELETE FROM sessions WHERE id = ?").bind_all(id).run();
    transaction.commit();
  }
  impl_->kv_files.remove(files);
}

std::int64_t Store::add_message(const Message& m) {
  if (m.parent_id) {
    const Message parent = message(*m.parent_id);
    if (parent.session_id != m.session_id)
      throw Error("message parent " + std::to_string(*m.parent_id) + " belongs to session " +
                  std::to_string(parent.session_id) + ", not " + std::to_string(m.session_id));
  }
  sql::Transaction transaction(impl_->db);
  const std::int64_t now = now_seconds();
  sql::Statement(impl_->db,
                 "INSERT INTO messages(session_id, parent_id, role, text, reasoning, prompt_tokens, completion_tokens, "
                 "prefill_seconds, generation_seconds, expert_lost_mass, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
      .bind_all(m.session_id, m.parent_id, role_name(m.role), m.text, m.reasoning, m.prompt_tokens, m.completion_tokens,
                m.prefill_seconds, m.generation_seconds, m.expert_lost_mass, now)
      .run();
  const std::int64_t id = impl_->db.last_insert_rowid();
  sql::Statement(impl_->db, "UPDATE sessions SET updated_at = ? WHERE id = ?").bind_all(now, m.session_id).run();
  transaction.commit();
  return id;
}

Message Store::message(std::int64_t id) {
  return impl_->query_one<Message>(std::string("SELECT ") + kMessageColumns + " FROM messages WHERE id = ?",
                                   "message " + std::to_string(id), read_message, id);
}

std::vector<Message> Store::messages(std::int64_t session_id) {
  return impl_->query_all<Message>(
      std::string("SELECT ") + kMessageColumns + " FROM messages WHERE session_id = ? ORDER BY id", read_message,
      session_id);
}

std::vector<Message> Store::thread(std::int64_t leaf_message_id) {
  auto path = impl_->query_all<Message>(
      std::string("WITH RECURSIVE branch(id, depth) AS (SELECT ?, 0 UNION ALL "
                  "SELECT m.parent_id, b.depth + 1 FROM messages m JOIN branch b ON m.id = b.id "
                  "WHERE m.parent_id IS NOT NULL) SELECT ") +
          kMessageColumns + " FROM messages JOIN branch USING (id) ORDER BY branch.depth DESC",
      read_message, leaf_message_id);
  if (path.empty()) impl_->db.fail_plain("no message " + std::to_string(leaf_message_id));
  return path;
}

std::vector<Message> Store::children(std::int64_t message_id) {
  return impl_->query_all<Message>(
      std::string("SELECT ") + kMessageColumns + " FROM messages WHERE parent_id = ? ORDER BY id", read_message,
      message_id);
}

std::int64_t Store::add_document(const Document& d) {
  sql::Statement(impl_->db,
                 "INSERT INTO documents(session_id, message_id, source_path, content_hash, mime_type, token_count, text, "
                 "text_ref, page_offsets, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
      .bind_all(d.session_id, d.message_id, d.source_path, d.content_hash, d.mime_type, d.token_count, d.text,
                d.text_ref, page_offsets_json(d.page_offsets), now_seconds())
      .run();
  return impl_->db.last_insert_rowid();
}

Document Store::document(std::int64_t id) {
  return impl_->query_one<Document>(std::string("SELECT ") + kDocumentColumns + " FROM documents WHERE id = ?",
                                    "document " + std::to_string(id), read_document, id);
}

std::vector<Document> Store::documents(std::optional<std::int64_t> session_id) {
  return impl_->query_all<Document>(
      std::string("SELECT ") + kDocumentColumns + " FROM documents WHERE session_id IS ? ORDER BY id", read_document,
      session_id);
}

std::int64_t Store::add_image(const Image& i) {
  sql::Statement(impl_->db,
                 "INSERT INTO images(session_id, message_id, source_path, content_hash, mime_type, width, height, "
                 "token_count, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
      .bind_all(i.session_id, i.message_id, i.source_path, i.content_hash, i.mime_type, i.width, i.height, i.token_count,
                now_seconds())
      .run();
  return impl_->db.last_insert_rowid();
}

std::vector<Image> Store::images(std::int64_t session_id) {
  return impl_->query_all<Image>(
      "SELECT id, session_id, message_id, source_path, content_hash, mime_type, width, height, token_count, created_at "
      "FROM images WHERE session_id = ? ORDER BY id",
      [](const sql::Statement& row) {
        Image i;
        row.columns(i.id, i.session_id, i.message_id, i.source_path, i.content_hash, i.mime_type, i.width, i.height,
                    i.token_count, i.created_at);
        return i;
      },
      session_id);
}

std::vector<SearchHit> Store::search(const std::string& query, int limit) {
  return impl_->query_all<SearchHit>(
      "SELECT 0, m.id, m.session_id, snippet(messages_fts, -1, '[', ']', '...', 12), bm25(messages_fts) AS rank "
      "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ?1 "
      "UNION ALL "
      "SELECT 1, d.id, d.session_id, snippet(documents_fts, -1, '[', ']', '...', 12), bm25(documents_fts) "
      "FROM documents_fts JOIN documents d ON d.id = documents_fts.rowid WHERE documents_fts MATCH ?1 "
      "ORDER BY rank LIMIT ?2",
      [](const sql::Statement& row) {
        SearchHit hit;
        std::int64_t kind = 0;
        row.columns(kind, hit.id, hit.session_id, hit.snippet);
        hit.kind = kind == 0 ? SearchHit::Kind::Message : SearchHit::Kind::Document;
        return hit;
      },
      query, limit);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

namespace {

// Writes the parts of one exported state as rows of a new checkpoint, one transaction per row
// so that no transaction is larger than a row. The new span's K/V bytes go to `span_file` when
// it is given (the rows then say where in it), else into the rows' BLOBs.
class CheckpointWriter {
 public:
  CheckpointWriter(sql::Database& db, std::int64_t checkpoint_id, std::optional<std::int64_t> span_id,
                   std::int64_t span_first, KvFileWriter* span_file)
      : db_(db),
        checkpoint_id_(checkpoint_id),
        span_id_(span_id),
        span_first_(span_first),
        span_file_(span_file),
        insert_lightning_(db,
                          "INSERT INTO lightning_states(checkpoint_id, layer, heads, key_dim, value_dim, checksum, "
                          "data) VALUES (?, ?, ?, ?, ?, ?, zeroblob(?))"),
        insert_kv_(db,
                   "INSERT INTO kv_rows(span_id, layer, kind, first_token, token_count, kv_heads, head_dim, dtype, "
                   "checksum, file_offset, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, zeroblob(?))") {}

  void write(const StatePart& part) {
    if (part.kind == StatePartKind::LightningState) write_lightning(part);
    else write_kv(part);
  }

 private:
  void write_lightning(const StatePart& part) {
    const auto bytes = part.data;
    sql::Transaction transaction(db_);
    insert_lightning_
        .bind_all(checkpoint_id_, part.layer, part.shape.at(0), part.shape.at(1), part.shape.at(2),
                  checksum_of(bytes), static_cast<std::int64_t>(bytes.size()))
        .run();
    sql::Blob(db_, "lightning_states", "data", db_.last_insert_rowid(), true).write(0, bytes);
    transaction.commit();
  }

  // A part covers [first, first + count) for every head ([kv_heads, count, head_dim]); the row
  // keeps only the positions of the new span, [max(first, span_first), first + count).
  void write_kv(const StatePart& part) {
    const std::int64_t end = part.first_token + part.token_count;
    if (end <= span_first_) return;  // held by a reused span
    if (!span_id_) db_.fail_plain("K/V part beyond the checkpoint's spans");
    const std::int64_t heads = part.shape.at(0), head_dim = part.shape.at(2);
    const std::int64_t row_first = std::max(part.first_token, span_first_);
    const std::int64_t row_count = end - row_first;
    const std::int64_t element = state_dtype_bytes(part.dtype);
    const auto strip = [&](std::int64_t head) {
      return part.data.subspan(
          static_cast<std::size_t>((head * part.token_count + row_first - part.first_token) * head_dim * element),
          static_cast<std::size_t>(row_count * head_dim * element));
    };
    std::vector<std::span<const std::byte>> strips;
    XXH3_state_t* hash = XXH3_createState();
    XXH3_64bits_reset(hash);
    for (std::int64_t h = 0; h < heads; ++h) {
      strips.push_back(strip(h));
      XXH3_64bits_update(hash, strips.back().data(), strips.back().size());
    }
    const std::int64_t checksum = stored_checksum(XXH3_64bits_digest(hash));
    XXH3_freeState(hash);

    const std::int64_t strip_bytes = row_count * head_dim * element;
    // The file takes the bytes before the row names them.
    const std::int64_t file_offset = span_file_ ? span_file_->append(strips) : 0;
    sql::Transaction transaction(db_);
    insert_kv_.bind_all(*span_id_, part.layer, static_cast<int>(part.kind), row_first, row_count, heads, head_dim,
                        std::string(state_dtype_name(part.dtype)), checksum, file_offset,
                        span_file_ ? 0 : heads * strip_bytes);
    if (!span_file_) insert_kv_.bind(10, std::nullopt);  // file_offset: the bytes are in the BLOB
    insert_kv_.run();
    if (!span_file_) {
      // An open blob handle counts as a statement in progress: close it before committing.
      sql::Blob blob(db_, "kv_rows", "data", db_.last_insert_rowid(), true);
      for (std::int64_t h = 0; h < heads; ++h) blob.write(h * strip_bytes, strips[static_cast<std::size_t>(h)]);
    }
    transaction.commit();
  }

  sql::Database& db_;
  std::int64_t checkpoint_id_;
  std::optional<std::int64_t> span_id_;
  std::int64_t span_first_;
  KvFileWriter* span_file_;
  sql::Statement insert_lightning_;
  sql::Statement insert_kv_;
};

}  // namespace

std::int64_t Store::save_checkpoint(std::int64_t session_id, const Session& session,
                                    std::optional<std::int64_t> message_id, const std::string& system_prompt) {
  return save_checkpoint(
      session_id,
      StateSource{session.model().info(), session.tokens(),
                  [&session](const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                             std::int64_t kv_from) { session.export_state(sink, kv_chunk_tokens, kv_from); },
                  0, session.kv_dtype(), system_prompt},
      message_id);
}

std::int64_t Store::save_checkpoint(std::int64_t session_id, const StateSource& source,
                                    std::optional<std::int64_t> message_id) {
  sql::Database& db = impl_->db;
  const ModelInfo& info = source.model;
  const std::int64_t model_id = ensure_model(info);
  this->session(session_id);  // throws for an unknown session
  const std::span<const TokenId> tokens = source.tokens;
  const auto position = static_cast<std::int64_t>(tokens.size());
  impl_->clear_unfinished(session_id);
  const std::optional<std::string> experts = expert_selection_json(info.experts);

  // Step 1, one small transaction: the checkpoint row (not yet complete), the spans it reuses
  // and the new span for the positions no reusable span covers.
  std::int64_t checkpoint_id = 0;
  std::int64_t reused_end = 0;
  std::optional<std::int64_t> new_span;
  std::optional<std::string> new_span_file;
  // Bytes of one position's keys (or values) in one layer.
  const std::int64_t position_bytes =
      std::max<std::int64_t>(1, info.num_kv_heads) * info.head_dim * state_dtype_bytes(source.kv_dtype);
  {
    sql::Transaction transaction(db);
    const auto token_blob = token_bytes(tokens);
    sql::Statement(db,
                   "INSERT INTO checkpoints(session_id, message_id, model_id, position, layout_version, dtype, tokens, "
                   "tokens_checksum, expert_selection, system_prompt, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind_all(session_id, message_id, model_id, position, static_cast<std::int64_t>(StatePart::kLayoutVersion),
                  std::string(state_dtype_name(source.kv_dtype)), token_blob, checksum_of(token_blob), experts,
                  source.system_prompt, now_seconds())
        .run();
    checkpoint_id = db.last_insert_rowid();
    sql::Statement link(db, "INSERT INTO checkpoint_spans(checkpoint_id, span_id) VALUES (?, ?)");
    sql::Statement candidates(db,
                              "SELECT id, token_count, prefix_hash FROM kv_spans WHERE session_id = ? AND model_id = ? "
                              "AND complete = 1 AND first_token = ? AND first_token + token_count <= ? "
                              "AND expert_selection IS ? ORDER BY token_count DESC");
    // Longest first: follow the chain of spans that continue this checkpoint's token prefix.
    for (bool extended = true; extended && reused_end < position;) {
      extended = false;
      candidates.bind_all(session_id, model_id, reused_end, position, experts);
      std::optional<std::pair<std::int64_t, std::int64_t>> match;  // span id, its end
      while (!match && candidates.step()) {
        const std::int64_t end = reused_end + candidates.int64(1);
        if (candidates.blob(2) == prefix_hash(tokens, end)) match.emplace(candidates.int64(0), end);
      }
      candidates.reset();
      if (match) {
        link.bind_all(checkpoint_id, match->first).run();
        reused_end = match->second;
        extended = true;
      }
    }
    if (reused_end < source.kv_first)
      db.fail_plain("the K/V of positions " + std::to_string(reused_end) + " to " + std::to_string(source.kv_first) +
                    " is neither in the state to save nor in a checkpoint of this session stored before it "
                    "(its previous save is missing): save the whole state");
    if (reused_end < position) {
      sql::Statement(db,
                     "INSERT INTO kv_spans(session_id, model_id, first_token, token_count, prefix_hash, "
                     "expert_selection) VALUES (?, ?, ?, ?, ?, ?)")
          .bind_all(session_id, model_id, reused_end, position - reused_end,
                    std::span<const std::byte>(prefix_hash(tokens, position)), experts)
          .run();
      new_span = db.last_insert_rowid();
      link.bind_all(checkpoint_id, *new_span).run();
      // Named before the file exists: whatever a kill leaves, a file is either named by a
      // span (and deleted with it) or by none (and deleted as such).
      const std::int64_t span_bytes = (position - reused_end) * 2 * info.num_softmax_layers() * position_bytes;
      if (span_bytes >= impl_->options.kv_file_bytes) {
        new_span_file = KvFileDirectory::new_name(*new_span);
        sql::Statement(db, "UPDATE kv_spans SET file = ? WHERE id = ?").bind_all(*new_span_file, *new_span).run();
      }
    }
    transaction.commit();
  }

  try {
    // Step 2: the rows, each in its own transaction, invisible until step 3.
    std::optional<KvFileWriter> span_file;
    if (new_span_file) span_file.emplace(impl_->kv_files, *new_span_file);
    CheckpointWriter writer(db, checkpoint_id, new_span, reused_end, span_file ? &*span_file : nullptr);
    // Only the positions the reused spans lack are read from the source.
    source.export_state([&](const StatePart& part) { writer.write(part); },
                        std::max<std::int64_t>(1, impl_->options.kv_row_bytes / position_bytes), reused_end);

    // Step 3: once the span file is on disk, one small commit makes the checkpoint (and its new
    // span) visible.
    if (span_file) span_file->sync();
    sql::Transaction transaction(db);
    sql::Statement(db, "UPDATE checkpoints SET complete = 1 WHERE id = ?").bind_all(checkpoint_id).run();
    if (new_span) sql::Statement(db, "UPDATE kv_spans SET complete = 1 WHERE id = ?").bind_all(*new_span).run();
    sql::Statement(db, "UPDATE sessions SET model_id = ?, updated_at = ? WHERE id = ?")
        .bind_all(model_id, now_seconds(), session_id)
        .run();
    transaction.commit();
  } catch (...) {
    try {
      impl_->clear_unfinished(session_id);
    } catch (const Error&) {
      // The original failure is the one to report; a later save clears the leftovers.
    }
    throw;
  }
  return checkpoint_id;
}

std::vector<CheckpointRecord> Store::checkpoints(std::int64_t session_id) {
  return impl_->query_all<CheckpointRecord>(
      std::string("SELECT ") + kCheckpointColumns + " WHERE c.session_id = ? AND c.complete = 1 ORDER BY c.id",
      read_checkpoint_record, session_id);
}

// The newest complete checkpoint whose `column` equals the query's parameter.
static std::string newest_checkpoint_where(const char* column) {
  return std::string("SELECT ") + kCheckpointColumns + " WHERE " + column +
         " = ? AND c.complete = 1 ORDER BY c.id DESC LIMIT 1";
}

std::optional<CheckpointRecord> Store::latest_checkpoint(std::int64_t session_id) {
  return impl_->query_first<CheckpointRecord>(newest_checkpoint_where("c.session_id"), read_checkpoint_record,
                                              session_id);
}

std::optional<CheckpointRecord> Store::checkpoint_at(std::int64_t message_id) {
  return impl_->query_first<CheckpointRecord>(newest_checkpoint_where("c.message_id"), read_checkpoint_record,
                                              message_id);
}

std::vector<TokenId> Store::checkpoint_tokens(std::int64_t checkpoint_id) {
  const auto bytes = impl_->verified_tokens_blob(checkpoint_id);
  std::vector<TokenId> tokens(bytes.size() / sizeof(TokenId));
  std::memcpy(tokens.data(), bytes.data(), bytes.size());
  return tokens;
}

namespace {

// Runs `body`; any failure (a damaged file, a state the engine rejects) becomes StateRefused.
template <class Body>
auto refusing(std::int64_t checkpoint_id, Body body) {
  try {
    return body();
  } catch (const StateRefused&) {
    throw;
  } catch (const lightdesk::Error& e) {
    throw StateRefused("checkpoint " + std::to_string(checkpoint_id) + " cannot be loaded: " + e.what());
  }
}

}  // namespace

void Store::load_checkpoint(std::int64_t checkpoint_id, Session& session, const std::string& system_prompt) {
  refusing(checkpoint_id, [&] {
    const auto record = impl_->query_all<CheckpointRecord>(
        std::string("SELECT ") + kCheckpointColumns + " WHERE c.id = ?", read_checkpoint_record, checkpoint_id);
    if (record.empty()) throw StateRefused("checkpoint " + std::to_string(checkpoint_id) + " does not exist");
    Session::Import import = session.begin_import(record.front().position);
    const auto tokens = impl_->read(
        checkpoint_id, session.model().info(), [&import](const StatePart& part) { import.add(part); }, system_prompt);
    import.commit(tokens);
  });
}

std::vector<TokenId> Store::read_checkpoint(std::int64_t checkpoint_id, const ModelInfo& model,
                                            const std::function<void(const StatePart&)>& sink,
                                            const std::string& system_prompt) {
  return refusing(checkpoint_id, [&] { return impl_->read(checkpoint_id, model, sink, system_prompt); });
}

namespace {

// A K/V row of a checkpoint being read, and where its bytes are.
struct KvRow {
  StatePart part;
  std::int64_t rowid = 0, checksum = 0;
  std::optional<std::string> file;  // its span's file, if the span has one
  std::optional<std::int64_t> file_offset;
  std::string what;  // for messages: "keys of layer 3 at positions 0+20"
};

// Reads the rows that are in span files ahead of the caller, on a thread of its own, into two
// buffers in turn: the disk, the checksum and the caller's use of the previous row (an upload
// to a GPU) overlap. `read_row(row, next, into)` reads and checks one row (next: the file row
// after it, to ask the disk for); its exceptions reach the caller at take().
class KvFileRowReader {
 public:
  using ReadRow = std::function<void(const KvRow& row, const KvRow* next, std::vector<std::byte>& into)>;

  KvFileRowReader(const std::vector<KvRow>& rows, ReadRow read_row)
      : rows_(rows), read_row_(std::move(read_row)), thread_([this] { run(); }) {}
  ~KvFileRowReader() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  KvFileRowReader(const KvFileRowReader&) = delete;
  KvFileRowReader& operator=(const KvFileRowReader&) = delete;

  // The bytes of file row `index` (taken in increasing order), valid until the next take.
  std::span<const std::byte> take(std::size_t index) {
    std::unique_lock lock(mutex_);
    if (taken_) {
      slots_[*taken_].index.reset();
      taken_.reset();
      changed_.notify_all();
    }
    Slot* slot = nullptr;
    changed_.wait(lock, [&] {
      for (Slot& s : slots_)
        if (s.index == index && s.ready) slot = &s;
      return slot != nullptr;
    });
    if (slot->error) std::rethrow_exception(slot->error);
    taken_ = static_cast<std::size_t>(slot - slots_);
    return slot->bytes;
  }

 private:
  struct Slot {
    std::optional<std::size_t> index;  // the row it holds or is being filled with; none: free
    bool ready = false;
    std::exception_ptr error;
    std::vector<std::byte> bytes;
  };

  void run() {
    std::size_t turn = 0;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (!rows_[i].file) continue;
      const KvRow* next = nullptr;
      for (std::size_t j = i + 1; j < rows_.size() && !next; ++j)
        if (rows_[j].file) next = &rows_[j];
      Slot& slot = slots_[turn++ % 2];
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return !slot.index || stop_; });
        if (stop_) return;
        slot.index = i;
        slot.ready = false;
        slot.error = nullptr;
      }
      std::exception_ptr error;
      try {
        read_row_(rows_[i], next, slot.bytes);
      } catch (...) {
        error = std::current_exception();
      }
      {
        const std::lock_guard lock(mutex_);
        slot.ready = true;
        slot.error = error;
      }
      changed_.notify_all();
      if (error) return;
    }
  }

  const std::vector<KvRow>& rows_;
  ReadRow read_row_;
  std::mutex mutex_;
  std::condition_variable changed_;
  Slot slots_[2];
  std::optional<std::size_t> taken_;  // the slot the caller holds
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is ready
};

}  // namespace

std::vector<TokenId> Store::Impl::read(std::int64_t checkpoint_id, const ModelInfo& info,
                                       const std::function<void(const StatePart&)>& sink,
                                       const std::string& system_prompt) {
  const std::string name = "checkpoint " + std::to_string(checkpoint_id);
  auto records = query_all<CheckpointRecord>(std::string("SELECT ") + kCheckpointColumns + " WHERE c.id = ?",
                                             read_checkpoint_record, checkpoint_id);
  if (records.empty()) throw StateRefused(name + " does not exist");
  const CheckpointRecord& record = records.front();
  if (!record.complete) throw StateRefused(name + " is incomplete (its writer stopped before finishing it)");
  if (record.model_fingerprint != info.state_identity()) {
    // The same checkpoint with other experts: say which.
    const std::size_t slash = record.model_fingerprint.find('/');
    if (record.model_fingerprint.substr(0, slash) == info.fingerprint)
      throw StateRefused(name + " was computed with " +
                         (slash == std::string::npos ? std::string("bf16") : record.model_fingerprint.substr(slash + 1)) +
                         " experts; " + info.directory.string() + " runs " + expert_format_name(info.expert_format) +
                         " experts");
    throw StateRefused(name + " was saved by another model (fingerprint " + record.model_fingerprint +
                       "), not by " + info.directory.string() + " (fingerprint " + info.state_identity() + ")");
  }
  if (record.experts != info.experts)
    throw StateRefused(name + " was computed with " + record.experts.describe() + ", not with " +
                       info.experts.describe());
  if (const std::string mismatch = system_prompt_mismatch(name, record.system_prompt, system_prompt); !mismatch.empty())
    throw StateRefused(mismatch);
  // Layout version 1 (float32 throughout) reads as version 2 with f32 rows.
  if ((record.layout_version != StatePart::kLayoutVersion && record.layout_version != 1) ||
      !parse_state_dtype(record.dtype))
    throw StateRefused(name + " has state layout version " + std::to_string(record.layout_version) + " (" +
                       record.dtype + "); this build reads versions 1 and " +
                       std::to_string(StatePart::kLayoutVersion) + " (f32 or bf16 K/V)");
  const auto token_blob = verified_tokens_blob(checkpoint_id);
  std::vector<TokenId> tokens(token_blob.size() / sizeof(TokenId));
  std::memcpy(tokens.data(), token_blob.data(), token_blob.size());

  std::vector<std::byte> buffer;
  // Reads one part's row into `buffer` through incremental blob I/O, checks its size and
  // checksum, and points the part at it.
  const auto read_row = [&](const char* table, std::int64_t rowid, StatePart& part, std::int64_t checksum,
                            const std::string& what) {
    sql::Blob blob(db, table, "data", rowid, false);
    if (blob.size() != part.bytes())
      throw StateRefused(name + ": " + what + " holds " + std::to_string(blob.size()) + " bytes, its shape says " +
                         std::to_string(part.bytes()));
    buffer.resize(static_cast<std::size_t>(part.bytes()));
    blob.read(0, buffer);
    if (checksum_of(buffer) != checksum) throw StateRefused(name + ": " + what + " is damaged (checksum mismatch)");
    part.data = buffer;
  };

  sql::Statement lightning(db,
                           "SELECT id, layer, heads, key_dim, value_dim, checksum FROM lightning_states "
                           "WHERE checkpoint_id = ? ORDER BY layer");
  lightning.bind_all(checkpoint_id);
  while (lightning.step()) {
    StatePart part;
    part.kind = StatePartKind::LightningState;
    part.layer = static_cast<int>(lightning.int64(1));
    part.position = record.position;
    part.shape = {lightning.int64(2), lightning.int64(3), lightning.int64(4)};
    read_row("lightning_states", lightning.int64(0), part, lightning.int64(5),
             "lightning state of layer " + std::to_string(part.layer));
    sink(part);
  }

  // The rows first (a few thousand at most), in export order: each span file is read from start
  // to end, ahead of the sink (KvFileRowReader).
  std::vector<KvRow> rows;
  sql::Statement kv(db,
                    "SELECT r.id, r.layer, r.kind, r.first_token, r.token_count, r.kv_heads, r.head_dim, r.checksum, "
                    "r.dtype, s.file, r.file_offset "
                    "FROM checkpoint_spans cs JOIN kv_spans s ON s.id = cs.span_id JOIN kv_rows r ON r.span_id = s.id "
                    "WHERE cs.checkpoint_id = ? ORDER BY r.layer, r.first_token, r.kind");
  kv.bind_all(checkpoint_id);
  while (kv.step()) {
    KvRow& row = rows.emplace_back();
    StatePart& part = row.part;
    part.kind = static_cast<StatePartKind>(kv.int64(2));
    part.layer = static_cast<int>(kv.int64(1));
    part.position = record.position;
    part.first_token = kv.int64(3);
    part.token_count = kv.int64(4);
    part.shape = {kv.int64(5), part.token_count, kv.int64(6)};
    row.what = std::string(part.kind == StatePartKind::SoftmaxKeys ? "keys" : "values") + " of layer " +
               std::to_string(part.layer) + " at positions " + std::to_string(part.first_token) + "+" +
               std::to_string(part.token_count);
    const auto dtype = parse_state_dtype(kv.text(8));
    if (!dtype) throw StateRefused(name + ": " + row.what + " has an unknown element type \"" + kv.text(8) + "\"");
    part.dtype = *dtype;
    row.rowid = kv.int64(0);
    row.checksum = kv.int64(7);
    if (!kv.is_null(9)) row.file = kv.text(9);
    if (!kv.is_null(10)) row.file_offset = kv.int64(10);
    if (row.file.has_value() != row.file_offset.has_value())
      throw StateRefused(name + ": " + row.what + " names " + (row.file ? "a file but no place in it" : "a place in no file"));
  }
  kv.reset();

  // Runs on the reader's thread.
  std::map<std::string, KvFileReader> files;
  const auto file_of = [&](const KvRow& row) -> const KvFileReader& {
    auto found = files.find(*row.file);
    if (found != files.end()) return found->second;
    const auto path = kv_files.file(*row.file);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
      throw StateRefused(name + ": the file of its " + row.what + " is missing (" + path.string() + ")");
    return files.try_emplace(*row.file, path).first->second;
  };
  KvFileRowReader ahead(rows, [&](const KvRow& row, const KvRow* next, std::vector<std::byte>& into) {
    if (next) file_of(*next).prefetch(*next->file_offset, next->part.bytes());
    into.resize(static_cast<std::size_t>(row.part.bytes()));
    if (file_of(row).read(*row.file_offset, into) != row.part.bytes())
      throw StateRefused(name + ": " + row.what + " is cut short: its file " + kv_files.file(*row.file).string() +
                         " ends before its bytes");
    if (checksum_of(into) != row.checksum) throw StateRefused(name + ": " + row.what + " is damaged (checksum mismatch)");
  });
  for (std::size_t i = 0; i < rows.size(); ++i) {
    KvRow& row = rows[i];
    if (row.file) row.part.data = ahead.take(i);
    else read_row("kv_rows", row.rowid, row.part, row.checksum, row.what);
    sink(row.part);
  }
  return tokens;
}

void Store::delete_checkpoint(std::int64_t checkpoint_id) {
  std::vector<std::string> files;
  {
    sql::Transaction transaction(impl_->db);
    sql::Statement(impl_->db, "DELETE FROM checkpoints WHERE id = ?").bind_all(checkpoint_id).run();
    files = impl_->drop_unused_spans();
    transaction.commit();
  }
  impl_->kv_files.remove(files);
}

void Store::collect_garbage() { impl_->clear_unfinished(std::nullopt); }

std::int64_t Store::checkpoint_bytes(std::int64_t checkpoint_id) {
  sql::Statement query(impl_->db,
                       "SELECT (SELECT coalesce(sum(length(data)), 0) FROM lightning_states WHERE checkpoint_id = ?1) + "
                       "(SELECT coalesce(sum(r.kv_heads * r.token_count * r.head_dim * iif(r.dtype = 'bf16', 2, 4)), 0) "
                       "FROM checkpoint_spans cs JOIN kv_rows r "
                       "ON r.span_id = cs.span_id WHERE cs.checkpoint_id = ?1)");
  query.bind_all(checkpoint_id);
  query.step();
  return query.int64(0);
}

// ---------------------------------------------------------------------------------------------

NamedSessionState::NamedSessionState(const std::filesystem::path& db, const std::string& name, Session& session,
                                     std::int64_t prefill_chunk_tokens, std::string system_prompt)
    : store_(db), session_(session), system_prompt_(std::move(system_prompt)) {
  if (auto record = store_.find_session(name)) {
    session_id_ = record->id;
  } else {
    session_id_ = store_.create_session(name, store_.ensure_model(session.model().info()), name);
  }
  const auto checkpoint = store_.latest_checkpoint(session_id_);
  if (!checkpoint) return;
  // The conversation's messages are not rendered here: a state of another system prompt cannot be
  // recomputed, only refused.
  if (const std::string mismatch =
          system_prompt_mismatch("session \"" + name + "\"", checkpoint->system_prompt, system_prompt_);
      !mismatch.empty())
    throw Error(mismatch + ": continue it with its own system prompt, or start another session");
  base_checkpoint_id_ = checkpoint->id;
  last_message_id_ = checkpoint->message_id;
  try {
    store_.load_checkpoint(checkpoint->id, session, system_prompt_);
    return;
  } catch (const StateRefused& e) {
    notice_ = std::string("session \"") + name + "\": " + e.what();
  }
  // The conversation outlives its state: recompute the state from the stored token ids.
  session.reset();
  try {
    const auto tokens = store_.checkpoint_tokens(checkpoint->id);
    FeedOptions options;
    options.chunk_tokens = prefill_chunk_tokens;
    session.feed(tokens, options);
    notice_ += "; recomputed from its " + std::to_string(tokens.size()) + " token ids";
  } catch (const lightdesk::Error& e) {
    session.reset();
    notice_ += std::string("; its token ids are unusable too (") + e.what() + "), starting from an empty state";
  }
}

std::optional<CheckpointRecord> NamedSessionState::newer_checkpoint() {
  auto latest = store_.latest_checkpoint(session_id_);
  if (!latest || latest->id == base_checkpoint_id_) return std::nullopt;
  return latest;
}

void NamedSessionState::save() {
  const SessionRecord record = store_.session(session_id_);
  if (const auto newer = newer_checkpoint())
    throw Error("session \"" + record.name.value_or(record.title) +
                "\" moved on while this run went on (another process saved it at " +
                std::to_string(newer->position) + " tokens); this run's state is not saved: run again to continue "
                "from there");
  base_checkpoint_id_ = store_.save_checkpoint(session_id_, session_, std::nullopt, system_prompt_);
}

std::int64_t NamedSessionState::save_exchange(Message question, Message answer) {
  question.session_id = answer.session_id = session_id_;
  question.role = Role::User;
  answer.role = Role::Assistant;
  question.parent_id = last_message_id_;
  notice_.clear();
  if (newer_checkpoint()) {
    const SessionRecord record = store_.session(session_id_);
    notice_ = "session \"" + record.name.value_or(record.title) +
              "\" moved on while this run went on (another process answered in it); this answer is kept as a "
              "branch beside that one";
  }
  answer.parent_id = store_.add_message(question);
  last_message_id_ = store_.add_message(answer);
  base_checkpoint_id_ = store_.save_checkpoint(session_id_, session_, last_message_id_, system_prompt_);
  return *last_message_id_;
}


void Store::save_expert_pattern(const ExpertPattern& pattern) {
  sql::Database& db = impl_->db;
  sql::Transaction transaction(db);
  sql::Statement(db, "DELETE FROM expert_patterns WHERE model_fingerprint = ? AND task = ?")
      .bind_all(pattern.model_fingerprint, pattern.task)
      .run();
  sql::Statement(db,
                 "INSERT INTO expert_patterns(model_fingerprint, task, score, tcess_top_k, tcess_confidence, "
                 "calibration_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
      .bind_all(pattern.model_fingerprint, pattern.task, std::string(expert_score_name(pattern.score)),
                std::int64_t{pattern.rule.top_k}, double{pattern.rule.confidence}, pattern.calibration_tokens,
                now_seconds())
      .run();
  const std::int64_t id = db.last_insert_rowid();
  sql::Statement rank(db, "INSERT INTO expert_pattern_ranks(pattern_id, layer, rank, expert, score) VALUES (?, ?, ?, ?, ?)");
  for (std::size_t l = 0; l < pattern.layers.size(); ++l)
    for (std::size_t r = 0; r < pattern.layers[l].size(); ++r) {
      const RankedExpert& e = pattern.layers[l][r];
      rank.bind_all(id, static_cast<std::int64_t>(l), static_cast<std::int64_t>(r), std::int64_t{e.expert}, e.score)
          .run();
      rank.reset();
    }
  transaction.commit();
}

std::vector<ExpertPattern> Store::expert_patterns(const std::optional<std::string>& model_fingerprint) {
  struct Row {
    std::int64_t id;
    ExpertPattern pattern;
  };
  auto rows = impl_->query_all<Row>(
      "SELECT id, model_fingerprint, task, score, tcess_top_k, tcess_confidence, calibration_tokens "
      "FROM expert_patterns WHERE ?1 IS NULL OR model_fingerprint = ?1 ORDER BY model_fingerprint, task",
      [](const sql::Statement& row) {
        Row r;
        std::string score;
        std::int64_t top_k = 0;
        double confidence = 0.0;
        row.columns(r.id, r.pattern.model_fingerprint, r.pattern.task, score, top_k, confidence,
                    r.pattern.calibration_tokens);
        r.pattern.score = parse_expert_score(score).value_or(ExpertScore::MeanProbability);
        r.pattern.rule = {static_cast<int>(top_k), static_cast<float>(confidence)};
        return r;
      },
      model_fingerprint);
  std::vector<ExpertPattern> patterns;
  sql::Statement ranks(impl_->db,
                       "SELECT layer, expert, score FROM expert_pattern_ranks WHERE pattern_id = ? ORDER BY layer, rank");
  for (Row& r : rows) {
    ranks.bind_all(r.id);
    while (ranks.step()) {
      const auto layer = static_cast<std::size_t>(ranks.int64(0));
      if (layer >= r.pattern.layers.size()) r.pattern.layers.resize(layer + 1);
      RankedExpert e;
      std::int64_t expert = 0;
      std::int64_t ignored_layer = 0;
      ranks.columns(ignored_layer, expert, e.score);
      e.expert = static_cast<int>(expert);
      r.pattern.layers[layer].push_back(e);
    }
    ranks.reset();
    patterns.push_back(std::move(r.pattern));
  }
  return patterns;
}

std::optional<ExpertPattern> Store::expert_pattern(const std::string& model_fingerprint, const std::string& task) {
  for (ExpertPattern& p : expert_patterns(model_fingerprint))
    if (p.task == task) return std::move(p);
  return std::nullopt;
}

int Store::import_shipped_patterns(const std::filesystem::path& model_directory, const std::string& model_fingerprint) {
  const std::filesystem::path file = model_directory / "expert_patterns.json";
  if (!std::filesystem::exists(file)) return 0;
  constexpr std::uint64_t kMaxPatternFileBytes = 64 << 20;
  int imported = 0;
  for (const ExpertPattern& p :
       parse_expert_patterns_json(read_regular_file(file, kMaxPatternFileBytes), file.string()))
    if (p.model_fingerprint == model_fingerprint && !expert_pattern(model_fingerprint, p.task)) {
      save_expert_pattern(p);
      ++imported;
    }
  return imported;
}

std::string expert_patterns_json(std::span<const ExpertPattern> patterns) {
  nlohmann::json list = nlohmann::json::array();
  for (const ExpertPattern& p : patterns) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& ranked : p.layers) {
      nlohmann::json layer = nlohmann::json::array();
      for (const RankedExpert& e : ranked) layer.push_back({e.expert, e.score});
      layers.push_back(std::move(layer));
    }
    list.push_back({{"task", p.task},
                    {"model_fingerprint", p.model_fingerprint},
                    {"score", expert_score_name(p.score)},
                    {"tcess_top_k", p.rule.top_k},
                    {"tcess_confidence", p.rule.confidence},
                    {"calibration_tokens", p.calibration_tokens},
                    {"layers", std::move(layers)}});
  }
  return nlohmann::json{{"patterns", std::move(list)}}.dump(1) + "\n";
}

std::vector<ExpertPattern> parse_expert_patterns_json(const std::string& text, const std::string& source) {
  try {
    const nlohmann::json root = nlohmann::json::parse(text);
    std::vector<ExpertPattern> patterns;
    for (const nlohmann::json& p : root.at("patterns")) {
      ExpertPattern pattern;
      pattern.task = p.at("task").get<std::string>();
      pattern.model_fingerprint = p.at("model_fingerprint").get<std::string>();
      const auto score = parse_expert_score(p.at("score").get<std::string>());
      if (!score) throw Error("pattern \"" + pattern.task + "\" has an unknown score");
      pattern.score = *score;
      pattern.rule = {p.at("tcess_top_k").get<int>(), p.at("tcess_confidence").get<float>()};
      pattern.calibration_tokens = p.at("calibration_tokens").get<std::int64_t>();
      for (const nlohmann::json& layer : p.at("layers")) {
        std::vector<RankedExpert> ranked;
        for (const nlohmann::json& e : layer) ranked.push_back({e.at(0).get<int>(), e.at(1).get<double>()});
        pattern.layers.push_back(std::move(ranked));
      }
      patterns.push_back(std::move(pattern));
    }
    return patterns;
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": not an expert pattern file (" + e.what() + ")");
  } catch (const lightdesk::Error& e) {
    throw Error(source + ": " + e.what());
  }
}

std::string system_prompt_mismatch(const std::string& name, const std::string& saved, const std::string& wanted) {
  if (saved == wanted) return {};
  // Long prompts are named by their beginning (cut between characters): enough to tell them apart.
  const auto quoted = [](const std::string& prompt) {
    std::size_t cut = std::min<std::size_t>(prompt.size(), 60);
    while (cut > 0 && cut < prompt.size() && (static_cast<unsigned char>(prompt[cut]) & 0xC0) == 0x80) --cut;
    std::string shown = prompt.substr(0, cut);
    std::replace(shown.begin(), shown.end(), '\n', ' ');
    return "the system prompt \u201c" + shown + (cut < prompt.size() ? "\u2026" : "") + "\u201d";
  };
  return name + " was computed " + (saved.empty() ? std::string("without a system prompt") : "with " + quoted(saved)) +
         "; the conversation now has " + (wanted.empty() ? std::string("none") : quoted(wanted));
}

std::optional<std::string> expert_selection_json(const ExpertSelection& experts) {
  if (!experts.pruned()) return std::nullopt;
  return nlohmann::json{{"pattern", experts.pattern}, {"kept", experts.kept}}.dump();
}

ExpertSelection parse_expert_selection_json(const std::optional<std::string>& text) {
  ExpertSelection experts;
  if (!text) return experts;
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.contains("pattern") || !j.contains("kept")) {
    experts.pattern = "(unreadable expert selection)";
    experts.kept = {{}};
    return experts;
  }
  try {
    experts.pattern = j.at("pattern").get<std::string>();
    experts.kept = j.at("kept").get<std::vector<std::vector<int>>>();
  } catch (const nlohmann::json::exception&) {
    experts.pattern = "(unreadable expert selection)";
    experts.kept = {{}};
  }
  return experts;
}

}  // namespace lightdesk::store
