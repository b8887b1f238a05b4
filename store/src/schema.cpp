#include "schema.h"

#include <array>
#include <string>

#include "lightdesk/store.h"

namespace lightdesk::store {
namespace {

// Version 1: the conversation data. Times are Unix seconds.
constexpr const char* kConversations = R"sql(
CREATE TABLE models(
  id INTEGER PRIMARY KEY,
  fingerprint TEXT NOT NULL UNIQUE,
  path TEXT NOT NULL,
  model_type TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE sessions(
  id INTEGER PRIMARY KEY,
  name TEXT UNIQUE,
  title TEXT NOT NULL DEFAULT '',
  model_id INTEGER REFERENCES models(id),
  settings TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL);
CREATE TABLE messages(
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
  role TEXT NOT NULL CHECK(role IN ('system', 'user', 'assistant', 'tool')),
  text TEXT NOT NULL DEFAULT '',
  reasoning TEXT NOT NULL DEFAULT '',
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  prefill_seconds REAL,
  generation_seconds REAL,
  created_at INTEGER NOT NULL);
CREATE INDEX messages_by_session ON messages(session_id, id);
CREATE INDEX messages_by_parent ON messages(parent_id);
CREATE TABLE documents(
  id INTEGER PRIMARY KEY,
  session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
  source_path TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  mime_type TEXT NOT NULL,
  token_count INTEGER,
  text TEXT NOT NULL DEFAULT '',
  text_ref TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL);
CREATE INDEX documents_by_session ON documents(session_id);
CREATE TABLE images(
  id INTEGER PRIMARY KEY,
  session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
  message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
  source_path TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  mime_type TEXT NOT NULL,
  width INTEGER,
  height INTEGER,
  token_count INTEGER,
  created_at INTEGER NOT NULL);
CREATE INDEX images_by_session ON images(session_id);
)sql";

// Version 2: saved model state. A checkpoint's softmax K/V come from the spans it references
// (checkpoint_spans); a span covers positions [first_token, first_token + token_count) of one
// token prefix (prefix_hash: XXH3-128 of the int32 token ids [0, first_token + token_count)),
// stored as rows of whole positions per layer and side. Checksums are XXH3-64 of the row bytes.
constexpr const char* kCheckpoints = R"sql(
CREATE TABLE checkpoints(
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
  model_id INTEGER NOT NULL REFERENCES models(id),
  position INTEGER NOT NULL,
  layout_version INTEGER NOT NULL,
  dtype TEXT NOT NULL,
  tokens BLOB NOT NULL,
  tokens_checksum INTEGER NOT NULL,
  complete INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL);
CREATE INDEX checkpoints_by_session ON checkpoints(session_id, complete, id);
CREATE INDEX checkpoints_by_message ON checkpoints(message_id);
CREATE TABLE lightning_states(
  id INTEGER PRIMARY KEY,
  checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
  layer INTEGER NOT NULL,
  heads INTEGER NOT NULL,
  key_dim INTEGER NOT NULL,
  value_dim INTEGER NOT NULL,
  checksum INTEGER NOT NULL,
  data BLOB NOT NULL,
  UNIQUE(checkpoint_id, layer));
CREATE TABLE kv_spans(
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model_id INTEGER NOT NULL REFERENCES models(id),
  first_token INTEGER NOT NULL,
  token_count INTEGER NOT NULL,
  prefix_hash BLOB NOT NULL,
  complete INTEGER NOT NULL DEFAULT 0);
CREATE INDEX kv_spans_by_start ON kv_spans(session_id, first_token);
CREATE TABLE kv_rows(
  id INTEGER PRIMARY KEY,
  span_id INTEGER NOT NULL REFERENCES kv_spans(id) ON DELETE CASCADE,
  layer INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  first_token INTEGER NOT NULL,
  token_count INTEGER NOT NULL,
  kv_heads INTEGER NOT NULL,
  head_dim INTEGER NOT NULL,
  checksum INTEGER NOT NULL,
  data BLOB NOT NULL,
  UNIQUE(span_id, layer, kind, first_token));
CREATE TABLE checkpoint_spans(
  checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
  span_id INTEGER NOT NULL REFERENCES kv_spans(id),
  PRIMARY KEY(checkpoint_id, span_id));
CREATE INDEX checkpoint_spans_by_span ON checkpoint_spans(span_id);
)sql";

// Version 3: full-text search (external-content FTS5 tables kept in step by triggers).
constexpr const char* kSearch = R"sql(
CREATE VIRTUAL TABLE messages_fts USING fts5(text, reasoning, content='messages', content_rowid='id');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
  INSERT INTO messages_fts(rowid, text, reasoning) VALUES (new.id, new.text, new.reasoning);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
  INSERT INTO messages_fts(messages_fts, rowid, text, reasoning) VALUES ('delete', old.id, old.text, old.reasoning);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF text, reasoning ON messages BEGIN
  INSERT INTO messages_fts(messages_fts, rowid, text, reasoning) VALUES ('delete', old.id, old.text, old.reasoning);
  INSERT INTO messages_fts(rowid, text, reasoning) VALUES (new.id, new.text, new.reasoning);
END;
CREATE VIRTUAL TABLE documents_fts USING fts5(text, source_path, content='documents', content_rowid='id');
CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
  INSERT INTO documents_fts(rowid, text, source_path) VALUES (new.id, new.text, new.source_path);
END;
CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
  INSERT INTO documents_fts(documents_fts, rowid, text, source_path) VALUES ('delete', old.id, old.text, old.source_path);
END;
CREATE TRIGGER documents_fts_update AFTER UPDATE OF text, source_path ON documents BEGIN
  INSERT INTO documents_fts(documents_fts, rowid, text, source_path) VALUES ('delete', old.id, old.text, old.source_path);
  INSERT INTO documents_fts(rowid, text, source_path) VALUES (new.id, new.text, new.source_path);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
INSERT INTO documents_fts(documents_fts) VALUES ('rebuild');
)sql";

