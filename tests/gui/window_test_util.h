// Steps the window tests share: the bundled tiny model opened, a question asked and answered,
// the status bar's message read whole.
#pragma once

#include <QApplication>
#include <QDialog>
#include <QDialogButtonBox>
#include <QFile>
#include <QLabel>
#include <QPushButton>
#include <QTextBrowser>
#include <QTimer>
#include <QPlainTextEdit>
#include <QSettings>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTest>

#include <functional>
#include <memory>

#include "main_window.h"
#include "status_panel.h"

namespace window_test {

inline const QString kModelDirectory = QStringLiteral(LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8");
constexpr int kTimeoutMs = 20000;

// The status bar's message, whole (the label elides what does not fit).
inline QString statusText(const lightdesk::gui::MainWindow& window) {
  return window.findChild<lightdesk::gui::ElidedLabel*>(QStringLiteral("statusMessage"))->fullText();
}

// A settings file of its own in `directory`, emptied, whose M1 answers stop after
// `max_new_tokens` (each test starts from the same settings).
inline std::unique_ptr<QSettings> freshSettings(const QTemporaryDir& directory, int max_new_tokens) {
  const QString path = directory.filePath(QStringLiteral("settings.ini"));
  QFile::remove(path);
  auto settings = std::make_unique<QSettings>(path, QSettings::IniFormat);
  settings->setValue(QStringLiteral("sampling/M1/max_new_tokens"), max_new_tokens);
  return settings;
}

// Opens the bundled model in the window and waits until it is loaded.
inline void openModel(lightdesk::gui::MainWindow& window) {
  QSignalSpy ready(&window, &lightdesk::gui::MainWindow::modelReady);
  window.openModelDirectory(kModelDirectory);
  QVERIFY2(ready.wait(kTimeoutMs), qPrintable(window.findChild<QLabel*>(QStringLiteral("messageLabel"))->text()));
}

// Types `question` into the window, sends it and waits for the whole answer.
inline void ask(lightdesk::gui::MainWindow& window, const QString& question) {
  QSignalSpy finished(&window, &lightdesk::gui::MainWindow::answerFinished);
  window.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(question);
  window.send();
  QVERIFY(finished.wait(kTimeoutMs));
}

// Clicks the link whose text is `text` in the transcript, as a person does (scrolled into view
// first).
inline void clickLink(QTextBrowser* browser, const QString& text, int occurrence = 0) {
  QTextCursor found;
  for (int i = 0; i <= occurrence; ++i) {
    found = browser->document()->find(text, found.isNull() ? 0 : found.selectionEnd());
    QVERIFY2(!found.isNull(), qPrintable(QStringLiteral("no link “%1” in: %2").arg(text, browser->toPlainText())));
  }
  QTextCursor middle(browser->document());
  middle.setPosition((found.selectionStart() + found.selectionEnd()) / 2);
  browser->setTextCursor(middle);
  browser->ensureCursorVisible();
  QVERIFY2(!browser->anchorAt(browser->cursorRect(middle).center()).isEmpty(), qPrintable(text));
  QTest::mouseClick(browser->viewport(), Qt::LeftButton, {}, browser->cursorRect(middle).center());
}

// Does `open` (which shows a modal dialog), then `fill` on the dialog once it shows, then clicks
// its OK button.
inline void answerDialog(const std::function<void()>& open, const std::function<void(QDialog&)>& fill) {
  bool answered = false;
  auto* poll = new QTimer;
  poll->setInterval(10);
  QObject::connect(poll, &QTimer::timeout, [&answered, poll, fill] {
    auto* dialog = qobject_cast<QDialog*>(QApplication::activeModalWidget());
    if (dialog == nullptr || !dialog->isVisible()) return;
    poll->stop();
    poll->deleteLater();
    dialog->activateWindow();
    if (!QTest::qWaitForWindowActive(dialog)) return;
    fill(*dialog);
    QTest::mouseClick(dialog->findChild<QDialogButtonBox*>()->button(QDialogButtonBox::Ok), Qt::LeftButton);
    answered = true;
  });
  poll->start();
  open();
  QVERIFY(answered);
}

// Replaces the text of `edit` by typing, as a person does (select all, delete, type).
template <typename Edit>
void retype(Edit* edit, const QString& text) {
  edit->setFocus();
  QTest::keyClick(edit, Qt::Key_A, Qt::ControlModifier);
  QTest::keyClick(edit, Qt::Key_Delete);
  QTest::keyClicks(edit, text);
}

}  // namespace window_test
