#include "demo_script.h"

#include <QDir>
#include <QPixmap>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QTextBrowser>
#include <QTimer>

#include <memory>

#include "main_window.h"

namespace lightdesk::gui {
namespace {

// Time for pending layout and paint events before a screenshot.
constexpr int kSettleMs = 300;
// Prompt tokens from which the reading gets a screenshot of its own.
constexpr int kLongPromptTokens = 4096;
// Characters of answer streamed in before the mid-answer screenshot.
constexpr qsizetype kStreamingShotCharacters = 300;

}  // namespace

DemoScript::DemoScript(MainWindow& window, Steps steps, QObject* parent)
    : QObject(parent), window_(window), steps_(std::move(steps)) {}

void DemoScript::start() {
  QDir().mkpath(steps_.screenshot_directory);
  connect(&window_, &MainWindow::modelReady, this, [this] {
    documents_left_ = static_cast<int>(steps_.documents.size());
    if (documents_left_ == 0) ask(steps_.questions.value(0), [this] { secondTurn(); });
    window_.attachFiles(steps_.documents);
  }, Qt::SingleShotConnection);
  connect(&window_, &MainWindow::documentAttached, this, [this] {
    if (--documents_left_ != 0) return;
    input().setPlainText(steps_.questions.value(0));
    screenshot(QStringLiteral("1-model-and-document.png"), [this] {
      ask(steps_.questions.value(0), [this] { screenshot(QStringLiteral("4-answer.png"), [this] { secondTurn(); }); });
    });
  });
  window_.openModelDirectory(steps_.model_directory);
}

void DemoScript::secondTurn() {
  ask(steps_.questions.value(1, tr("And in one sentence?")), [this] {
    screenshot(QStringLiteral("5-second-turn.png"), [this] {
      // The model opened again: the session's saved state comes back instead of a second read.
      connect(&window_, &MainWindow::stateRestored, this, [this] {
        screenshot(QStringLiteral("6-restored-state.png"), [this] { badModelDirectory(); });
      }, Qt::SingleShotConnection);
      window_.openModelDirectory(steps_.model_directory);
    });
  });
}

void DemoScript::badModelDirectory() {
  connect(&window_, &MainWindow::errorShown, this, [this] {
    screenshot(QStringLiteral("7-bad-model-directory.png"), [this] { emit finished(); });
  }, Qt::SingleShotConnection);
  window_.openModelDirectory(QDir::temp().filePath(QStringLiteral("not-a-model")));
}

void DemoScript::ask(const QString& question, const std::function<void()>& then) {
  auto* transcript = window_.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  const qsizetype before = transcript->toPlainText().size() + question.size();
  // One picture while the answer streams in (taken at once: the answer does not wait).
  auto streaming = std::make_shared<QMetaObject::Connection>();
  // A long document (one that takes a while to read): one picture of its reading, a third of the
  // way in.
  auto reading = std::make_shared<QMetaObject::Connection>();
  auto* progress = window_.findChild<QProgressBar*>(QStringLiteral("progressBar"));
  if (!reading_shot_taken_)
    *reading = connect(progress, &QProgressBar::valueChanged, this, [this, progress, reading](int value) {
      if (!progress->isVisible() || progress->maximum() < kLongPromptTokens || value * 3 < progress->maximum()) return;
      disconnect(*reading);
      reading_shot_taken_ = true;
      // After the progress text, which the window sets after the value.
      QTimer::singleShot(0, this, [this] {
        window_.grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("2-reading-the-document.png")));
      });
    });
  if (!streaming_shot_taken_)
    *streaming = connect(transcript, &QTextBrowser::textChanged, this, [this, transcript, before, streaming] {
      if (transcript->toPlainText().size() < before + kStreamingShotCharacters) return;
      disconnect(*streaming);
      streaming_shot_taken_ = true;
      window_.grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("3-streaming.png")));
    });
  connect(&window_, &MainWindow::answerFinished, this, [streaming, reading, then] {
    disconnect(*streaming);
    disconnect(*reading);
    then();
  }, Qt::SingleShotConnection);
  input().setPlainText(question);
  window_.send();
}

QPlainTextEdit& DemoScript::input() { return *window_.findChild<QPlainTextEdit*>(QStringLiteral("input")); }

void DemoScript::screenshot(const QString& name, const std::function<void()>& then) {
  QTimer::singleShot(kSettleMs, this, [this, name, then] {
    window_.grab().save(QDir(steps_.screenshot_directory).filePath(name));
    then();
  });
}

}  // namespace lightdesk::gui
