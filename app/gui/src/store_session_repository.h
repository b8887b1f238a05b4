// Sessions kept in the SQLite store (lightdesk::store::Store), so they survive restarts.
//
// The window calls SessionRepository from the GUI thread and must never wait on the disk, so the
// repository answers every read from an in-memory copy, loaded once when it opens the database,
// and sends every change to a writer object that owns the Store on a thread of its own (a Store
// is one SQLite connection, used from one thread at a time). Changes are queued to that thread
// in the order they are made; the destructor waits until all of them are written.
//
// Engine states: the engine thread copies a finished turn's state (EngineState) and the writer
// saves it as a checkpoint of the turn's last message. A load finds the checkpoint on the store
// thread and names it (StoredCheckpoint); the engine thread reads it through a connection of
// its own as it imports it.
//
// A document is linked to the message it was sent with (store::Document::message_id), and a
// PDF keeps where its pages start (store::Document::page_offsets).
#pragma once

#include <QThread>

#include <filesystem>

#include "lightdesk/data_directory.h"
#include "session_repository.h"

class QSettings;

namespace lightdesk::gui {

class StoreWriter;

// The data directory (lightdesk/data_directory.h), shared with lightdesk-cli: QSettings'
// "dataDirectory" when the user chose one, else the environment's. The app's former default
// (Qt's AppDataLocation), which earlier versions saved there, counts as none chosen.
store::DataDirectory data_directory(const QSettings& settings);
// The data directory's session database; the app's former one moves there first (see
// store::DataDirectory::session_database).
std::filesystem::path session_database_path(const QSettings& settings);

class StoreSessionRepository final : public SessionRepository {
 public:
  // Opens or creates the database and reads its sessions with their messages. Throws
  // lightdesk::store::Error for a file that is not a usable session database.
  explicit StoreSessionRepository(const std::filesystem::path& database);
  ~StoreSessionRepository() override;
  StoreSessionRepository(const StoreSessionRepository&) = delete;
  StoreSessionRepository& operator=(const StoreSessionRepository&) = delete;

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
  // The store's FTS5 index over messages and documents, each word of `query` also as a prefix.
  void search(const QString& query, QObject* context, std::function<void(const QList<MessageHit>&)> done) override;
  void saveState(qint64 id, qsizetype entries, EngineStatePtr state) override;
  // A damaged checkpoint, one of another model or a failed read comes back as `refused`.
  void loadState(qint64 id, qsizetype entries, const ModelInfo& model, QObject* context,
                 std::function<void(const StateLoad&)> done) override;

 private:
  InMemorySessionRepository sessions_;  // what the store holds, plus the changes still queued
  QThread store_thread_;
  StoreWriter* writer_ = nullptr;       // lives on store_thread_, deleted there
};

}  // namespace lightdesk::gui
