#include "store_session_repository.h"

#include <QCryptographicHash>
#include <QDir>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QMimeDatabase>
#include <QSettings>
#include <QStandardPaths>
#include <QtDebug>

#include <map>
#include <memory>
#include <utility>

#include "lightdesk/store.h"

namespace lightdesk::gui {

namespace {

std::string utf8(const QString& text) { return text.toStdString(); }
QString from_utf8(const std::string& text) { return QString::fromStdString(text); }

QJsonArray attachment_links(const std::string& settings_json) {
  return QJsonDocument::fromJson(QByteArray::fromStdString(settings_json)).object().value("attachments").toArray();
}

// The session as the window sees it: its messages in order, each user message with the
// documents its attachment links name.
ChatSession read_session(store::Store& store, const store::SessionRecord& record,
                         const std::vector<store::Message>& messages) {
  ChatSession session;
  session.id = record.id;
  session.title = from_utf8(record.title);
  session.last_used = QDateTime::fromSecsSinceEpoch(record.updated_at, Qt::UTC);

  std::map<std::int64_t, store::Document> documents;
  for (store::Document& document : store.documents(record.id)) documents.emplace(document.id, std::move(document));
  std::multimap<std::int64_t, Attachment> attachments_by_message;
  for (const QJsonValue& link_value : attachment_links(record.settings_json)) {
    const QJsonObject link = link_value.toObject();
    const auto document = documents.find(link.value("document").toInteger());
    if (document == documents.end()) continue;
    Attachment attachment;
    attachment.path = from_utf8(document->second.source_path);
    attachment.text = from_utf8(document->second.text);
    attachment.tokens = document->second.token_count.value_or(0);
    for (const QJsonValue& offset : link.value("page_offsets").toArray()) attachment.page_offsets.append(offset.toInteger());
    attachments_by_message.emplace(link.value("message").toInteger(), std::move(attachment));
  }

  for (const store::Message& message : messages) {
    ChatEntry entry;
    entry.role = message.role == store::Role::Assistant ? ChatEntry::Role::Assistant : ChatEntry::Role::User;
    entry.text = from_utf8(message.text);
    entry.reasoning = from_utf8(message.reasoning);
    const auto [first, last] = attachments_by_message.equal_range(message.id);
    for (auto attachment = first; attachment != last; ++attachment) entry.documents.append(attachment->second);
    session.entries.append(std::move(entry));
  }
  return session;
}

}  // namespace

std::filesystem::path session_database_path(const QSettings& settings) {
  const QString directory =
      settings.value("dataDirectory", QStandardPaths::writableLocation(QStandardPaths::AppDataLocation)).toString();
  return std::filesystem::path(QDir(directory).filePath("sessions.sqlite").toStdString());
}

// Owns the Store and writes the repository's changes into it, on the store thread. Sessions are
// known by the repository's ids, which equal the store's for the sessions read at start; new
// ones are mapped to the id the store gives them.
class StoreWriter : public QObject {
 public:
  explicit StoreWriter(std::unique_ptr<store::Store> store) : store_(std::move(store)) {}

  // Reads every stored session and remembers what each one continues from. Called before the
  // writer moves to its thread.
  QList<ChatSession> read_all() {
    QList<ChatSession> sessions;
    for (const store::SessionRecord& record : store_->sessions()) {
      const std::vector<store::Message> messages = store_->messages(record.id);
      sessions.append(read_session(*store_, record, messages));
      SessionLog& log = logs_[record.id];
      log.store_id = record.id;
      log.settings = QJsonDocument::fromJson(QByteArray::fromStdString(record.settings_json)).object();
      if (!messages.empty()) log.last_message_id = messages.back().id;
    }
    return sessions;
  }

  void create(qint64 id, const QString& title) {
    write([&] { logs_[id].store_id = store_->create_session(utf8(title)); });
  }

  void rename(qint64 id, const QString& title) {
    write([&] {
      if (const SessionLog* log = find(id)) store_->rename_session(log->store_id, utf8(title));
    });
  }

  void remove(qint64 id) {
    write([&] {
      if (const SessionLog* log = find(id)) store_->delete_session(log->store_id);
      logs_.erase(id);
    });
  }

