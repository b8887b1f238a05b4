#include "demo_script.h"

#include <QApplication>
#include <QCoreApplication>
#include <QDir>
#include <QKeyEvent>
#include <QLineEdit>
#include <QListWidget>
#include <QPixmap>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QRegularExpression>
#include <QScrollBar>
#include <QTextBrowser>
#include <QTimer>

#include <memory>

#include "conversation_panel.h"
#include "main_window.h"
#include "settings_dialog.h"

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
    screenshot(QStringLiteral("01-model-and-document.png"), [this] { firstTurn(); });
  });
  // What a first start shows, before anything is opened.
  screenshot(QStringLiteral("00-first-launch.png"), [this] { window_.openModelDirectory(steps_.model_directory); });
}

void DemoScript::firstTurn() {
  ask(steps_.questions.value(0), [this] { screenshot(QStringLiteral("05-answer.png"), [this] { secondTurn(); }); });
}

void DemoScript::secondTurn() {
  ask(steps_.questions.value(1, tr("And in one sentence?")), [this] {
    screenshot(QStringLiteral("06-follow-up.png"), [this] { reopen(); });
  });
}

void DemoScript::reopen() {
  // The model opened again: the session's saved state comes back instead of a second read.
  connect(&window_, &MainWindow::stateRestored, this, [this] {
    screenshot(QStringLiteral("07-reopened.png"), [this] { search(); });
  }, Qt::SingleShotConnection);
  window_.openModelDirectory(steps_.model_directory);
}

void DemoScript::search() {
  // The first question's longest word, searched and a hit opened.
  QString word;
  for (const QString& candidate : steps_.questions.value(0).split(QRegularExpression(QStringLiteral("\\W+")), Qt::SkipEmptyParts))
    if (candidate.size() > word.size()) word = candidate;
  auto* box = window_.findChild<QLineEdit*>(QStringLiteral("searchBox"));
  auto* results = window_.findChild<QListWidget*>(QStringLiteral("searchResults"));
  box->setFocus();
  box->setText(word);
  QTimer::singleShot(1000, this, [this, results, box] {
    // The last hit: a message (the first ones may be the document's).
    if (results->count() > 0) emit results->itemClicked(results->item(results->count() - 1));
    screenshot(QStringLiteral("08-search.png"), [this, box] {
      box->clear();
      regenerateAndEdit();
    });
  });
}

void DemoScript::regenerateAndEdit() {
  connect(&window_, &MainWindow::answerFinished, this, [this] {
    screenshot(QStringLiteral("09-regenerated.png"), [this] {
      // A draft typed, then an earlier question edited: the bar says what sending it costs.
      input().setPlainText(tr("(a follow-up being typed)"));
      window_.editMessage(0);
      screenshot(QStringLiteral("10-editing.png"), [this] {
        // Esc gives the draft back; the follow-up is edited instead (its state is saved).
        QKeyEvent escape(QEvent::KeyPress, Qt::Key_Escape, Qt::NoModifier);
        QCoreApplication::sendEvent(&input(), &escape);
        window_.editMessage(2);
        input().setPlainText(input().toPlainText() + QLatin1Char(' ') + tr("Answer in a few words."));
        connect(&window_, &MainWindow::answerFinished, this, [this] {
          screenshot(QStringLiteral("11-edited.png"), [this] { documents(); });
        }, Qt::SingleShotConnection);
        window_.send();
      });
    });
  }, Qt::SingleShotConnection);
  window_.regenerate();
}

void DemoScript::documents() {
  // "Show in document" on the first answer, then a search inside the document.
  window_.showInDocument(1);
  screenshot(QStringLiteral("13-show-in-document.png"), [this] {
    auto* search = window_.findChild<QLineEdit*>(QStringLiteral("documentSearch"));
    // The follow-up's last two words ("pass key" of "What is the pass key?").
    const QStringList words =
        steps_.questions.value(1).split(QRegularExpression(QStringLiteral("\\W+")), Qt::SkipEmptyParts);
    const QString word = words.mid(std::max<qsizetype>(0, words.size() - 2)).join(QLatin1Char(' '));
    search->setText(word);
    QKeyEvent enter(QEvent::KeyPress, Qt::Key_Return, Qt::NoModifier);
    QCoreApplication::sendEvent(search, &enter);
    screenshot(QStringLiteral("14-document-search.png"), [this] { settings(); });
  });
}

void DemoScript::settings() {
  // The settings, the GPUs and the context under "Model placement", over the window.
  auto* dialog = new SettingsDialog(window_.settings(), QStringLiteral("M1"), {}, gpu_devices(), &window_);
  dialog->setAttribute(Qt::WA_DeleteOnClose);
  dialog->show();
  QTimer::singleShot(kSettleMs, this, [this, dialog] {
    dialog->grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("15-settings.png")));
    dialog->close();
    systemPrompt();
  });
}

