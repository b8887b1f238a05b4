// Drives a MainWindow through the flows of docs/walkthrough.md and saves a screenshot of each:
// first launch, the model and document, a long read with its progress stopped and sent again,
// the streaming answer, a follow-up, reopening, search, regenerate, an edit, "Show in document"
// and a search in the document, the settings, a system prompt, the session list while the
// engine reads, the dark theme, an error. The
// `--demo` mode that packaging/screenshots.sh runs under Xvfb.
#pragma once

#include <QObject>
#include <QString>
#include <QStringList>

#include <functional>

class QPlainTextEdit;

namespace lightdesk::gui {

class MainWindow;

class DemoScript : public QObject {
  Q_OBJECT

 public:
  struct Steps {
    QString model_directory;
    QStringList documents;
    QStringList questions;  // the first asked with the documents, the second as a follow-up
    QString screenshot_directory;
  };
  DemoScript(MainWindow& window, Steps steps, QObject* parent = nullptr);
  // Opens the model; the rest follows the window's signals. Emits finished() at the end.
  void start();

 signals:
  void finished();

 private:
  // Sends `question`, then runs `then` when the answer is complete. The first long read is
  // stopped a third of the way in (a picture), then sent again.
  void ask(const QString& question, const std::function<void()>& then);
  void firstTurn();
  void secondTurn();
  void reopen();
  void search();
  void regenerateAndEdit();
  // "Show in document" and a search in the document pane.
  void documents();
  // The settings dialog, then the window in a dark theme.
  void settings();
  // A system prompt given in the session's settings, shown at the top of the conversation; the
  // question under it, read again whole while another session is looked at.
  void systemPrompt();
  void sessionsWhileReading();
  void darkMode();
  // Last, what a mistaken model directory looks like.
  void badModelDirectory();
  QPlainTextEdit& input();
  // Saves the window as `name`, then runs `then`.
  void screenshot(const QString& name, const std::function<void()>& then);

  MainWindow& window_;
  Steps steps_;
  int documents_left_ = 0;
  bool reading_shot_taken_ = false;
  bool streaming_shot_taken_ = false;
  bool stop_shot_taken_ = false;
};

}  // namespace lightdesk::gui
