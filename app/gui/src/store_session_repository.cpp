#include "store_session_repository.h"

#include <QCryptographicHash>
#include <QFile>
#include <QImageReader>
#include <QJsonDocument>
#include <QJsonObject>
#include <QMimeDatabase>
#include <QPointer>
#include <QRegularExpression>
#include <QSettings>
#include <QtDebug>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "lightdesk/store.h"

namespace lightdesk::gui {

namespace {

std::string utf8(const QString& text) { return text.toStdString(); }
QString from_utf8(const std::string& text) { return QString::fromStdString(text); }

// The session as the window sees it, with every message of every branch (in the order they
// were added, each naming the one it follows) and each user message's documents and images.
// A parent that is not among them starts a branch of its own: the session opens with what can
// be shown.
std::pair<ChatSession, QList<InMemorySessionRepository::Message>> read_session(
    store::Store& store, const store::SessionRecord& record, const std::vector<store::Message>& messages) {
  ChatSession session;
  session.id = record.id;
  session.title = from_utf8(record.title);
  session.last_used = QDateTime::fromSecsSinceEpoch(record.updated_at, Qt::UTC);
  const QJsonObject settings = QJsonDocument::fromJson(QByteArray::fromStdString(record.settings_json)).object();
  session.sampling = session_sampling(settings);
  session.system_prompt = session_system_prompt(settings);

  std::multimap<std::int64_t, Attachment> attachments_by_message;
  for (const store::Document& document : store.documents(record.id)) {
    if (!document.message_id) continue;
    Attachment attachment;
    attachment.path = from_utf8(document.source_path);
    attachment.text = from_utf8(document.text);
    attachment.tokens = document.token_count.value_or(0);
    attachment.page_offsets = QList<qint64>(document.page_offsets.begin(), document.page_offsets.end());
    attachments_by_message.emplace(*document.message_id, std::move(attachment));
  }

  std::multimap<std::int64_t, QString> images_by_message;
  for (const store::Image& image : store.images(record.id))
    if (image.message_id) images_by_message.emplace(*image.message_id, from_utf8(image.source_path));

  std::map<std::int64_t, qsizetype> index_of;
  QList<InMemorySessionRepository::Message> read;
  for (const store::Message& message : messages) {
    ChatEntry entry;
    entry.role = message.role == store::Role::Assistant ? ChatEntry::Role::Assistant : ChatEntry::Role::User;
    entry.text = from_utf8(message.text);
    entry.reasoning = from_utf8(message.reasoning);
    const auto [first, last] = attachments_by_message.equal_range(message.id);
    for (auto attachment = first; attachment != last; ++attachment) entry.documents.append(attachment->second);
    const auto [first_image, last_image] = images_by_message.equal_range(message.id);
    for (auto image = first_image; image != last_image; ++image) entry.images.append(image->second);
    const auto parent = message.parent_id ? index_of.find(*message.parent_id) : index_of.end();
    read.append({std::move(entry), parent == index_of.end() ? -1 : parent->second});
    index_of[message.id] = read.size() - 1;
  }
  return {session, read};
}

}  // namespace

store::DataDirectory data_directory(const QSettings& settings) {
  const QString chosen = settings.value(QStringLiteral("dataDirectory")).toString();
  if (chosen.isEmpty()) return store::DataDirectory();
  const store::DataDirectory directory(std::filesystem::path(chosen.toStdString()));
  if (directory.path() == store::DataDirectory(store::DataDirectory::legacy_app_directory()).path())
    return store::DataDirectory();
  return directory;
}

std::filesystem::path session_database_path(const QSettings& settings) {
  return data_directory(settings).session_database();
}

// Owns the Store and writes the repository's changes into it, on the store thread. Sessions are
// known by the repository's ids, which equal the store's for the sessions read at start; new
// ones are mapped to the id the store gives them. Entries are known by their index in the
// session's shown branch, mapped to the store's message ids.
class StoreWriter : public QObject {
 public:
  StoreWriter(const std::filesystem::path& database, std::function<void(const QString&)> report_failure)
      : database_(database),
        store_(std::make_unique<store::Store>(database)),
        report_failure_(std::move(report_failure)) {}

