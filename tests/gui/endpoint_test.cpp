// The app's server mode (File > Use a server…): the engine worker and the window answered by a
// running lightdesk-server on the bundled tiny model, against the same model loaded locally.
#include <QProcess>
#include <QRegularExpression>
#include <QSettings>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTest>
#include <QTextBrowser>

#include "engine_worker.h"
#include "main_window.h"
#include "session_repository.h"
#include "settings_dialog.h"
#include "window_test_util.h"

using lightdesk::gui::EngineStatePtr;
using lightdesk::gui::EngineWorker;
using lightdesk::gui::GenerationStats;
using lightdesk::gui::InMemorySessionRepository;
using lightdesk::gui::MainWindow;
using lightdesk::gui::SamplingSettings;
using lightdesk::gui::Turns;

namespace {

const QString kQuestion = QStringLiteral("What does Lightdesk keep with each session?");

SamplingSettings greedy() {
  SamplingSettings sampling;
  sampling.temperature = 0.0;
  sampling.max_new_tokens = 24;
  return sampling;
}

struct Answer {
  QString reasoning, text;
  std::optional<GenerationStats> stats;
  bool has_state = false;
  QString failure;
};

// The worker's answer to `turns`, asked directly on this thread.
Answer answer_of(EngineWorker& worker, const Turns& turns) {
  Answer answer;
  QObject context;
  QObject::connect(&worker, &EngineWorker::textPiece, &context, [&](const QString& reasoning, const QString& text) {
    answer.reasoning += reasoning;
    answer.text += text;
  });
  QObject::connect(&worker, &EngineWorker::generationFinished, &context,
                   [&](const GenerationStats& stats, const EngineStatePtr& state) {
                     answer.stats = stats;
                     answer.has_state = state != nullptr;
                   });
  QObject::connect(&worker, &EngineWorker::generationFailed, &context,
                   [&](const QString& message) { answer.failure = message; });
  worker.generate(turns, {}, greedy(), 1);
  return answer;
}

}  // namespace

class EndpointTest : public QObject {
  Q_OBJECT

 private slots:
  void initTestCase() {
    server_.setProgram(QStringLiteral(LIGHTDESK_SERVER));
    server_.setArguments({QStringLiteral("--model"), window_test::kModelDirectory, QStringLiteral("--port"),
                          QStringLiteral("0"), QStringLiteral("--threads"), QStringLiteral("1"),
                          QStringLiteral("--states-in-memory")});
    server_.start();
    QVERIFY(server_.waitForStarted());
    QVERIFY(server_.waitForReadyRead(window_test::kTimeoutMs));
    const QString line = QString::fromUtf8(server_.readLine());
    const auto match = QRegularExpression(QStringLiteral("(http://127\\.0\\.0\\.1:\\d+/v1)")).match(line);
    QVERIFY2(match.hasMatch(), qPrintable(line));
    endpoint_ = match.captured(1);

    EngineWorker local;
    QSignalSpy loaded(&local, &EngineWorker::modelLoaded);
    local.loadModel(window_test::kModelDirectory, QStringLiteral("cpu"));
    QCOMPARE(loaded.count(), 1);
    local_ = answer_of(local, turns());
    QVERIFY2(local_.failure.isEmpty(), qPrintable(local_.failure));
    QVERIFY(!local_.text.isEmpty());
  }

  void cleanupTestCase() {
    server_.terminate();
    server_.waitForFinished();
  }

  void workerAnswersAsTheLocalModelWithoutState() {
    EngineWorker remote;
    QSignalSpy connected(&remote, &EngineWorker::endpointConnected);
    remote.connectEndpoint(endpoint_, {}, {});
    QCOMPARE(connected.count(), 1);
    QCOMPARE(connected[0][1].toString(), QStringLiteral("tiny-a-m1-rd8"));
    const Answer answer = answer_of(remote, turns());
    QVERIFY2(answer.failure.isEmpty(), qPrintable(answer.failure));
    QVERIFY(answer.stats);
    QCOMPARE(answer.text, local_.text);
    QCOMPARE(answer.reasoning, local_.reasoning);
    QCOMPARE(answer.stats->generated_tokens, local_.stats->generated_tokens);
    QCOMPARE(answer.stats->prompt_tokens, local_.stats->prompt_tokens);
    QVERIFY(!answer.has_state);  // no model state on this computer
  }

  void unreachableServerIsRefusedWithTheCause() {
    EngineWorker remote;
    QSignalSpy failed(&remote, &EngineWorker::endpointFailed);
    remote.connectEndpoint(QStringLiteral("http://127.0.0.1:1/v1"), {}, {});
    QCOMPARE(failed.count(), 1);
    QVERIFY2(failed[0][1].toString().contains(QStringLiteral("cannot reach the server")),
             qPrintable(failed[0][1].toString()));
    remote.connectEndpoint(QStringLiteral("ftp://example.org"), {}, {});
    QCOMPARE(failed.count(), 2);
    QVERIFY2(failed[1][1].toString().contains(QStringLiteral("http://")), qPrintable(failed[1][1].toString()));
  }

  void windowAsksTheServer() {
    QTemporaryDir directory;
    QSettings settings(directory.filePath(QStringLiteral("settings.ini")), QSettings::IniFormat);
    lightdesk::gui::store_sampling(settings, QStringLiteral("remote"), greedy());
    InMemorySessionRepository sessions;
    MainWindow window(sessions, settings);
    window.show();
    QSignalSpy ready(&window, &MainWindow::modelReady);
    window.connectEndpoint(endpoint_, {}, {});
    QVERIFY(ready.wait(window_test::kTimeoutMs));
    const QString label = window.findChild<QLabel*>(QStringLiteral("modelLabel"))->text();
    QVERIFY2(label.contains(endpoint_) && label.contains(QStringLiteral("no model state is kept here")),
             qPrintable(label));
    window_test::ask(window, kQuestion);
    QVERIFY2(!QTest::currentTestFailed(), qPrintable(window.findChild<QLabel*>(QStringLiteral("messageLabel"))->text() +
                                                     QLatin1Char('|') + window_test::statusText(window)));
    const QString transcript = window.findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText();
    QVERIFY2(transcript.contains(kQuestion) && transcript.contains(local_.text.trimmed()), qPrintable(transcript));
    // The answer joined the session; a local model is not needed for any of it.
    QCOMPARE(sessions.list().size(), 1);
  }

 private:
  static Turns turns() { return {{true, kQuestion.toStdString(), {}, {}}}; }

  QProcess server_;
  QString endpoint_;
  Answer local_;
};

QTEST_MAIN(EndpointTest)
#include "endpoint_test.moc"