void DemoScript::systemPrompt() {
  const QString prompt = tr("Answer in one short sentence, and name the part of the document you used.");
  const QListWidgetItem* session = window_.findChild<QListWidget*>(QStringLiteral("sessionList"))->currentItem();
  auto* dialog = new SessionSettingsDialog(session ? session->text() : QString(), prompt, QStringLiteral("M1"),
                                           {1.0, 0.95, 0, 512}, std::nullopt, &window_);
  dialog->setAttribute(Qt::WA_DeleteOnClose);
  dialog->show();
  QTimer::singleShot(kSettleMs, this, [this, dialog, prompt] {
    dialog->grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("18-session-settings.png")));
    dialog->close();
    window_.setSystemPrompt(prompt);
    // The conversation from its top, where the system prompt is.
    window_.findChild<QTextBrowser*>(QStringLiteral("transcript"))->verticalScrollBar()->setValue(0);
    screenshot(QStringLiteral("19-system-prompt.png"), [this] { sessionsWhileReading(); });
  });
}

void DemoScript::sessionsWhileReading() {
  const qint64 asked = window_.currentSessionId();
  window_.newSession();  // one more session, to look at while the engine reads
  window_.showMessage(asked, 0);
  auto* list = window_.findChild<QListWidget*>(QStringLiteral("sessionList"));
  auto* progress = window_.findChild<QProgressBar*>(QStringLiteral("progressBar"));
  // Under the new system prompt the conversation is read again whole: meanwhile the other
  // session is opened from the list.
  auto reading = std::make_shared<QMetaObject::Connection>();
  *reading = connect(progress, &QProgressBar::valueChanged, this, [this, list, progress, reading](int value) {
    if (!progress->isVisible() || value * 4 < progress->maximum()) return;
    disconnect(*reading);
    QListWidgetItem* other = nullptr;
    for (int row = 0; row < list->count(); ++row)
      if (list->item(row) != list->currentItem()) other = list->item(row);
    if (other != nullptr) emit list->itemClicked(other);
    QTimer::singleShot(0, this, [this] {
      window_.grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("20-sessions-while-reading.png")));
    });
  });
  ask(steps_.questions.value(0), [this, reading, asked] {
    disconnect(*reading);
    window_.showMessage(asked, 0);
    darkMode();
  });
}

void DemoScript::darkMode() {
  // The same window in a dark theme: every colour comes from the palette.
  const QPalette light = QApplication::palette();
  QApplication::setStyle(QStringLiteral("Fusion"));
  QApplication::setPalette(dark_palette());
  screenshot(QStringLiteral("16-dark.png"), [this, light] {
    QApplication::setPalette(light);
    badModelDirectory();
  });
}

void DemoScript::badModelDirectory() {
  connect(&window_, &MainWindow::errorShown, this, [this] {
    screenshot(QStringLiteral("12-bad-model-directory.png"), [this] { emit finished(); });
  }, Qt::SingleShotConnection);
  window_.openModelDirectory(QDir::temp().filePath(QStringLiteral("not-a-model")));
}

void DemoScript::ask(const QString& question, const std::function<void()>& then) {
  auto* transcript = window_.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  const qsizetype before = transcript->toPlainText().size() + question.size();
  // One picture while the answer streams in (taken at once: the answer does not wait).
  auto streaming = std::make_shared<QMetaObject::Connection>();
  // A long document (one that takes a while to read): one picture of its reading a third of the
  // way in, where it is stopped; one of the stop; then the question is sent again.
  auto reading = std::make_shared<QMetaObject::Connection>();
  auto* progress = window_.findChild<QProgressBar*>(QStringLiteral("progressBar"));
  if (!reading_shot_taken_)
    *reading = connect(progress, &QProgressBar::valueChanged, this, [this, progress, reading](int value) {
      if (!progress->isVisible() || progress->maximum() < kLongPromptTokens || value * 3 < progress->maximum()) return;
      disconnect(*reading);
      reading_shot_taken_ = true;
      // After the progress text, which the window sets after the value.
      QTimer::singleShot(0, this, [this] {
        window_.grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("02-reading-the-document.png")));
        window_.stop();
      });
    });
  if (!streaming_shot_taken_)
    *streaming = connect(transcript, &QTextBrowser::textChanged, this, [this, transcript, before, streaming] {
      if (transcript->toPlainText().size() < before + kStreamingShotCharacters) return;
      disconnect(*streaming);
      streaming_shot_taken_ = true;
      window_.grab().save(QDir(steps_.screenshot_directory).filePath(QStringLiteral("04-streaming.png")));
    });
  auto finished = std::make_shared<QMetaObject::Connection>();
  *finished = connect(&window_, &MainWindow::answerFinished, this, [this, streaming, reading, finished, then] {
    disconnect(*reading);
    // A stop during the read puts the question back into the input box: sent again, the read
    // goes on where it stopped.
    if (reading_shot_taken_ && !stop_shot_taken_) {
      stop_shot_taken_ = true;
      screenshot(QStringLiteral("03-stopped.png"), [this] { window_.send(); });
      return;
    }
    disconnect(*streaming);
    disconnect(*finished);
    then();
  });
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
