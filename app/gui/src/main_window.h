// The Lightdesk main window: model chooser, sessions, conversation, attachments, status bar.
// It owns the engine thread; every engine call goes out as a queued signal and comes back as
// one, so the window never blocks on the engine.
#pragma once

#include <QMainWindow>
#include <QThread>

#include <map>
#include <optional>

#include "engine_worker.h"
#include "session_repository.h"

class QLabel;
class QLineEdit;
class QListWidget;
class QListWidgetItem;
class QPlainTextEdit;
class QProgressBar;
class QPushButton;
class QSettings;
class QTextBrowser;
class QUrl;

namespace lightdesk::gui {

class MainWindow : public QMainWindow {
  Q_OBJECT

 public:
  // `sessions` and `settings` must outlive the window.
  MainWindow(SessionRepository& sessions, QSettings& settings, QWidget* parent = nullptr);
  ~MainWindow() override;

  // What the model chooser does after the directory dialog: validate, then load if it fits.
  void openModelDirectory(const QString& directory);
  // What the attach dialog and drag and drop do: read the documents and count their tokens.
  void attachFiles(const QStringList& paths);
  // Sends the text of the input box (Ctrl+Enter).
  void send();
  // Stops the running prefill or generation; the conversation and session state are kept.
  void stop();
  void newSession();
  // Writes the current conversation as Markdown, or JSON for a .json path (File > Export).
  void exportConversation(const QString& path);

 signals:
  void modelReady();
  void answerFinished();
  void documentAttached(const QString& path);
  void errorShown(const QString& message);
  // To the engine thread.
  void checkModelRequested(const QString& directory);
  void loadModelRequested(const QString& directory);
  void readDocumentRequested(const QString& path);
  void generateRequested(const QList<lightdesk::gui::PromptMessage>& conversation,
                         const lightdesk::gui::SamplingSettings& sampling);

 protected:
  bool eventFilter(QObject* watched, QEvent* event) override;
  void dragEnterEvent(QDragEnterEvent* event) override;
  void dropEvent(QDropEvent* event) override;

 private:
  void buildWidgets();
  void buildMenus();
  void connectEngine();
  void chooseModelDirectory();
  void chooseDocuments();
  void chooseExportFile();
  void showError(const QString& message);
  void setGenerating(bool generating);
  void selectSession(qint64 id);
  void refreshSessionList();
  void renameCurrentSession();
  void deleteCurrentSession();
  void removeSelectedAttachment();
  void refreshAttachments();
  void renderTranscript();
  void appendToTranscript(const QString& text, bool reasoning);
  // Ends the streamed answer: stores what it wrote.
  void keepAnswer();
  void editSettings();

  void onModelChecked(const ModelCheck& check);
  void onModelLoaded(const ModelCheck& check, const QString& family, const SamplingSettings& sampling);
  void onModelRejected(const QString& directory, const QString& message);
  void onModelFailed(const QString& directory, const QString& message);
  void onDocumentReady(const QString& path, const QString& text, const QList<qint64>& pageOffsets, qint64 tokens);
  void onTextPiece(const QString& reasoning, const QString& answer);
  void onGenerationFinished(const GenerationStats& stats);
  void onGenerationFailed(const QString& message);
  void onTranscriptLink(const QUrl& link);

  SessionRepository& sessions_;
  QSettings& settings_;
  QThread engine_thread_;
  EngineWorker* worker_;  // lives on engine_thread_, deleted when it finishes

  ChatSession current_;
  bool model_ready_ = false;
  QString model_family_;           // settings are kept per chat-format family
  SamplingSettings default_sampling_;
  bool generating_ = false;
  std::optional<ChatEntry> answer_;                // the answer being written
  std::map<QString, qint64> reading_documents_;  // path -> session it is attached to
  // Documents attached to a session and not sent yet: they go with its next question.
  std::map<qint64, QList<Attachment>> pending_documents_;
  std::map<int, bool> expanded_reasoning_;        // entry index -> shown

  QLabel* model_label_;
  QLabel* message_label_;
  QLineEdit* search_box_;
  QListWidget* session_list_;
  QTextBrowser* transcript_;
  QPlainTextEdit* input_;
  QPushButton* send_button_;
  QPushButton* stop_button_;
  QListWidget* attachment_list_;
  QProgressBar* progress_bar_;
  QLabel* speed_label_;
  QLabel* first_token_label_;
  QLabel* context_label_;
};

}  // namespace lightdesk::gui
