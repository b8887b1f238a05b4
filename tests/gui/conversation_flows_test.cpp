// The conversation flows of issue 23, each driven through the whole window (offscreen) as a person
// uses it, with clicks and keys: a system prompt per session (typed in the session's settings,
// shown at the top of the conversation, read before every turn, changed mid-session, kept with
// the session and with each saved state), the "‹ 2/3 ›" switcher between branches, a launch
// that reopens the conversation shown last, and numbers in the locale's format.
#include <QAction>
#include <QApplication>
#include <QCheckBox>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QPushButton>
#include <QThread>
#include <QPlainTextEdit>
#include <QRegularExpression>
#include <QSettings>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTest>
#include <QTextBrowser>

#include <chrono>
#include <filesystem>
#include <memory>

#include "conversation_export.h"
#include "engine_worker.h"
#include "lightdesk/conversation.h"
#include "lightdesk/store.h"
#include "main_window.h"
#include "session_repository.h"
#include "store_session_repository.h"
#include "window_test_util.h"

using lightdesk::gui::ChatEntry;
using lightdesk::gui::InMemorySessionRepository;
using lightdesk::gui::MainWindow;
using lightdesk::gui::StoreSessionRepository;
using window_test::kTimeoutMs;

namespace {

QTextBrowser* transcriptOf(const MainWindow& window) {
  return window.findChild<QTextBrowser*>(QStringLiteral("transcript"));
}

// "N prompt tokens read" of the status bar's last answer summary.
qint64 promptTokensRead(const MainWindow& window) {
  const QString status = window_test::statusText(window);
  const QRegularExpressionMatch match =
      QRegularExpression(QStringLiteral("([\\d,]+) prompt tokens read")).match(status);
  return match.hasMatch() ? QLocale().toLongLong(match.captured(1)) : -1;
}

// Tokens of the conversation `entries` read whole after `system`: the chat format's own render,
// computed here apart from the window and its engine thread.
qint64 renderedTokens(const QList<ChatEntry>& entries, const QString& system) {
  const std::filesystem::path model = window_test::kModelDirectory.toStdString();
  const auto tokenizer = lightdesk::Tokenizer::open(model);
  const auto format = lightdesk::ChatFormat::for_model(model, *tokenizer);
  std::vector<lightdesk::conversation::Turn> turns;
  for (const ChatEntry& entry : entries)
    turns.push_back({entry.role == ChatEntry::Role::User, entry.text.toStdString(), {}, {}});
  return static_cast<qint64>(
      format.render(lightdesk::conversation::to_chat(turns, system.toStdString())).encode(*tokenizer).size());
}

// The engine taking its time: each document read and each answer first waits `delay` on the
// engine thread, then does the real work.
class SlowEngine : public lightdesk::gui::EngineWorker {
 public:
  explicit SlowEngine(std::chrono::milliseconds delay) : delay_(delay) {}
  void readDocument(const QString& path) override {
    QThread::msleep(static_cast<unsigned long>(delay_.count()));
    EngineWorker::readDocument(path);
  }
  void generate(const lightdesk::gui::Turns& conversation, const QString& systemPrompt,
                const lightdesk::gui::SamplingSettings& sampling, qint64 sessionId) override {
    QThread::msleep(static_cast<unsigned long>(delay_.count()));
    EngineWorker::generate(conversation, systemPrompt, sampling, sessionId);
  }

 private:
  std::chrono::milliseconds delay_;
};

// Session > Settings for this session…, the system prompt typed in, OK.
void typeSystemPrompt(const std::function<void()>& open, const QString& prompt) {
  window_test::answerDialog(open, [&prompt](QDialog& dialog) {
    window_test::retype(dialog.findChild<QPlainTextEdit*>(QStringLiteral("systemPromptEdit")), prompt);
  });
}

}  // namespace

class ConversationFlowsTest : public QObject {
  Q_OBJECT

 private slots:
  void init() {
    QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
    QVERIFY(directory_.isValid());
    settings_ = window_test::freshSettings(directory_, 8);
  }

  void cleanup() { settings_.reset(); }