  // Reads every stored session and remembers each one's branch. Called before the writer moves
  // to its thread.
  void read_all(InMemorySessionRepository& sessions) {
    for (const store::SessionRecord& record : store_->sessions()) {
      const std::vector<store::Message> messages = store_->messages(record.id);
      const auto [session, read] = read_session(*store_, record, messages);
      sessions.insert(session, read);
      SessionLog& log = logs_[record.id];
      log.store_id = record.id;
      for (const store::Message& message : messages) log.messages.push_back(message.id);
      const QList<qsizetype> shown = sessions.shownMessages(record.id);
      log.shown.assign(shown.begin(), shown.end());
    }
  }

  // The window shows another branch: `shown` holds the index (in the order added) of each of
  // its messages.
  void show(qint64 id, const QList<qsizetype>& shown) {
    if (SessionLog* log = find(id)) log->shown.assign(shown.begin(), shown.end());
  }

  void create(qint64 id, const QString& title) {
    write([&] { logs_[id].store_id = store_->create_session(utf8(title)); });
  }

  void rename(qint64 id, const QString& title) {
    write([&] {
      if (const SessionLog* log = find(id)) store_->rename_session(log->store_id, utf8(title));
    });
  }

  // Changes the session's settings JSON by `change`, keeping its other keys.
  void update_settings(qint64 id, const std::function<QJsonObject(QJsonObject)>& change) {
    write([&] {
      const SessionLog* log = find(id);
      if (log == nullptr) return;
      const store::SessionRecord record = store_->session(log->store_id);
      const QJsonObject settings = change(QJsonDocument::fromJson(QByteArray::fromStdString(record.settings_json)).object());
      store_->set_session_settings(record.id, QJsonDocument(settings).toJson(QJsonDocument::Compact).toStdString());
    });
  }

  void remove(qint64 id) {
    write([&] {
      if (const SessionLog* log = find(id)) store_->delete_session(log->store_id);
      logs_.erase(id);
    });
  }

  void branch(qint64 id, qsizetype keep) {
    if (SessionLog* log = find(id); log != nullptr && keep < static_cast<qsizetype>(log->shown.size()))
      log->shown.resize(static_cast<std::size_t>(keep));
  }

  // Adds the message as the child of the branch's last one; a user message's documents are
  // added to the session, linked to the message.
  void append(qint64 id, const ChatEntry& entry) {
    write([&] {
      SessionLog* log = find(id);
      if (log == nullptr) return;
      store::Message message;
      message.session_id = log->store_id;
      if (!log->shown.empty()) message.parent_id = log->message_at(log->shown.size() - 1);
      message.role = entry.role == ChatEntry::Role::Assistant ? store::Role::Assistant : store::Role::User;
      message.text = utf8(entry.text);
      message.reasoning = utf8(entry.reasoning);
      const std::int64_t message_id = store_->add_message(message);
      log->messages.push_back(message_id);
      log->shown.push_back(static_cast<qsizetype>(log->messages.size()) - 1);
      const QMimeDatabase mime_types;
      for (const QString& path : entry.images) {
        // The image stays where it is; the store keeps its path, hash and size.
        QFile file(path);
        QImageReader reader(path);
        store::Image image;
        image.session_id = log->store_id;
        image.message_id = message_id;
        image.source_path = utf8(path);
        if (file.open(QIODevice::ReadOnly)) {
          QCryptographicHash hash(QCryptographicHash::Sha256);
          hash.addData(&file);
          image.content_hash = hash.result().toHex().toStdString();
        }
        image.mime_type = utf8(mime_types.mimeTypeForFile(path).name());
        if (const QSize size = reader.size(); size.isValid()) {
          image.width = size.width();
          image.height = size.height();
        }
        store_->add_image(image);
      }
      for (const Attachment& attachment : entry.documents) {
        store::Document document;
        document.session_id = log->store_id;
        document.message_id = message_id;
        document.source_path = utf8(attachment.path);
        document.content_hash =
            QCryptographicHash::hash(attachment.text.toUtf8(), QCryptographicHash::Sha256).toHex().toStdString();
        document.mime_type = utf8(mime_types.mimeTypeForFile(attachment.path, QMimeDatabase::MatchExtension).name());
        document.token_count = attachment.tokens;
        document.text = utf8(attachment.text);
        document.page_offsets.assign(attachment.page_offsets.begin(), attachment.page_offsets.end());
        store_->add_document(document);
      }
    });
  }

