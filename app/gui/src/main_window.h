// The Lightdesk main window: the model row, the error banner and the four panels (sessions,
// conversation, documents, status), and what ties them to the repository and the engine. It
// owns the engine thread; every engine call goes out as a queued signal and comes back as one,
// so the window never blocks on the engine.
#pragma once

#include <QMainWindow>
#include <QThread>

#include <functional>
#include <map>
#include <optional>
#include <set>

#include "engine_worker.h"
#include "session_repository.h"

class QLabel;
class QMenu;
class QPushButton;
class QSettings;
class QSplitter;
class QTimer;

namespace lightdesk::gui {

class Banner;
class ConversationPanel;
class DocumentViewer;
class DocumentsPanel;
class SessionPanel;
class StatusPanel;

class MainWindow : public QMainWindow {
  Q_OBJECT

 public:
  // `sessions` and `settings` must outlive the window.
  MainWindow(SessionRepository& sessions, QSettings& settings, QWidget* parent = nullptr);
  // With `engine` (a stand-in in the tests) instead of the window's own; the window owns it and
  // moves it to the engine thread.
  MainWindow(SessionRepository& sessions, QSettings& settings, EngineWorker* engine, QWidget* parent = nullptr);
  ~MainWindow() override;

  QSettings& settings() { return settings_; }
  // The model directory loaded last (QSettings), empty if none.
  QString lastModelDirectory() const;
  // The model directories opened before, newest first (File > Open recent).
  QStringList recentModels() const;
  // The bundled demo: its model, its document and a question it answers. Shows "Try the demo"
  // on the first-launch row when the model is there.
  struct Demo {
    QString model;
    QString document;
    QString question;
  };
  void setDemo(const Demo& demo);
  // "Try the demo": opens the demo model, then a new session with its document attached and its
  // question in the input box.
  void tryDemo();
  // Help > About: what the app is for and the loaded model's card (MODEL_CARD.md or README.md).
  void showAbout();
  // "Show in document" on answer `entry`: where its words occur in the session's documents,
  // opened highlighted in the document pane (or "not found" there).
  void showInDocument(qsizetype entry);
  // Opens the document pane at `position` of `document`.
  void openDocument(const Attachment& document, qsizetype position = 0);
  // What the model chooser does after the directory dialog: validate, then load if it fits.
  void openModelDirectory(const QString& directory);
  // Answers from an OpenAI-compatible server instead of a local model (File > Use a server…);
  // `model` empty: the first the server lists. Emits modelReady once it answers.
  void connectEndpoint(const QString& endpoint, const QString& apiKey, const QString& model);
  // The command line's request (lightdesk --document FILE... --ask QUESTION): once a model is
  // ready, a new session with these documents attached and, if `question` is not empty, the
  // question sent as soon as they are read.
  void startSession(const QStringList& documents, const QString& question);
  // What the attach dialog and drag and drop do: read the documents and count their tokens.
  void attachFiles(const QStringList& paths);
  // Sends the text of the input box (Ctrl+Enter).
  void send();
  // Stops the running prefill or generation; the conversation and session state are kept.
  void stop();
  void newSession();
  // Answers the last question again; the old answer stays stored as an earlier branch.
  void regenerate();
  // Puts user message `entry` into the input box; sending it branches the conversation there.
  void editMessage(qsizetype entry);
  // Hides the current session and deletes it when the undo bar's time is up (or the window closes).
  void deleteCurrentSession();
  void undoDelete();
  // Selects the session and moves the transcript to its entry (a search result's click); a
  // `message` on another branch (MessageHit::message) shows that branch first.
  void showMessage(qint64 session, qsizetype entry, qsizetype message = -1);
  // Gives the current session `prompt` as its system prompt (what Session > Settings for this
  // session does): shown at the top of the conversation; after the first answer, the next
  // question reads the conversation again under it, which the status bar says.
  void setSystemPrompt(const QString& prompt);
  // The current session's id (0: none yet).
  qint64 currentSessionId() const { return current_.id; }
  // Writes the current conversation as Markdown, or JSON for a .json path (File > Export).
  void exportConversation(const QString& path);
  // The size the window opens at: room for the three panes, within the screen's available area.
  QSize sizeHint() const override;

