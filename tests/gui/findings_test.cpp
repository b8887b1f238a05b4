// What a first-time user hit (issue 16), each step driven through the real MainWindow under the
// offscreen platform with the bundled tiny model (a random M1 with a 512-id tokenizer and a
// 4,096-token context, so its answers are random text).
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QScreen>
#include <QSettings>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTest>
#include <QTextBrowser>

#include <filesystem>

#include "main_window.h"
#include "session_repository.h"
#include "status_panel.h"
#include "store_session_repository.h"
#include "window_test_util.h"

using lightdesk::gui::ChatEntry;
using lightdesk::gui::InMemorySessionRepository;
using lightdesk::gui::MainWindow;

using window_test::kTimeoutMs;

class FindingsTest : public QObject {
  Q_OBJECT

 private slots:
  void init() {
    QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
    QVERIFY(directory_.isValid());
    settings_ = window_test::freshSettings(directory_, 8);
    sessions_ = std::make_unique<InMemorySessionRepository>();
  }

  void cleanup() {
    window_.reset();
    sessions_.reset();
    settings_.reset();
  }

  // 1. Type a question, click "Edit" on an earlier one, press Esc: the typed text is back.
  void draftSurvivesAnEdit() {
    const qint64 id = sessions_->create(QStringLiteral("Letter")).id;
    sessions_->append(id, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    sessions_->append(id, {ChatEntry::Role::Assistant, QStringLiteral("In the chest."), {}, {}, {}});
    openWindow();
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    QTest::keyClicks(input, QStringLiteral("And the key?"));
    emit window_->findChild<QTextBrowser*>(QStringLiteral("transcript"))->anchorClicked(QUrl(QStringLiteral("edit:0")));
    QCOMPARE(input->toPlainText(), QStringLiteral("Where is the letter?"));
    QTest::keyClick(input, Qt::Key_Escape);
    QCOMPARE(input->toPlainText(), QStringLiteral("And the key?"));
  }

  // 2. Stop while the prompt is read: no negative count, no speed, and sending again goes on
  // from where the read stopped instead of from 0.
  void stopDuringTheReadCountsNothingNegativeAndGoesOn() {
    openWindow();
    openModel();
    const QString path = writeDocument(QStringLiteral("long.txt"), 300);
    attach(path);
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    input->setPlainText(QStringLiteral("What is in it?"));
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    window_->send();
    window_->stop();  // before the engine thread starts the read: it stops after its first chunk
    QVERIFY(finished.wait(kTimeoutMs));
    const QString stopped = status();
    QVERIFY2(stopped.startsWith(QStringLiteral("Stopped while reading the prompt")), qPrintable(stopped));
    QVERIFY2(!stopped.contains(QLatin1Char('-')), qPrintable(stopped));
    // How far the read came, of the whole prompt.
    QVERIFY2(stopped.contains(QRegularExpression(QStringLiteral("\\d+ of [\\d,]+ prompt tokens read"))), qPrintable(stopped));
    QVERIFY(window_->findChild<QLabel*>(QStringLiteral("speedLabel"))->text().isEmpty());
    QCOMPARE(input->toPlainText(), QStringLiteral("What is in it?"));
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    QVERIFY2(status().contains(QStringLiteral("kept from the session state")), qPrintable(status()));
  }

  // 3. A file larger than the context is refused as soon as its count passes the context, and
  // Send refuses documents that together cannot fit before reading or renaming anything.
  void tooLargeDocumentsAreRefusedAtOnce() {
    openWindow();
    openModel();
    QSignalSpy errors(window_.get(), &MainWindow::errorShown);
    window_->attachFiles({writeDocument(QStringLiteral("huge.txt"), 2000)});
    QVERIFY(errors.wait(kTimeoutMs));
    QVERIFY2(errors.front().front().toString().contains(QStringLiteral("does not fit the model's context of 4,096 tokens")),
             qPrintable(errors.front().front().toString()));
    QCOMPARE(window_->findChild<QListWidget*>(QStringLiteral("attachmentList"))->count(), 0);
    attach(writeDocument(QStringLiteral("a.txt"), 250));
    attach(writeDocument(QStringLiteral("b.txt"), 250));
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    input->setPlainText(QStringLiteral("Both?"));
    window_->send();
    QCOMPARE(errors.size(), 2);  // at once, not after a read
    QVERIFY2(errors.back().front().toString().contains(QStringLiteral("do not fit the model's context")),
             qPrintable(errors.back().front().toString()));
    QCOMPARE(input->toPlainText(), QStringLiteral("Both?"));
    QCOMPARE(sessions_->list().front().title, QStringLiteral("New chat"));
  }

  // 6. Banners and figures belong to what they are about: an attach error does not follow into
  // a new session, a banner can be closed, a new session shows no context figure of another.
  void staleBannersAndFiguresGo() {
    openWindow();
    openModel();
    auto* banner = window_->findChild<QLabel*>(QStringLiteral("messageLabel"));
    QSignalSpy errors(window_.get(), &MainWindow::errorShown);
    window_->attachFiles({directory_.filePath(QStringLiteral("missing.txt"))});
    QVERIFY(errors.wait(kTimeoutMs));
    QVERIFY(banner->isVisible());
    QTest::mouseClick(window_->findChild<QWidget*>(QStringLiteral("bannerClose")), Qt::LeftButton);
    QVERIFY(!banner->isVisible());
    window_->attachFiles({directory_.filePath(QStringLiteral("missing.txt"))});
    QVERIFY(errors.wait(kTimeoutMs));
    QVERIFY(banner->isVisible());
    ask(QStringLiteral("Hello?"));  // the next question closes it
    QVERIFY(!banner->isVisible());
    auto* context = window_->findChild<QLabel*>(QStringLiteral("contextLabel"));
    QVERIFY2(!context->text().startsWith(QStringLiteral("context: 0 ")), qPrintable(context->text()));
    window_->newSession();
    QCOMPARE(context->text(), QStringLiteral("context: 0 / 4,096"));
    // A failed answer leaves no "Reading the prompt…" behind (an image to a model without eyes).
    attach(QStringLiteral(LIGHTDESK_TEST_DATA "/tiny-vl/images/gradient.png"));
    QSignalSpy failed(window_.get(), &MainWindow::errorShown);
    window_->findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(QStringLiteral("What is shown?"));
    window_->send();
    QVERIFY(failed.wait(kTimeoutMs));
    QVERIFY2(failed.back().front().toString().contains(QStringLiteral("cannot read images")),
             qPrintable(failed.back().front().toString()));
    QVERIFY2(!status().contains(QStringLiteral("Reading the prompt")), qPrintable(status()));
  }

  // 7. A search hit on an earlier branch opens that branch, with the word selected.
  void searchHitOnAnEarlierBranchOpensIt() {
    const qint64 id = sessions_->create(QStringLiteral("Letter")).id;
    sessions_->append(id, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    sessions_->append(id, {ChatEntry::Role::Assistant, QStringLiteral("Under the stairs."), {}, {}, {}});
    sessions_->branch(id, 0);
    sessions_->append(id, {ChatEntry::Role::User, QStringLiteral("Where was the letter hidden?"), {}, {}, {}});
    sessions_->append(id, {ChatEntry::Role::Assistant, QStringLiteral("In the blue chest."), {}, {}, {}});
    openWindow();
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("stairs")));
    QTest::keyClicks(window_->findChild<QLineEdit*>(QStringLiteral("searchBox")), QStringLiteral("stairs"));
    auto* results = window_->findChild<QListWidget*>(QStringLiteral("searchResults"));
    QTRY_VERIFY(results->isVisible() && results->count() == 1);
    QTest::mouseClick(results->viewport(), Qt::LeftButton, {}, results->visualItemRect(results->item(0)).center());
    QVERIFY2(transcript->toPlainText().contains(QStringLiteral("Under the stairs.")), qPrintable(transcript->toPlainText()));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("‹ 1/2 ›")));
    QCOMPARE(transcript->textCursor().selectedText(), QStringLiteral("stairs"));
  }

  // 8. Regenerate keeps the old answer reachable: "‹ 2/2 ›" and back to "1/2" with it.
  void regenerateKeepsTheOldAnswerBrowsable() {
    openWindow();
    openModel();
    ask(QStringLiteral("Where is the letter?"));
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    const QString first_answer = sessions_->load(sessions_->list().front().id)->entries.at(1).text;
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("1/")));
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    settings_->setValue(QStringLiteral("sampling/M1/temperature"), 1.0);
    window_->regenerate();
    QVERIFY(finished.wait(kTimeoutMs));
    QVERIFY2(transcript->toPlainText().contains(QStringLiteral("‹ 2/2 ›")), qPrintable(transcript->toPlainText()));
    emit transcript->anchorClicked(QUrl(QStringLiteral("branch:0:1")));
    QVERIFY2(transcript->toPlainText().contains(QStringLiteral("‹ 1/2 ›")), qPrintable(transcript->toPlainText()));
    const auto shown = sessions_->load(sessions_->list().front().id);
    QCOMPARE(shown->entries.size(), 2);
    QCOMPARE(shown->entries.at(1).text, first_answer);
    // The branch shown is the one a follow-up continues.
    ask(QStringLiteral("And then?"));
    QCOMPARE(sessions_->load(sessions_->list().front().id)->entries.at(1).text, first_answer);
  }

  // 8, kept: the branches and the one shown survive a restart of the store, and a message added
  // after switching branches follows the branch shown.
  void branchesSurviveARestart() {
    QTemporaryDir data;
    QVERIFY(data.isValid());
    const std::filesystem::path database = data.filePath(QStringLiteral("sessions.sqlite")).toStdString();
    qint64 id = 0;
    {
      lightdesk::gui::StoreSessionRepository sessions(database);
      id = sessions.create(QStringLiteral("Letter")).id;
      sessions.append(id, {ChatEntry::Role::User, QStringLiteral("Where?"), {}, {}, {}});
      sessions.append(id, {ChatEntry::Role::Assistant, QStringLiteral("Stairs."), {}, {}, {}});
      sessions.branch(id, 1);
      sessions.append(id, {ChatEntry::Role::Assistant, QStringLiteral("Chest."), {}, {}, {}});
      QCOMPARE(sessions.siblings(id, 1).count, 2);
      QCOMPARE(sessions.siblings(id, 1).index, 2);
      QCOMPARE(sessions.showSibling(id, 1, 1)->entries.at(1).text, QStringLiteral("Stairs."));
      sessions.append(id, {ChatEntry::Role::User, QStringLiteral("Which stairs?"), {}, {}, {}});
    }
    lightdesk::gui::StoreSessionRepository reopened(database);
    const auto session = reopened.load(id);
    QVERIFY(session);
    // The newest message's branch: the follow-up of the answer switched back to.
    QCOMPARE(session->entries.size(), 3);
    QCOMPARE(session->entries.at(1).text, QStringLiteral("Stairs."));
    QCOMPARE(session->entries.at(2).text, QStringLiteral("Which stairs?"));
    QCOMPARE(reopened.siblings(id, 1).count, 2);
    QCOMPARE(reopened.siblings(id, 1).index, 1);
    QCOMPARE(reopened.showSibling(id, 1, 2)->entries.size(), 2);
  }

  // 9. A relaunch opens the last conversation, and empty "New chat" sessions are not kept.
  void relaunchOpensTheLastConversation() {
    const qint64 used = sessions_->create(QStringLiteral("Letter")).id;
    sessions_->append(used, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    QTest::qWait(5);
    sessions_->create(QStringLiteral("New chat"));
    sessions_->create(QStringLiteral("New chat"));
    openWindow();
    QCOMPARE(sessions_->list().size(), 1);
    QVERIFY(window_->findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText().contains(QStringLiteral("letter")));
  }

  // 11. The window opens within the screen, whatever its size and scale.
  void windowFitsTheScreen() {
    openWindow();
    const QSize available = window_->screen()->availableGeometry().size();
    QVERIFY2(window_->sizeHint().width() <= available.width() && window_->sizeHint().height() <= available.height(),
             qPrintable(QStringLiteral("%1x%2 on %3x%4")
                            .arg(window_->sizeHint().width())
                            .arg(window_->sizeHint().height())
                            .arg(available.width())
                            .arg(available.height())));
    QVERIFY(window_->frameGeometry().width() <= available.width());
  }

  // 12. Token counts are written one way: the model check, the documents, the context.
  void countsAreWrittenOneWay() {
    openWindow();
    openModel();
    QVERIFY2(window_->findChild<QLabel*>(QStringLiteral("modelLabel"))->text().contains(QStringLiteral("4,096 tokens of context")),
             qPrintable(window_->findChild<QLabel*>(QStringLiteral("modelLabel"))->text()));
    attach(writeDocument(QStringLiteral("notes.txt"), 200));
    const QString line = window_->findChild<QListWidget*>(QStringLiteral("attachmentList"))->item(0)->text();
    QVERIFY2(line.contains(QRegularExpression(QStringLiteral("— \\d,\\d{3} tokens"))), qPrintable(line));
    QCOMPARE(window_->findChild<QLabel*>(QStringLiteral("contextLabel"))->text(), QStringLiteral("context: 0 / 4,096"));
  }

 private:
  void openWindow() {
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    window_->show();
    QVERIFY(QTest::qWaitForWindowExposed(window_.get()));
  }

  void openModel() { window_test::openModel(*window_); }

  void attach(const QString& path) {
    QSignalSpy attached(window_.get(), &MainWindow::documentAttached);
    window_->attachFiles({path});
    QVERIFY(attached.wait(kTimeoutMs));
  }

  void ask(const QString& question) { window_test::ask(*window_, question); }

  QString status() const { return window_test::statusText(*window_); }

  // A text of `lines` numbered lines (about 10 tokens each with the tiny tokenizer).
  QString writeDocument(const QString& name, int lines) {
    const QString path = directory_.filePath(name);
    QFile file(path);
    if (!file.open(QIODevice::WriteOnly)) return path;
    for (int i = 0; i < lines; ++i) file.write(QStringLiteral("Line %1 of the notes.\n").arg(i).toUtf8());
    return path;
  }

  QTemporaryDir directory_;
  std::unique_ptr<QSettings> settings_;
  std::unique_ptr<InMemorySessionRepository> sessions_;
  std::unique_ptr<MainWindow> window_;
};

QTEST_MAIN(FindingsTest)
#include "findings_test.moc"