  void save_state(qint64 id, qsizetype entries, const EngineStatePtr& state) {
    write([&] {
      const SessionLog* log = find(id);
      if (log == nullptr || entries <= 0 || entries > static_cast<qsizetype>(log->shown.size())) return;
      store_->save_checkpoint(log->store_id, state->source(), log->message_at(static_cast<std::size_t>(entries - 1)));
    });
  }

  QList<MessageHit> search(const QString& query) {
    // Every word quoted (so FTS5 reads no operators in what a person types) and matched as a
    // prefix too: "reven" finds "revenue".
    std::string fts_query;
    for (const QString& word : query.split(QRegularExpression(QStringLiteral("\\s+")), Qt::SkipEmptyParts)) {
      QString quoted = word;
      quoted.replace(QLatin1Char('"'), QStringLiteral("\"\""));
      fts_query += utf8(QStringLiteral("\"%1\"* ").arg(quoted));
    }
    QList<MessageHit> hits;
    if (fts_query.empty()) return hits;
    try {
      for (const store::SearchHit& hit : store_->search(fts_query)) {
        const auto log = std::find_if(logs_.begin(), logs_.end(),
                                      [&hit](const auto& entry) { return entry.second.store_id == hit.session_id; });
        if (log == logs_.end()) continue;
        MessageHit found{log->first, -1, from_utf8(hit.snippet), -1};
        if (hit.kind == store::SearchHit::Kind::Message) {
          const auto& messages = log->second.messages;
          if (const auto at = std::find(messages.begin(), messages.end(), hit.id); at != messages.end()) {
            found.message = at - messages.begin();
            const auto& shown = log->second.shown;
            if (const auto in_shown = std::find(shown.begin(), shown.end(), found.message); in_shown != shown.end())
              found.entry = in_shown - shown.begin();
          }
        }
        hits.append(found);
      }
    } catch (const std::exception& error) {
      qWarning("Lightdesk: search failed: %s", error.what());
    }
    return hits;
  }

  // The newest checkpoint tied to one of the branch's first `entries` messages; the engine
  // thread reads it as it imports it.
  StateLoad load_state(qint64 id, qsizetype entries) {
    StateLoad load;
    const SessionLog* log = find(id);
    if (log == nullptr) return load;
    const auto start = std::chrono::steady_clock::now();
    try {
      // One query for the session's checkpoints, not one per message of the branch.
      std::map<std::int64_t, qsizetype> entries_through;  // branch message id -> entries up to it
      const qsizetype usable = std::min<qsizetype>(entries, static_cast<qsizetype>(log->shown.size()));
      for (qsizetype i = 0; i < usable; ++i) entries_through[log->message_at(static_cast<std::size_t>(i))] = i + 1;
      std::optional<store::CheckpointRecord> newest;  // checkpoints come oldest first: the last one at the deepest entry
      for (const store::CheckpointRecord& checkpoint : store_->checkpoints(log->store_id)) {
        const auto at = checkpoint.message_id ? entries_through.find(*checkpoint.message_id) : entries_through.end();
        if (at == entries_through.end() || at->second < load.entries) continue;
        load.entries = at->second;
        newest = checkpoint;
      }
      // Its model, layout and checksums are checked as the engine thread reads it.
      if (newest)
        load.state = std::make_shared<StoredCheckpoint>(database_, newest->id, newest->position);
    } catch (const std::exception& error) {
      load.state.reset();
      load.refused = from_utf8(error.what());
    }
    load.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return load;
  }

 private:
  struct SessionLog {
    std::int64_t store_id = 0;
    std::vector<std::int64_t> messages;  // store message id of each message, in the order added
    std::vector<qsizetype> shown;        // the message of each entry of the shown branch
    std::int64_t message_at(std::size_t entry) const { return messages[static_cast<std::size_t>(shown[entry])]; }
  };