 signals:
  void modelReady();
  void answerFinished();
  void documentAttached(const QString& path);
  void errorShown(const QString& message);
  // The session's saved engine state is back in the engine ("Restored … tokens from cache …").
  void stateRestored(const QString& message);
  // To the engine thread.
  void checkModelRequested(const QString& directory, const QString& backend);
  void loadModelRequested(const QString& directory, const QString& backend);
  void readDocumentRequested(const QString& path);
  void connectEndpointRequested(const QString& endpoint, const QString& apiKey, const QString& model);
  void generateRequested(const lightdesk::gui::Turns& conversation, const QString& systemPrompt,
                         const lightdesk::gui::SamplingSettings& sampling, qint64 sessionId);
  void adoptStateRequested(const lightdesk::gui::SavedStatePtr& state, const lightdesk::gui::Turns& held,
                           const QString& systemPrompt, qint64 sessionId);

 protected:
  void dragEnterEvent(QDragEnterEvent* event) override;
  void dropEvent(QDropEvent* event) override;

 private:
  void buildWidgets();
  void buildMenus();
  void connectEngine();
  void chooseModelDirectory();
  void chooseEndpoint();
  void onEndpointConnected(const QString& endpoint, const QString& model);
  void chooseDocuments();
  void chooseExportFile();
  void showError(const QString& message);
  void setGenerating(bool generating);
  // Asks the engine for an answer to `user`, sent after the current session's first `keep`
  // entries (the others, if any, become an earlier branch once the answer begins).
  void ask(qsizetype keep, const ChatEntry& user, bool regenerated);
  // Puts back what ask() replaced, when the answer failed or was stopped before it began;
  // true when the question went back into the input box (a new or edited one).
  bool undoTurn();
  // Brings the current session's saved engine state into the engine, if it holds another one.
  void restoreState();
  // Sends a state the repository found for the current session to the engine, or reports why
  // none can be used.
  void adoptLoadedState(const StateLoad& load);
  // Shows session `id`; while the engine works for the current one, it is only looked at (see
  // viewing_).
  void selectSession(qint64 id);
  // The session shown: the one looked at while the engine works, else the current one.
  const ChatSession& shownSession() const { return viewing_ ? *viewing_ : current_; }
  // Once the engine is done: the session looked at meanwhile becomes the current one.
  void showViewedSession();
  // Makes `session` the current one: its transcript, attachments and saved engine state.
  void showSession(const ChatSession& session);
  // Shows sibling `index` of message `entry` and the newest branch after it.
  void showBranch(qsizetype entry, int index);
  void refreshSessionList();
  void renameSession(qint64 id, const QString& title);
  void finishDelete();
  // Sends the question startSession() holds once the current session's documents are read.
  void askQuestionAfterDocuments();
  void runSearch(const QString& query);
  void removeAttachment(bool image, qsizetype index);
  // Lists an image after its thumbnail is made; emits documentAttached or shows the error.
  void attachImage(const QString& path);
  void refreshAttachments();
  void renderTranscript();
  // Ends the streamed answer: stores what it wrote (undoTurn() if it never began; its answer).
  bool keepAnswer();
  void editSettings();
  // Session > Settings for this session: its system prompt and sampling.
  void editSessionSettings();
  // Settings that act on the window at once (Enter sends).
  void applySettings();
  void rememberModel(const QString& directory);
  void refreshRecentMenu();
  // The context the user allows (Settings > Context length) within the model's.
  std::int64_t contextLimit() const;
  // What the status bar's memory figure says: the backend's devices and the host memory now.
  QString memoryText() const;
  // The figure of the context the engine holds for the current session (none for another's).
  void refreshContextFigure();
  bool readingDocuments() const;

