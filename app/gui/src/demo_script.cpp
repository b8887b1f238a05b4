#include "demo_script.h"

#include <QDir>
#include <QPixmap>
#include <QPlainTextEdit>
#include <QTimer>

#include "main_window.h"

namespace lightdesk::gui {
namespace {
constexpr int kSettleMs = 300;
}  // namespace

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
      screenshot(QStringLiteral("1-model-and-document.png"), [this] { ask(); });
    }
  });
  connect(&window_, &MainWindow::answerFinished, this, [this] {
    screenshot(QStringLiteral("2-answer.png"), [this] {
      // A second turn in the same session.
      window_.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(tr("And in one sentence?"));
      connect(&window_, &MainWindow::answerFinished, this, [this] {
        screenshot(QStringLiteral("3-second-turn.png"), [this] { emit finished(); });
      }, Qt::SingleShotConnection);
      window_.send();
    });
  }, Qt::SingleShotConnection);
  window_.openModelDirectory(steps_.model_directory);
}

void DemoScript::ask() { window_.send(); }

void DemoScript::screenshot(const QString& name, const std::function<void()>& then) {
  // Let pending layout and paint events run first, so the picture shows the settled window.
  QTimer::singleShot(kSettleMs, this, [this, name, then] {
    window_.grab().save(QDir(steps_.screenshot_directory).filePath(name));
    then();
  });
}

}  // namespace lightdesk::gui