  // A system prompt typed in the session's settings is shown at the top of the conversation and
  // read before its first turn; a follow-up keeps the state; a change mid-session says that the
  // next question reads everything again, and it does, under the new one. The store keeps it with
  // the session and with each checkpoint; a relaunch opens the session with it and restores the
  // state; a state of another system prompt is refused by name and the conversation read again.
  void systemPromptOpensEveryTurnAndIsKeptWithTheState() {
    const std::filesystem::path database = directory_.filePath(QStringLiteral("sessions.sqlite")).toStdString();
    std::filesystem::remove(database);
    const QString first = QStringLiteral("Answer in one word.");
    const QString second = QStringLiteral("Answer in French.");
    qint64 id = 0;
    {
      StoreSessionRepository sessions(database);
      MainWindow window(sessions, *settings_);
      window.show();
      QVERIFY(QTest::qWaitForWindowActive(&window));
      window_test::openModel(window);
      auto* transcript = transcriptOf(window);
      window_test::answerDialog(
          [&window] { window.findChild<QAction*>(QStringLiteral("sessionSettingsAction"))->trigger(); },
          [&first](QDialog& dialog) {
            auto* edit = dialog.findChild<QPlainTextEdit*>(QStringLiteral("systemPromptEdit"));
            window_test::retype(edit, first);
            // Tab leaves the box (it types no tab) for the session's own sampling.
            QTest::keyClick(edit, Qt::Key_Tab);
            QCOMPARE(dialog.focusWidget(), dialog.findChild<QCheckBox*>(QStringLiteral("ownSamplingBox")));
            QCOMPARE(edit->toPlainText(), first);
          });
      QVERIFY2(transcript->toPlainText().contains(QStringLiteral("System prompt: Answer in one word.")),
               qPrintable(transcript->toPlainText()));
      QSignalSpy generate(&window, &MainWindow::generateRequested);
      window_test::ask(window, QStringLiteral("Where is the letter?"));
      QCOMPARE(generate.size(), 1);
      QCOMPARE(generate.front().at(1).toString(), first);
      id = sessions.list().front().id;
      QCOMPARE(promptTokensRead(window), renderedTokens(sessions.load(id)->entries.mid(0, 1), first));
      QVERIFY(renderedTokens(sessions.load(id)->entries.mid(0, 1), first) >
              renderedTokens(sessions.load(id)->entries.mid(0, 1), {}));
      window_test::ask(window, QStringLiteral("And the key?"));
      QVERIFY2(window_test::statusText(window).contains(QStringLiteral("kept from the session state")),
               qPrintable(window_test::statusText(window)));

      // Changed with a click on the line's "✎ Change".
      typeSystemPrompt([transcript] { window_test::clickLink(transcript, QStringLiteral("✎ Change")); }, second);
      QVERIFY2(window_test::statusText(window).startsWith(QStringLiteral("New system prompt: the next question reads the conversation again.")),
               qPrintable(window_test::statusText(window)));
      QVERIFY(transcript->toPlainText().contains(QStringLiteral("System prompt: Answer in French.")));
      window_test::ask(window, QStringLiteral("And the door?"));
      QVERIFY2(!window_test::statusText(window).contains(QStringLiteral("kept from")),
               qPrintable(window_test::statusText(window)));
      QCOMPARE(promptTokensRead(window), renderedTokens(sessions.load(id)->entries.mid(0, 5), second));
      // A follow-up continues the state computed under the new one.
      window_test::ask(window, QStringLiteral("And the window?"));
      QVERIFY(window_test::statusText(window).contains(QStringLiteral("kept from the session state")));
    }
    {
      lightdesk::store::Store store(database);
      const auto checkpoints = store.checkpoints(id);
      QCOMPARE(checkpoints.size(), std::size_t{4});
      QCOMPARE(QString::fromStdString(checkpoints.front().system_prompt), first);
      QCOMPARE(QString::fromStdString(checkpoints.back().system_prompt), second);
    }
    {
      // A launch opens the session with its system prompt and restores its state; the prompt is
      // changed, and the window closed before the next question.
      StoreSessionRepository sessions(database);
      QCOMPARE(sessions.load(id)->system_prompt, second);
      MainWindow window(sessions, *settings_);
      window.show();
      QVERIFY(QTest::qWaitForWindowActive(&window));
      QVERIFY(transcriptOf(window)->toPlainText().contains(QStringLiteral("System prompt: Answer in French.")));
      QSignalSpy restored(&window, &MainWindow::stateRestored);
      window_test::openModel(window);
      QVERIFY(restored.wait(kTimeoutMs));
      typeSystemPrompt([&window] { window.findChild<QAction*>(QStringLiteral("sessionSettingsAction"))->trigger(); },
                       QStringLiteral("Answer in German."));
    }
    StoreSessionRepository sessions(database);
    MainWindow window(sessions, *settings_);
    window.show();
    QVERIFY(QTest::qWaitForWindowActive(&window));
    QSignalSpy errors(&window, &MainWindow::errorShown);
    window_test::openModel(window);
    QVERIFY(errors.wait(kTimeoutMs));
    const QString refused = errors.front().front().toString();
    QVERIFY2(refused.contains(QStringLiteral("was computed with the system prompt “Answer in French.”; the "
                                             "conversation now has the system prompt “Answer in German.”")),
             qPrintable(refused));
    window_test::ask(window, QStringLiteral("Und die Tür?"));
    QVERIFY(!window_test::statusText(window).contains(QStringLiteral("kept from")));
    QCOMPARE(promptTokensRead(window),
             renderedTokens(sessions.load(id)->entries.mid(0, 9), QStringLiteral("Answer in German.")));
  }

