// Where the window keeps its chat sessions. The window only sees this interface: the
// in-memory implementation serves until the SQLite store (its own issue) implements it too.
#pragma once

#include <QDateTime>
#include <QList>
#include <QString>

#include <map>
#include <optional>

namespace lightdesk::gui {

struct ChatEntry {
  enum class Role { User, Assistant };
  Role role = Role::User;
  QString text;         // what the window shows
  QString prompt_text;  // what the model reads: the user's text with the documents sent with it
  QString reasoning;    // M1's <think> part of an answer
  QStringList attachment_names;  // documents sent with this user message
};

struct Attachment {
  QString path;
  QString text;
  QList<qint64> page_offsets;  // PDF: byte offset in the UTF-8 text where each page starts
  qint64 tokens = 0;
  bool sent = false;  // already part of a message in the conversation
};

struct ChatSession {
  qint64 id = 0;
  QString title;
  QDateTime last_used;
  QList<ChatEntry> entries;
  QList<Attachment> attachments;
};

class SessionRepository {
 public:
  virtual ~SessionRepository() = default;
  // All sessions, most recently used first (entries and attachments left empty).
  virtual QList<ChatSession> list() const = 0;
  virtual std::optional<ChatSession> load(qint64 id) const = 0;
  // Creates an empty session and returns it with its new id.
  virtual ChatSession create(const QString& title) = 0;
  // Replaces the stored session of the same id.
  virtual void save(const ChatSession& session) = 0;
  virtual void remove(qint64 id) = 0;
};

class InMemorySessionRepository final : public SessionRepository {
 public:
  QList<ChatSession> list() const override;
  std::optional<ChatSession> load(qint64 id) const override;
  ChatSession create(const QString& title) override;
  void save(const ChatSession& session) override;
  void remove(qint64 id) override;

 private:
  std::map<qint64, ChatSession> sessions_;
  qint64 next_id_ = 1;
};

}  // namespace lightdesk::gui