  // Adds the message as the child of the session's last one; a user message's documents are
  // added to the session and linked to the message in the session's settings.
  void append(qint64 id, const ChatEntry& entry) {
    write([&] {
      SessionLog* log = find(id);
      if (log == nullptr) return;
      store::Message message;
      message.session_id = log->store_id;
      message.parent_id = log->last_message_id;
      message.role = entry.role == ChatEntry::Role::Assistant ? store::Role::Assistant : store::Role::User;
      message.text = utf8(entry.text);
      message.reasoning = utf8(entry.reasoning);
      log->last_message_id = store_->add_message(message);
      if (entry.documents.isEmpty()) return;

      QJsonArray links = log->settings.value("attachments").toArray();
      const QMimeDatabase mime_types;
      for (const Attachment& attachment : entry.documents) {
        store::Document document;
        document.session_id = log->store_id;
        document.source_path = utf8(attachment.path);
        document.content_hash =
            QCryptographicHash::hash(attachment.text.toUtf8(), QCryptographicHash::Sha256).toHex().toStdString();
        document.mime_type = utf8(mime_types.mimeTypeForFile(attachment.path, QMimeDatabase::MatchExtension).name());
        document.token_count = attachment.tokens;
        document.text = utf8(attachment.text);
        QJsonArray page_offsets;
        for (const qint64 offset : attachment.page_offsets) page_offsets.append(offset);
        links.append(QJsonObject{{"message", qint64{*log->last_message_id}},
                                 {"document", qint64{store_->add_document(document)}},
                                 {"page_offsets", page_offsets}});
      }
      log->settings.insert("attachments", links);
      store_->set_session_settings(log->store_id, QJsonDocument(log->settings).toJson(QJsonDocument::Compact).toStdString());
    });
  }

 private:
  struct SessionLog {
    std::int64_t store_id = 0;
    std::optional<std::int64_t> last_message_id;
    QJsonObject settings;
  };

  SessionLog* find(qint64 id) {
    const auto found = logs_.find(id);
    return found == logs_.end() ? nullptr : &found->second;
  }

  // The window has already shown the change; a failed write loses only its persistence, which
  // is reported here rather than interrupting the conversation.
  template <typename Write>
  void write(Write&& change) {
    try {
      change();
    } catch (const std::exception& error) {
      qWarning("Lightdesk: could not save to the session database %s: %s", store_->path().c_str(), error.what());
    }
  }

  std::unique_ptr<store::Store> store_;
  std::map<qint64, SessionLog> logs_;
};

StoreSessionRepository::StoreSessionRepository(const std::filesystem::path& database) {
  if (database.has_parent_path()) std::filesystem::create_directories(database.parent_path());
  auto writer = std::make_unique<StoreWriter>(std::make_unique<store::Store>(database));
  for (const ChatSession& session : writer->read_all()) sessions_.insert(session);
  writer_ = writer.release();
  writer_->moveToThread(&store_thread_);
  store_thread_.setObjectName(QStringLiteral("session store"));
  store_thread_.start();
}

StoreSessionRepository::~StoreSessionRepository() {
  // Queued behind every pending change, so all of them are written before the thread ends.
  QMetaObject::invokeMethod(writer_, [writer = writer_] {
    delete writer;
    QThread::currentThread()->quit();
  });
  store_thread_.wait();
}

QList<ChatSession> StoreSessionRepository::list() const { return sessions_.list(); }

std::optional<ChatSession> StoreSessionRepository::load(qint64 id) const { return sessions_.load(id); }

ChatSession StoreSessionRepository::create(const QString& title) {
  ChatSession session = sessions_.create(title);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id = session.id, title] { writer->create(id, title); });
  return session;
}

void StoreSessionRepository::rename(qint64 id, const QString& title) {
  sessions_.rename(id, title);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, title] { writer->rename(id, title); });
}

void StoreSessionRepository::remove(qint64 id) {
  sessions_.remove(id);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id] { writer->remove(id); });
}

void StoreSessionRepository::append(qint64 id, const ChatEntry& entry) {
  sessions_.append(id, entry);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, entry] { writer->append(id, entry); });
}

QList<qint64> StoreSessionRepository::search(const QString& query) const { return sessions_.search(query); }

}  // namespace lightdesk::gui