// Version 4: a document names the message it was sent with, as an image does. The desktop app
// kept that link in the session's settings ({"attachments": [{"message": m, "document": d}]})
// before this column existed: those links fill it.
constexpr const char* kDocumentMessages = R"sql(
ALTER TABLE documents ADD COLUMN message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL;
CREATE INDEX documents_by_message ON documents(message_id);
UPDATE documents SET message_id = (
  SELECT json_extract(link.value, '$.message')
  FROM sessions s, json_each(iif(json_valid(s.settings), s.settings, '{}'), '$.attachments') link
  WHERE s.id = documents.session_id AND json_extract(link.value, '$.document') = documents.id
    AND json_extract(link.value, '$.message') IN (SELECT id FROM messages WHERE session_id = s.id));
)sql";

// Version 5: a PDF document keeps where its pages start in the text (a JSON array of byte
// offsets). The desktop app kept them in the session's settings before, beside the links that
// version 4 moved into documents.message_id: both leave the settings.
constexpr const char* kDocumentPages = R"sql(
ALTER TABLE documents ADD COLUMN page_offsets TEXT;
UPDATE documents SET page_offsets = (
  SELECT json_extract(link.value, '$.page_offsets')
  FROM sessions s, json_each(iif(json_valid(s.settings), s.settings, '{}'), '$.attachments') link
  WHERE s.id = documents.session_id AND json_extract(link.value, '$.document') = documents.id
    AND json_type(link.value, '$.page_offsets') = 'array');
UPDATE sessions SET settings = json_remove(settings, '$.attachments')
  WHERE json_valid(settings) AND json_type(settings, '$.attachments') IS NOT NULL;
)sql";

// Version 6: K/V rows keep the element type they were given (StatePart layout version 2: bf16 from
// the CUDA backend, f32 from the CPU); rows written before are f32. checkpoints.dtype names the
// type of the K/V its saver exported; the rows' own types are what reading follows, since a
// checkpoint may reuse spans saved in the other type.
constexpr const char* kKvRowTypes = R"sql(
ALTER TABLE kv_rows ADD COLUMN dtype TEXT NOT NULL DEFAULT 'f32';
)sql";