  SessionLog* find(qint64 id) {
    const auto found = logs_.find(id);
    return found == logs_.end() ? nullptr : &found->second;
  }

  // The window has already shown the change; a failed write loses only its persistence, which
  // the window is told about rather than the conversation being interrupted.
  template <typename Write>
  void write(Write&& change) {
    try {
      change();
    } catch (const std::exception& error) {
      report_failure_(QObject::tr("Could not save to the session database %1: %2")
                          .arg(QString::fromStdString(store_->path().string()), from_utf8(error.what())));
    }
  }

  std::filesystem::path database_;
  std::unique_ptr<store::Store> store_;
  std::function<void(const QString&)> report_failure_;
  std::map<qint64, SessionLog> logs_;
};

StoreSessionRepository::StoreSessionRepository(const std::filesystem::path& database) {
  if (database.has_parent_path()) std::filesystem::create_directories(database.parent_path());
  // Emitted on the store thread; the window's connection queues it to the GUI thread.
  auto writer = std::make_unique<StoreWriter>(database, [this](const QString& message) { emit writeFailed(message); });
  writer->read_all(sessions_);
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

void StoreSessionRepository::setSampling(qint64 id, const std::optional<SamplingSettings>& sampling) {
  sessions_.setSampling(id, sampling);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, sampling] {
    writer->update_settings(id, [&sampling](QJsonObject settings) { return with_session_sampling(settings, sampling); });
  });
}

void StoreSessionRepository::setSystemPrompt(qint64 id, const QString& prompt) {
  sessions_.setSystemPrompt(id, prompt);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, prompt] {
    writer->update_settings(id, [&prompt](QJsonObject settings) { return with_session_system_prompt(settings, prompt); });
  });
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

void StoreSessionRepository::branch(qint64 id, qsizetype keep) {
  sessions_.branch(id, keep);
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, keep] { writer->branch(id, keep); });
}

SiblingPlace StoreSessionRepository::siblings(qint64 id, qsizetype entry) const { return sessions_.siblings(id, entry); }

std::optional<ChatSession> StoreSessionRepository::showSibling(qint64 id, qsizetype entry, int index) {
  std::optional<ChatSession> shown = sessions_.showSibling(id, entry, index);
  if (shown)
    QMetaObject::invokeMethod(writer_, [writer = writer_, id, messages = sessions_.shownMessages(id)] { writer->show(id, messages); });
  return shown;
}

std::optional<std::pair<ChatSession, qsizetype>> StoreSessionRepository::showBranchOf(qint64 id, qsizetype message) {
  auto shown = sessions_.showBranchOf(id, message);
  if (shown)
    QMetaObject::invokeMethod(writer_, [writer = writer_, id, messages = sessions_.shownMessages(id)] { writer->show(id, messages); });
  return shown;
}

void StoreSessionRepository::search(const QString& query, QObject* context,
                                    std::function<void(const QList<MessageHit>&)> done) {
  // The caller may be gone by the time the answer is ready (a window closed meanwhile).
  QMetaObject::invokeMethod(writer_, [writer = writer_, query, context = QPointer(context), done = std::move(done)] {
    const QList<MessageHit> hits = writer->search(query);
    if (context) QMetaObject::invokeMethod(context, [done, hits] { done(hits); });
  });
}

void StoreSessionRepository::saveState(qint64 id, qsizetype entries, EngineStatePtr state) {
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, entries, state = std::move(state)] {
    writer->save_state(id, entries, state);
  });
}

void StoreSessionRepository::loadState(qint64 id, qsizetype entries, const ModelInfo&, QObject* context,
                                       std::function<void(const StateLoad&)> done) {
  // The model is checked as the engine thread reads the checkpoint (Store::load_checkpoint).
  QMetaObject::invokeMethod(writer_, [writer = writer_, id, entries, context = QPointer(context),
                                      done = std::move(done)] {
    const StateLoad load = writer->load_state(id, entries);
    if (context) QMetaObject::invokeMethod(context, [done, load] { done(load); });
  });
}

}  // namespace lightdesk::gui