  // "‹ 2/3 ›" on a message with siblings: a click on ‹ or › shows the sibling and the branch
  // after it; the ends have no link.
  void branchSwitcherMovesBetweenSiblings() {
    InMemorySessionRepository sessions;
    const qint64 id = sessions.create(QStringLiteral("Letter")).id;
    sessions.append(id, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    for (const QString& answer : {QStringLiteral("Under the stairs."), QStringLiteral("In the blue chest."),
                                  QStringLiteral("In the attic.")}) {
      sessions.branch(id, 1);
      sessions.append(id, {ChatEntry::Role::Assistant, answer, {}, {}, {}});
    }
    sessions.append(id, {ChatEntry::Role::User, QStringLiteral("Which attic?"), {}, {}, {}});
    MainWindow window(sessions, *settings_);
    window.show();
    QVERIFY(QTest::qWaitForWindowActive(&window));
    auto* transcript = transcriptOf(window);
    auto text = [transcript] { return transcript->toPlainText(); };
    QVERIFY2(text().contains(QStringLiteral("‹ 3/3 ›")) && text().contains(QStringLiteral("Which attic?")), qPrintable(text()));
    QVERIFY(transcript->anchorAt(transcript->cursorRect(transcript->document()->find(QStringLiteral("›"))).center()).isEmpty());
    window_test::clickLink(transcript, QStringLiteral("‹"));
    QVERIFY2(text().contains(QStringLiteral("‹ 2/3 ›")) && text().contains(QStringLiteral("In the blue chest.")), qPrintable(text()));
    QVERIFY(!text().contains(QStringLiteral("Which attic?")));  // that follows another sibling
    window_test::clickLink(transcript, QStringLiteral("‹"));
    QVERIFY2(text().contains(QStringLiteral("‹ 1/3 ›")) && text().contains(QStringLiteral("Under the stairs.")), qPrintable(text()));
    window_test::clickLink(transcript, QStringLiteral("›"));
    window_test::clickLink(transcript, QStringLiteral("›"));
    QVERIFY2(text().contains(QStringLiteral("‹ 3/3 ›")) && text().contains(QStringLiteral("Which attic?")), qPrintable(text()));
    QCOMPARE(sessions.load(id)->entries.size(), 3);
    // By the keyboard: Tab goes from link to link in the transcript, Enter follows the one selected.
    transcript->setFocus();
    for (int i = 0; i < 20 && transcript->textCursor().selectedText() != QStringLiteral("‹"); ++i)
      QTest::keyClick(transcript, Qt::Key_Tab);
    QCOMPARE(transcript->textCursor().selectedText(), QStringLiteral("‹"));
    QTest::keyClick(transcript, Qt::Key_Return);
    QVERIFY2(text().contains(QStringLiteral("‹ 2/3 ›")) && text().contains(QStringLiteral("In the blue chest.")), qPrintable(text()));
  }

  // While the engine thread reads a document or answers, the session list stays usable: another
  // session opens (read only while the answer is written), a session is renamed and a search
  // finds and opens a message, each at once; New and Delete wait. The document and the answer
  // land in the session they belong to, and the session looked at stays shown.
  void sessionListStaysUsableWhileTheEngineWorks() {
    InMemorySessionRepository sessions;
    const qint64 letter = sessions.create(QStringLiteral("Letter")).id;
    sessions.append(letter, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    sessions.append(letter, {ChatEntry::Role::Assistant, QStringLiteral("Under the stairs."), {}, {}, {}});
    QTest::qWait(5);
    const qint64 budget = sessions.create(QStringLiteral("Budget")).id;
    sessions.append(budget, {ChatEntry::Role::User, QStringLiteral("What was approved?"), {}, {}, {}});
    sessions.append(budget, {ChatEntry::Role::Assistant, QStringLiteral("The budget."), {}, {}, {}});
    const QString document = directory_.filePath(QStringLiteral("minutes.txt"));
    {
      QFile file(document);
      QVERIFY(file.open(QIODevice::WriteOnly));
      file.write("The board approved the new budget.\n");
    }
    MainWindow window(sessions, *settings_, new SlowEngine(std::chrono::milliseconds(2000)));
    window.show();
    QVERIFY(QTest::qWaitForWindowActive(&window));
    window_test::openModel(window);
    auto* list = window.findChild<QListWidget*>(QStringLiteral("sessionList"));
    auto* transcript = transcriptOf(window);
    auto* search = window.findChild<QLineEdit*>(QStringLiteral("searchBox"));
    auto* results = window.findChild<QListWidget*>(QStringLiteral("searchResults"));
    auto click_session = [list](const QString& title) {
      const QList<QListWidgetItem*> found = list->findItems(title, Qt::MatchExactly);
      QVERIFY2(found.size() == 1, qPrintable(title));
      QTest::mouseClick(list->viewport(), Qt::LeftButton, {}, list->visualItemRect(found.front()).center());
    };
    auto rename_shown = [&window, list](const QString& title) {
      QTest::mouseClick(window.findChild<QPushButton*>(QStringLiteral("renameSessionButton")), Qt::LeftButton);
      auto* editor = list->viewport()->findChild<QLineEdit*>();
      QVERIFY(editor != nullptr && editor->isVisible());
      window_test::retype(editor, title);
      QTest::keyClick(editor, Qt::Key_Return);  // committed from the event loop
    };
    auto search_and_open = [&](const QString& words) {
      window_test::retype(search, words);
      QTRY_VERIFY_WITH_TIMEOUT(results->isVisible() && results->count() == 1 && results->item(0)->toolTip().contains(words),
                               1000);
      QTest::mouseClick(results->viewport(), Qt::LeftButton, {}, results->visualItemRect(results->item(0)).center());
    };

    // A document being read (its count on the engine thread) for "Budget".
    QSignalSpy attached(&window, &MainWindow::documentAttached);
    window.attachFiles({document});
    click_session(QStringLiteral("Letter"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Under the stairs.")));
    rename_shown(QStringLiteral("Hidden letter"));
    QTRY_COMPARE_WITH_TIMEOUT(sessions.load(letter)->title, QStringLiteral("Hidden letter"), 500);
    search_and_open(QStringLiteral("approved"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("What was approved?")));
    QCOMPARE(attached.size(), 0);  // all of it while the engine was still reading
    QVERIFY(attached.wait(kTimeoutMs));
    QVERIFY(window.findChild<QListWidget*>(QStringLiteral("attachmentList"))->item(0)->text().contains(QStringLiteral("minutes.txt")));

    // An answer being written for "Budget".
    QSignalSpy finished(&window, &MainWindow::answerFinished);
    window.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(QStringLiteral("Which budget?"));
    QTest::mouseClick(window.findChild<QPushButton*>(QStringLiteral("sendButton")), Qt::LeftButton);
    QVERIFY(!window.findChild<QPushButton*>(QStringLiteral("newSessionButton"))->isEnabled());
    QVERIFY(!window.findChild<QPushButton*>(QStringLiteral("deleteSessionButton"))->isEnabled());
    click_session(QStringLiteral("Hidden letter"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Under the stairs.")));
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("Edit")));  // only read meanwhile
    rename_shown(QStringLiteral("The letter"));
    QTRY_COMPARE_WITH_TIMEOUT(sessions.load(letter)->title, QStringLiteral("The letter"), 500);
    search_and_open(QStringLiteral("stairs"));
    QCOMPARE(transcript->textCursor().selectedText(), QStringLiteral("stairs"));
    QCOMPARE(finished.size(), 0);
    QVERIFY(finished.wait(kTimeoutMs));
    // The answer is Budget's; the letter stays in view, now the current session.
    QCOMPARE(sessions.load(budget)->entries.size(), 4);
    QCOMPARE(sessions.load(budget)->entries.at(2).documents.size(), 1);
    QCOMPARE(sessions.load(letter)->entries.size(), 2);
    QCOMPARE(sessions.load(letter)->title, QStringLiteral("The letter"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Under the stairs.")));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("✎ Edit")));
    QCOMPARE(list->currentItem()->text(), QStringLiteral("The letter"));
    QVERIFY(window.findChild<QPushButton*>(QStringLiteral("newSessionButton"))->isEnabled());
    click_session(QStringLiteral("Budget"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Which budget?")));
  }

  // Counts follow the locale (here German digit groups and decimal comma): the model check, the
  // context figure, a document's tokens, the answer's summary.
  void numbersFollowTheLocale() {
    QLocale::setDefault(QLocale(QLocale::German, QLocale::Germany));
    InMemorySessionRepository sessions;
    MainWindow window(sessions, *settings_);
    window.show();
    QVERIFY(QTest::qWaitForWindowActive(&window));
    window_test::openModel(window);
    const QString check = window.findChild<QLabel*>(QStringLiteral("modelLabel"))->text();
    QVERIFY2(check.contains(QStringLiteral("4.096 tokens of context")), qPrintable(check));
    QVERIFY2(check.contains(QRegularExpression(QStringLiteral("\\d,\\d [KMG]B"))), qPrintable(check));
    QCOMPARE(window.findChild<QLabel*>(QStringLiteral("contextLabel"))->text(), QStringLiteral("context: 0 / 4.096"));
    const QString document = directory_.filePath(QStringLiteral("notes.txt"));
    {
      QFile file(document);
      QVERIFY(file.open(QIODevice::WriteOnly));
      for (int i = 0; i < 200; ++i) file.write(QStringLiteral("Line %1 of the notes.\n").arg(i).toUtf8());
    }
    QSignalSpy attached(&window, &MainWindow::documentAttached);
    window.attachFiles({document});
    QVERIFY(attached.wait(kTimeoutMs));
    const QString line = window.findChild<QListWidget*>(QStringLiteral("attachmentList"))->item(0)->text();
    QVERIFY2(line.contains(QRegularExpression(QStringLiteral("— \\d\\.\\d{3} tokens"))), qPrintable(line));
    window_test::ask(window, QStringLiteral("What is in it?"));
    QVERIFY2(window_test::statusText(window).contains(QRegularExpression(QStringLiteral("\\d\\.\\d{3} prompt tokens read"))),
             qPrintable(window_test::statusText(window)));
  }

  // An exported conversation says its system prompt.
  void exportKeepsTheSystemPrompt() {
    lightdesk::gui::ChatSession session;
    session.id = 1;
    session.title = QStringLiteral("Letter");
    session.system_prompt = QStringLiteral("Answer in French.");
    session.entries.append({ChatEntry::Role::User, QStringLiteral("Where?"), {}, {}, {}});
    QCOMPARE(lightdesk::gui::conversation_markdown(session),
             QStringLiteral("# Letter\n\nSystem prompt: Answer in French.\n\n## You\n\nWhere?\n"));
    const QJsonObject json = QJsonDocument::fromJson(lightdesk::gui::conversation_json(session)).object();
    QCOMPARE(json.value(QStringLiteral("system_prompt")).toString(), QStringLiteral("Answer in French."));
  }

  // A launch without arguments opens the conversation shown last, not only the one written last.
  void relaunchOpensTheConversationShownLast() {
    InMemorySessionRepository sessions;
    const qint64 older = sessions.create(QStringLiteral("Letter")).id;
    sessions.append(older, {ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {}, {}});
    QTest::qWait(5);
    const QString long_title = QStringLiteral("Budget of the board for the year, with every amendment voted in March");
    const qint64 newer = sessions.create(long_title).id;
    sessions.append(newer, {ChatEntry::Role::User, QStringLiteral("What was approved?"), {}, {}, {}});
    {
      MainWindow window(sessions, *settings_);
      window.show();
      QVERIFY(QTest::qWaitForWindowActive(&window));
      QVERIFY(transcriptOf(window)->toPlainText().contains(QStringLiteral("approved")));
      auto* list = window.findChild<QListWidget*>(QStringLiteral("sessionList"));
      QCOMPARE(list->count(), 2);
      // A name cut to the list's width has its whole text as a tooltip.
      QVERIFY(list->fontMetrics().horizontalAdvance(long_title) > list->viewport()->width());
      QCOMPARE(list->item(0)->toolTip(), long_title);
      QTest::mouseClick(list->viewport(), Qt::LeftButton, {}, list->visualItemRect(list->item(1)).center());
      QVERIFY(transcriptOf(window)->toPlainText().contains(QStringLiteral("letter")));
    }
    MainWindow window(sessions, *settings_);
    window.show();
    QVERIFY(QTest::qWaitForWindowActive(&window));
    QVERIFY2(transcriptOf(window)->toPlainText().contains(QStringLiteral("Where is the letter?")),
             qPrintable(transcriptOf(window)->toPlainText()));
    QVERIFY(older != newer);
  }

 private:
  QTemporaryDir directory_;
  std::unique_ptr<QSettings> settings_;
};

QTEST_MAIN(ConversationFlowsTest)
#include "conversation_flows_test.moc"