// Version 7: a large K/V span lives in a file beside the database (<database>.kv/<file>, named
// by kv_spans.file), its rows at file_offset in it with an empty data blob; spans written before
// keep their rows' bytes in the blobs (file and file_offset NULL).
constexpr const char* kKvFiles = R"sql(
ALTER TABLE kv_spans ADD COLUMN file TEXT;
ALTER TABLE kv_rows ADD COLUMN file_offset INTEGER;
)sql";

// Version 8: task expert patterns (PreMoe): per model fingerprint and task, the score they rank
// by ('tcess' with its top-k and confidence, or 'mean-probability'), the calibration tokens, and
// per layer every expert by rank. A pruned model's state differs from the full model's: a
// checkpoint and a K/V span record the expert selection they were computed with (JSON
// {"pattern": task, "kept": [[ids] per layer]}; NULL: all experts), and an assistant message the
// mean share of router probability mass its turn lost to experts not held.
constexpr const char* kExpertPatterns = R"sql(
CREATE TABLE expert_patterns(
  id INTEGER PRIMARY KEY,
  model_fingerprint TEXT NOT NULL,
  task TEXT NOT NULL,
  score TEXT NOT NULL CHECK(score IN ('tcess', 'mean-probability')),
  tcess_top_k INTEGER NOT NULL,
  tcess_confidence REAL NOT NULL,
  calibration_tokens INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE(model_fingerprint, task));
CREATE TABLE expert_pattern_ranks(
  pattern_id INTEGER NOT NULL REFERENCES expert_patterns(id) ON DELETE CASCADE,
  layer INTEGER NOT NULL,
  rank INTEGER NOT NULL,
  expert INTEGER NOT NULL,
  score REAL NOT NULL,
  PRIMARY KEY(pattern_id, layer, rank)) WITHOUT ROWID;
ALTER TABLE checkpoints ADD COLUMN expert_selection TEXT;
ALTER TABLE kv_spans ADD COLUMN expert_selection TEXT;
ALTER TABLE messages ADD COLUMN expert_lost_mass REAL;
)sql";

// Version 9: a checkpoint records the system prompt its state was computed with (it is in the
// state's prefix): a restore under another one is refused. Checkpoints written before had none.
// K/V spans need no such column: their prefix hash covers the system prompt's tokens.
constexpr const char* kSystemPrompts = R"sql(
ALTER TABLE checkpoints ADD COLUMN system_prompt TEXT NOT NULL DEFAULT '';
)sql";

constexpr std::array<const char*, kSchemaVersion> kSteps = {kConversations,     kCheckpoints,   kSearch,
                                                            kDocumentMessages,  kDocumentPages, kKvRowTypes,
                                                            kKvFiles,           kExpertPatterns, kSystemPrompts};

}  // namespace

int user_version(sql::Database& db) {
  sql::Statement query(db, "PRAGMA user_version");
  query.step();
  // user_version is a signed 32-bit field, so this never narrows.
  return static_cast<int>(query.int64(0));
}

void migrate(sql::Database& db, int target) {
  if (target < 0 || target > kSchemaVersion) db.fail_plain("no schema version " + std::to_string(target));
  // A file already at the target (every open after the first) is left without taking the write
  // lock, which would wait behind, and stall, another connection's writes.
  if (const int version = user_version(db); version >= target && version <= kSchemaVersion) return;
  for (;;) {
    sql::Transaction transaction(db);
    // Read inside the write transaction so two connections opening a new file do not both
    // apply a step.
    const int version = user_version(db);
    if (version < 0)
      db.fail_plain("not a Lightdesk session database, or a damaged one (schema version " + std::to_string(version) +
                    ")");
    if (version > kSchemaVersion)
      db.fail_plain("written by a newer Lightdesk (schema version " + std::to_string(version) +
                    "; this build knows up to " + std::to_string(kSchemaVersion) + ")");
    if (version >= target) return;
    db.exec(kSteps[static_cast<std::size_t>(version)]);
    db.exec(("PRAGMA user_version = " + std::to_string(version + 1)).c_str());
    transaction.commit();
  }
}

}  // namespace lightdesk::store
