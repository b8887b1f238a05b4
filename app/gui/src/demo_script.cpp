#include "demo_script.h"

#include <QDir>
#include <QPixmap>
#include <QPlainTextEdit>
#include <QTimer>

#include "main_window.h"

namespace lightdesk::gui {

DemoScript::DemoScript(MainWindow& window, Steps steps, QObject* parent)
    : QObject(parent), window_(window), steps_(std::move(steps)) {}

void DemoScript::start() {
  QDir().mkpath(steps_.screenshot_directory);
  connect(&window_, &MainWindow::modelReady, this, [this] {
    documents_left_ = static_cast<int>(steps_.documents.size());
    if (documents_left_ == 0) ask();
    window_.attachFiles(steps_.documents);
  }, Qt::SingleShotConnection);
  connect(&window_, &MainWindow::documentAttached, this, [this] {
    if (--documents_left_ == 0) {
      window_.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(steps_.question);
      screenshot(QStringLiteral("1-model-and-document.png"));
      ask();
    }
  });
  connect(&window_, &MainWindow::answerFinished, this, [this] {
    screenshot(QStringLiteral("2-answer.png"));
    // A second turn reuses the session state of the first.
    window_.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(tr("And in one sentence?"));
    connect(&window_, &MainWindow::answerFinished, this, [this] {
      screenshot(QStringLiteral("3-second-turn.png"));
      emit finished();
    }, Qt::SingleShotConnection);
    QTimer::singleShot(0, &window_, &MainWindow::send);
  }, Qt::SingleShotConnection);
  window_.openModelDirectory(steps_.model_directory);
}

void DemoScript::ask() { window_.send(); }

void DemoScript::screenshot(const QString& name) {
  window_.grab().save(QDir(steps_.screenshot_directory).filePath(name));
}

}  // namespace lightdesk::gui
