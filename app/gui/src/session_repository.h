// Where the window keeps its chat sessions and their engine states. The window only sees this
// interface, shaped like an append-only conversation log so that the SQLite store
// (store/include/lightdesk/store.h, whose messages and documents are added, never edited) can
// implement it: an edited message or a regenerated answer starts a new branch, and the session
// shows its newest branch.
#pragma once

#include <QDateTime>
#include <QList>
#include <QObject>
#include <QString>
#include <QStringList>

#include <functional>
#include <map>
#include <optional>

#include "engine_state.h"
#include "sampling_settings.h"

namespace lightdesk::gui {

struct Attachment {
  QString path;
  QString text;
  QList<qint64> page_offsets;  // PDF: byte offset in the UTF-8 text where each page starts
  qint64 tokens = 0;
};

struct ChatEntry {
  enum class Role { User, Assistant };
  Role role = Role::User;
  QString text;
  QString reasoning;             // M1's <think> part of an answer
  QList<Attachment> documents;   // sent with this user message; the model reads them before it
  QStringList images;            // sent with this user message (paths): a VL-01 model sees them first
};

struct ChatSession {
  qint64 id = 0;
  QString title;
  QDateTime last_used;
  QList<ChatEntry> entries;
  std::optional<SamplingSettings> sampling;  // the session's own; none: its model family's
  QString system_prompt;                     // before every render of its conversation; empty: none
};

// A search result: a message of a session (or the session itself, for a match in its title, a
// document or an earlier branch).
struct MessageHit {
  qint64 session = 0;
  qsizetype entry = -1;  // index in the session's shown branch; -1 when no shown message matched
  QString snippet;
  // The message matched (showBranchOf), on whatever branch; -1 for a title or document match.
  qsizetype message = -1;
};

// Where a message stands among its siblings (the messages that follow the same parent: an
// edited question, a regenerated answer's question).
struct SiblingPlace {
  int index = 1;  // 1-based, oldest first
  int count = 1;
};

// A saved engine state found for a session: the state after its first `entries` entries, or
// why none could be used.
struct StateLoad {
  SavedStatePtr state;  // null when none was saved or `refused` says why it cannot be used
  qsizetype entries = 0;
  double seconds = 0.0;  // finding it (a store checkpoint is read as the engine imports it)
  QString refused;       // a damaged state, another model's, an unreadable database
};

class SessionRepository : public QObject {
  Q_OBJECT

 public:
  ~SessionRepository() override = default;
  // All sessions, most recently used first (entries left empty).
  virtual QList<ChatSession> list() const = 0;
  virtual std::optional<ChatSession> load(qint64 id) const = 0;
  // Creates an empty session and returns it with its new id.
  virtual ChatSession create(const QString& title) = 0;
  virtual void rename(qint64 id, const QString& title) = 0;
  // The session's own sampling, or none to follow its model family's.
  virtual void setSampling(qint64 id, const std::optional<SamplingSettings>& sampling) = 0;
  // The session's system prompt (empty: none).
  virtual void setSystemPrompt(qint64 id, const QString& prompt) = 0;
  virtual void remove(qint64 id) = 0;
  // Appends a finished message (a question with its documents, or a complete answer) and marks
  // the session used now.
  virtual void append(qint64 id, const ChatEntry& entry) = 0;
  // The session continues after its first `keep` entries: the next append follows them, and
  // the entries after them are kept (the store) as an earlier branch no longer shown.
  virtual void branch(qint64 id, qsizetype keep) = 0;
  // Where shown entry `entry` stands among its siblings.
  virtual SiblingPlace siblings(qint64 id, qsizetype entry) const = 0;
  // Shows sibling `index` of shown entry `entry` and, after it, the branch that ends at its
  // newest descendant; returns the session as now shown.
  virtual std::optional<ChatSession> showSibling(qint64 id, qsizetype entry, int index) = 0;
  // Shows the branch through message `message` (a MessageHit's) and its newest descendant;
  // returns the session as now shown and the message's entry in it.
  virtual std::optional<std::pair<ChatSession, qsizetype>> showBranchOf(qint64 id, qsizetype message) = 0;
  // Messages and sessions that match `query` (words, each also as a prefix), best first,
  // given to `done` later on `context`'s thread (the store: FTS5).
  virtual void search(const QString& query, QObject* context, std::function<void(const QList<MessageHit>&)> done) = 0;

  // Keeps `state` as the engine state after the session's first `entries` entries (a finished
  // answer), without making the caller wait for the disk. A state holding only the K/V after
  // its kv_first continues the one saved last; when that one is not kept, writeFailed says so.
  virtual void saveState(qint64 id, qsizetype entries, EngineStatePtr state) = 0;
  // Finds the newest state saved after at most `entries` entries of the session's shown
  // branch and calls `done` with it (or why none can be used) later, on `context`'s thread.
  virtual void loadState(qint64 id, qsizetype entries, const ModelInfo& model, QObject* context,
                         std::function<void(const StateLoad&)> done) = 0;

 signals:
  // A change could not be written (a full disk, a read-only file); the window still shows it.
  void writeFailed(const QString& message);
};

class InMemorySessionRepository final : public SessionRepository {
 public:
  QList<ChatSession> list() const override;
  std::optional<ChatSession> load(qint64 id) const override;
  ChatSession create(const QString& title) override;
  void rename(qint64 id, const QString& title) override;
  void setSampling(qint64 id, const std::optional<SamplingSettings>& sampling) override;
  void setSystemPrompt(qint64 id, const QString& prompt) override;
  void remove(qint64 id) override;
  void append(qint64 id, const ChatEntry& entry) override;
  void branch(qint64 id, qsizetype keep) override;
  SiblingPlace siblings(qint64 id, qsizetype entry) const override;
  std::optional<ChatSession> showSibling(qint64 id, qsizetype entry, int index) override;
  std::optional<std::pair<ChatSession, qsizetype>> showBranchOf(qint64 id, qsizetype message) override;
  // Case-insensitive substring match over every branch, most recently used session first.
  void search(const QString& query, QObject* context, std::function<void(const QList<MessageHit>&)> done) override;
  void saveState(qint64 id, qsizetype entries, EngineStatePtr state) override;
  void loadState(qint64 id, qsizetype entries, const ModelInfo& model, QObject* context,
                 std::function<void(const StateLoad&)> done) override;
  // A message of a stored session and the message it follows (-1: the first), in the order
  // they were added.
  struct Message {
    ChatEntry entry;
    qsizetype parent = -1;
  };
  // Adds a session as it is (id, title, last use) with its messages, showing the branch that
  // ends at the last one, for a repository restoring saved sessions; later new ids follow the
  // highest one.
  void insert(const ChatSession& session, const QList<Message>& messages);
  // The messages (indices in the order added) of the session's shown branch.
  QList<qsizetype> shownMessages(qint64 id) const;

 private:
  QList<MessageHit> matches(const QString& query) const;  // what search() answers
  // Shows the branch through `message` and its newest descendant.
  void showThrough(qint64 id, qsizetype message);

  std::map<qint64, ChatSession> sessions_;  // entries: the shown branch
  struct Tree {
    QList<Message> messages;
    QList<qsizetype> shown;  // the message of each shown entry
  };
  std::map<qint64, Tree> trees_;
  // Per session: the state after a message (of any branch).
  std::map<qint64, std::map<qsizetype, EngineStatePtr>> states_;
  qint64 next_id_ = 1;
};

}  // namespace lightdesk::gui