  void onModelChecked(const ModelCheck& check);
  void onModelLoaded(const ModelCheck& check, const QString& family, const SamplingSettings& sampling);
  void onModelRejected(const QString& directory, const QString& message);
  void onModelFailed(const QString& directory, const QString& message);
  void onDocumentReady(const QString& path, const QString& text, const QList<qint64>& pageOffsets, qint64 tokens);
  void onDocumentFailed(const QString& path, const QString& message);
  void onTextPiece(const QString& reasoning, const QString& answer);
  void onGenerationFinished(const GenerationStats& stats, const EngineStatePtr& state);
  void onStateAdopted(qint64 tokens, double seconds);
  void onStateRefused(const QString& message);
  void onGenerationFailed(const QString& message);

  SessionRepository& sessions_;
  QSettings& settings_;
  QThread engine_thread_;
  EngineWorker* worker_;  // lives on engine_thread_, deleted when it finishes

  ChatSession current_;
  // Another session looked at (read, renamed, searched) while the engine works for current_:
  // the session list stays usable; it becomes the current one when the work ends.
  std::optional<ChatSession> viewing_;
  bool model_ready_ = false;
  QString endpoint_;               // the server answering instead of a local model; empty: none
  QString model_family_;           // settings are kept per chat-format family
  SamplingSettings default_sampling_;
  ModelInfo model_info_;
  std::vector<GpuDevice> gpus_;  // as the engine thread last measured them (gpuMemoryMeasured)
  bool generating_ = false;
  // What the engine's state holds: the first `entries` entries of session `session` (a
  // finished answer last), or entries < 0 for nothing the window can name.
  struct EngineHolds {
    qint64 session = 0;
    qsizetype entries = -1;
  };
  EngineHolds engine_holds_;
  EngineHolds adopting_;           // sent to the engine, not yet confirmed
  double state_read_seconds_ = 0;  // the repository's part of a restore
  quint64 restore_ticket_ = 0;     // tells a stale read (another session or a question since) apart
  // The turn being answered: where it started and what it replaced, until the answer begins
  // (then the question is stored) or fails (then everything is put back).
  struct Turn {
    qsizetype keep = 0;
    QList<ChatEntry> replaced;
    bool stored = false;
    bool regenerated = false;  // the question is the stored one (Regenerate), not typed or edited
    QString title;             // the session's title from its first question, given once it is stored
  };
  std::optional<Turn> turn_;
  std::optional<ChatEntry> answer_;                // the answer being written
  std::map<QString, qint64> reading_documents_;  // path -> session it is attached to
  // Documents attached to a session and not sent yet: they go with its next question.
  std::map<qint64, QList<Attachment>> pending_documents_;
  // Images attached to a session and not sent yet, like pending_documents_.
  std::map<qint64, QStringList> pending_images_;
  QString question_after_documents_;            // startSession()'s question, not sent yet
  std::optional<qint64> deleting_;                // hidden, deleted when undo_timer_ fires
  quint64 search_ticket_ = 0;                     // tells a stale search answer apart
  QString last_search_;                           // its words, to find in the message opened
  std::int64_t engine_tokens_ = 0;                // positions the engine's state holds
  // Sessions whose saved states cannot be used (their system prompt changed since, or the last
  // restore was refused): the next question reads the conversation again rather than restore
  // one. Its answer's state is the one to restore from then on.
  std::set<qint64> read_again_;

  Demo demo_;
  QLabel* model_label_;
  QPushButton* demo_button_;
  QMenu* recent_menu_;
  DocumentViewer* document_viewer_;
  QSplitter* splitter_;
  Banner* banner_;
  QWidget* undo_bar_;
  QLabel* undo_label_;
  QTimer* undo_timer_;
  SessionPanel* session_panel_;
  ConversationPanel* conversation_panel_;
  DocumentsPanel* documents_panel_;
  StatusPanel* status_panel_;
};

}  // namespace lightdesk::gui
