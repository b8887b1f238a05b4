// Where the window keeps its chat sessions. The window only sees this interface, shaped like an
// append-only conversation log so that the SQLite store (store/include/lightdesk/store.h, whose
// messages and documents are added, never edited) can implement it; the in-memory
// implementation serves until then.
#pragma once

#include <QDateTime>
#include <QList>
#include <QString>
#include <QStringList>

#include <map>
#include <optional>

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
};

struct ChatSession {
  qint64 id = 0;
  QString title;
  QDateTime last_used;
  QList<ChatEntry> entries;
};

class SessionRepository {
 public:
  virtual ~SessionRepository() = default;
  // All sessions, most recently used first (entries left empty).
  virtual QList<ChatSession> list() const = 0;
  virtual std::optional<ChatSession> load(qint64 id) const = 0;
  // Creates an empty session and returns it with its new id.
  virtual ChatSession create(const QString& title) = 0;
  virtual void rename(qint64 id, const QString& title) = 0;
  virtual void remove(qint64 id) = 0;
  // Appends a finished message (a question with its documents, or a complete answer) and marks
  // the session used now.
  virtual void append(qint64 id, const ChatEntry& entry) = 0;
  // Sessions whose title, messages or documents match `query`, best first (the store: FTS5).
  virtual QList<qint64> search(const QString& query) const = 0;
};

class InMemorySessionRepository final : public SessionRepository {
 public:
  QList<ChatSession> list() const override;
  std::optional<ChatSession> load(qint64 id) const override;
  ChatSession create(const QString& title) override;
  void rename(qint64 id, const QString& title) override;
  void remove(qint64 id) override;
  void append(qint64 id, const ChatEntry& entry) override;
  // Case-insensitive substring match, most recently used first.
  QList<qint64> search(const QString& query) const override;
  // Adds a session as it is (id, last use, entries), for a repository restoring saved sessions;
  // later new ids follow the highest one.
  void insert(const ChatSession& session);

 private:
  std::map<qint64, ChatSession> sessions_;
  qint64 next_id_ = 1;
};

}  // namespace lightdesk::gui
