// Steps the window tests share: the bundled tiny model opened, a question asked and answered,
// the status bar's message read whole.
#pragma once

#include <QFile>
#include <QLabel>
#include <QPlainTextEdit>
#include <QSettings>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTest>

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

}  // namespace window_test
