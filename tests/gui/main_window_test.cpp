// Drives the real MainWindow under the offscreen platform: the bundled tiny model (a random
// M1 with a 512-id tokenizer, so its answers are random text), a document, a question, the
// streamed answer, stop, and the errors a person must see.
#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QDropEvent>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QLocale>
#include <QMimeData>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QScopeGuard>
#include <QSettings>
#include <QSignalSpy>
#include <QStatusBar>
#include <QTemporaryDir>
#include <QTest>
#include <QTextBlock>
#include <QTextBrowser>
#include <QTimer>

#include <sqlite3.h>

#include <filesystem>
#include <optional>

#include "conversation_export.h"
#include "engine_state.h"
#include "main_window.h"
#include "session_repository.h"
#include "settings_dialog.h"
#include "status_panel.h"
#include "store_session_repository.h"
#include "window_test_util.h"

using lightdesk::gui::InMemorySessionRepository;
using lightdesk::gui::MainWindow;
using lightdesk::gui::StoreSessionRepository;

namespace {

using window_test::ask;
using window_test::kModelDirectory;
using window_test::kTimeoutMs;
using window_test::openModel;
using window_test::statusText;

// Drops the file on the window, as a person would, and waits until it is attached.
void dropFile(MainWindow& window, const QString& path) {
  QSignalSpy attached(&window, &MainWindow::documentAttached);
  QMimeData mime;
  mime.setUrls({QUrl::fromLocalFile(path)});
  QDragEnterEvent enter(QPoint(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
  QApplication::sendEvent(&window, &enter);
  QVERIFY(enter.isAccepted());
  QDropEvent drop(QPointF(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
  QApplication::sendEvent(&window, &drop);
  QVERIFY(attached.wait(kTimeoutMs));
}


// Runs SQL on the session database through a connection of its own, as another program could.
void executeSql(const std::filesystem::path& database, const char* sql) {
  sqlite3* db = nullptr;
  QCOMPARE(sqlite3_open(database.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  const int result = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  const QString message = error ? QString::fromUtf8(error) : QString();
  sqlite3_free(error);
  sqlite3_close(db);
  QVERIFY2(result == SQLITE_OK, qPrintable(message));
}

}  // namespace

class MainWindowTest : public QObject {
  Q_OBJECT

 private slots:
  void init() {
    QVERIFY(directory_.isValid());
    // A long answer at a fixed sampling, so that stopping it is possible and the run repeats.
    settings_ = window_test::freshSettings(directory_, 4000);
    sessions_ = std::make_unique<InMemorySessionRepository>();
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    window_->show();
    QVERIFY(QTest::qWaitForWindowActive(window_.get()));
  }

  void cleanup() {
    window_.reset();
    sessions_.reset();
    settings_.reset();
  }

  void badModelDirectoryShowsError() {
    auto* message = window_->findChild<QLabel*>(QStringLiteral("messageLabel"));
    QVERIFY(message);
    QVERIFY(!message->isVisible());
    window_->openModelDirectory(directory_.path());
    QTRY_VERIFY_WITH_TIMEOUT(message->isVisible(), kTimeoutMs);
    QVERIFY2(message->text().contains(directory_.path()), qPrintable(message->text()));
    QVERIFY2(message->text().contains(QStringLiteral("config.json")), qPrintable(message->text()));
    QVERIFY(!window_->findChild<QPushButton*>(QStringLiteral("sendButton"))->isEnabled());
  }

  void askAboutADocumentStreamAndStop() {
    QSignalSpy ready(window_.get(), &MainWindow::modelReady);
    window_->openModelDirectory(kModelDirectory);
    QVERIFY2(ready.wait(kTimeoutMs), qPrintable(window_->findChild<QLabel*>(QStringLiteral("messageLabel"))->text()));
    auto* model_label = window_->findChild<QLabel*>(QStringLiteral("modelLabel"));
    QVERIFY2(model_label->text().contains(QStringLiteral("minimax_m1")), qPrintable(model_label->text()));
    QVERIFY2(model_label->text().contains(QStringLiteral("available")), qPrintable(model_label->text()));
    QCOMPARE(settings_->value(QStringLiteral("model/directory")).toString(), kModelDirectory);

    // Attach a document by dropping it on the window, as a person would.
    const QString document_path = directory_.filePath(QStringLiteral("notes.txt"));
    {
      QFile document(document_path);
      QVERIFY(document.open(QIODevice::WriteOnly));
      document.write("The quarterly report says revenue grew by twelve percent.\n");
    }
    dropFile(*window_, document_path);
    if (QTest::currentTestFailed()) return;
    auto* attachments = window_->findChild<QListWidget*>(QStringLiteral("attachmentList"));
    QCOMPARE(attachments->count(), 1);
    // The tiny tokenizer has 512 ids, mostly single bytes: a short text is still many tokens.
    const QString attachment_line = attachments->item(0)->text();
    QVERIFY2(attachment_line.startsWith(QStringLiteral("notes.txt — ")), qPrintable(attachment_line));
    const qint64 tokens = attachment_line.section(QLatin1Char(' '), 2, 2).toLongLong();
    QVERIFY2(tokens > 10 && tokens <= 60, qPrintable(attachment_line));

    // Ask with Ctrl+Enter; the answer streams in; stop it.
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    auto* stop = window_->findChild<QPushButton*>(QStringLiteral("stopButton"));
    auto* send = window_->findChild<QPushButton*>(QStringLiteral("sendButton"));
    QVERIFY(send->isEnabled());
    QTest::keyClicks(input, QStringLiteral("How much did revenue grow?"));
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    QTest::keyClick(input, Qt::Key_Return, Qt::ControlModifier);
    QVERIFY(input->toPlainText().isEmpty());
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("How much did revenue grow?")));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("notes.txt")));
    QVERIFY(stop->isEnabled());
    QVERIFY(!send->isEnabled());
    const qsizetype before_answer = transcript->toPlainText().size();
    QTRY_VERIFY_WITH_TIMEOUT(transcript->toPlainText().size() > before_answer + 20, kTimeoutMs);
    QTest::mouseClick(stop, Qt::LeftButton);
    QVERIFY(finished.wait(kTimeoutMs));
    QVERIFY2(statusText(*window_).startsWith(QStringLiteral("Stopped after")),
             qPrintable(statusText(*window_)));
    QVERIFY(send->isEnabled());
    QVERIFY(!stop->isEnabled());
    QVERIFY(attachments->item(0)->text().endsWith(QStringLiteral("(sent)")));
    auto* context = window_->findChild<QLabel*>(QStringLiteral("contextLabel"));
    QVERIFY2(context->text().startsWith(QStringLiteral("context: ")), qPrintable(context->text()));
    QVERIFY2(context->text().endsWith(QStringLiteral(" / %1").arg(QLocale().toString(4096))), qPrintable(context->text()));
    // The stopped conversation is kept, question and partial answer.
    const QList<lightdesk::gui::ChatSession> listed = sessions_->list();
    QCOMPARE(listed.size(), 1);
    const auto stored = sessions_->load(listed.front().id);
    QVERIFY(stored.has_value());
    QCOMPARE(stored->entries.size(), 2);
    QCOMPARE(stored->title, QStringLiteral("How much did revenue grow?"));
    QVERIFY(!stored->entries[1].text.isEmpty() || !stored->entries[1].reasoning.isEmpty());
    QCOMPARE(stored->entries[0].documents.size(), 1);
    QCOMPARE(stored->entries[0].documents[0].path, document_path);

    // Export writes what the session holds.
    const QString markdown_path = directory_.filePath(QStringLiteral("chat.md"));
    window_->exportConversation(markdown_path);
    QFile markdown(markdown_path);
    QVERIFY(markdown.open(QIODevice::ReadOnly));
    QCOMPARE(QString::fromUtf8(markdown.readAll()), lightdesk::gui::conversation_markdown(*stored));
    const QString json_path = directory_.filePath(QStringLiteral("chat.json"));
    window_->exportConversation(json_path);
    QFile json_file(json_path);
    QVERIFY(json_file.open(QIODevice::ReadOnly));
    const QJsonObject json = QJsonDocument::fromJson(json_file.readAll()).object();
    QCOMPARE(json.value(QStringLiteral("title")).toString(), QStringLiteral("How much did revenue grow?"));
    const QJsonArray messages = json.value(QStringLiteral("messages")).toArray();
    QCOMPARE(messages.size(), 2);
    QCOMPARE(messages[0].toObject().value(QStringLiteral("text")).toString(), QStringLiteral("How much did revenue grow?"));
    QCOMPARE(messages[0].toObject().value(QStringLiteral("documents")).toArray().at(0).toString(), document_path);
    QCOMPARE(messages[1].toObject().value(QStringLiteral("role")).toString(), QStringLiteral("assistant"));
    QCOMPARE(messages[1].toObject().value(QStringLiteral("text")).toString(), stored->entries[1].text);
  }

  void badModelDirectoryKeepsTheLoadedModel() {
    QSignalSpy ready(window_.get(), &MainWindow::modelReady);
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(ready.wait(kTimeoutMs));
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    window_->openModelDirectory(directory_.filePath(QStringLiteral("missing")));
    QVERIFY(error.wait(kTimeoutMs));
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("missing")),
             qPrintable(error.front().front().toString()));
    QVERIFY(window_->findChild<QPushButton*>(QStringLiteral("sendButton"))->isEnabled());
    QVERIFY(window_->findChild<QLabel*>(QStringLiteral("modelLabel"))->text().contains(QStringLiteral("minimax_m1")));
  }

  void pdfShowsPagesAndADamagedOneAnError() {
    QSignalSpy ready(window_.get(), &MainWindow::modelReady);
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(ready.wait(kTimeoutMs));
    QSignalSpy attached(window_.get(), &MainWindow::documentAttached);
    window_->attachFiles({QStringLiteral(LIGHTDESK_TEST_DATA "/documents/two-pages.pdf")});
    QVERIFY(attached.wait(kTimeoutMs));
    auto* attachments = window_->findChild<QListWidget*>(QStringLiteral("attachmentList"));
    QCOMPARE(attachments->count(), 1);
    QVERIFY2(attachments->item(0)->text().endsWith(QStringLiteral("in 2 pages")), qPrintable(attachments->item(0)->text()));

    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    window_->attachFiles({QStringLiteral(LIGHTDESK_TEST_DATA "/documents/damaged.pdf")});
    QVERIFY(error.wait(kTimeoutMs));
    QVERIFY2(error.front().front().toString().startsWith(QStringLiteral("Could not attach damaged.pdf: ")),
             qPrintable(error.front().front().toString()));
    QCOMPARE(attachments->count(), 1);
  }

  void imagesGetThumbnails() {
    openModel(*window_);
    QImage picture(200, 100, QImage::Format_RGB32);
    picture.fill(Qt::darkCyan);
    const QString image_path = directory_.filePath(QStringLiteral("chart.png"));
    QVERIFY(picture.save(image_path));
    dropFile(*window_, image_path);
    if (QTest::currentTestFailed()) return;
    auto* attachments = window_->findChild<QListWidget*>(QStringLiteral("attachmentList"));
    QCOMPARE(attachments->count(), 1);
    QCOMPARE(attachments->item(0)->text(), QStringLiteral("chart.png — 200×100 image"));
    const QPixmap thumbnail = attachments->item(0)->icon().pixmap(QSize(64, 64));
    QCOMPARE(thumbnail.size(), QSize(64, 32));
    QCOMPARE(thumbnail.toImage().pixelColor(10, 10), QColor(Qt::darkCyan));

    // This model has no vision tower: the answer fails before it begins, and the question and
    // the image go back where they were.
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    input->setPlainText(QStringLiteral("What does the chart show?"));
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    QCOMPARE(error.size(), 1);
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("cannot read images")),
             qPrintable(error.front().front().toString()));
    QCOMPARE(input->toPlainText(), QStringLiteral("What does the chart show?"));
    QCOMPARE(attachments->count(), 1);
    QVERIFY(!attachments->item(0)->text().endsWith(QStringLiteral("(sent)")));
    attachments->setCurrentRow(0);
    QPushButton* remove = nullptr;
    for (auto* button : window_->findChildren<QPushButton*>())
      if (button->text() == QStringLiteral("Remove")) remove = button;
    QTest::mouseClick(remove, Qt::LeftButton);
    QCOMPARE(attachments->count(), 0);

    // Something that only looks like an image is an error, not an attachment.
    const QString fake_path = directory_.filePath(QStringLiteral("broken.png"));
    {
      QFile fake(fake_path);
      QVERIFY(fake.open(QIODevice::WriteOnly));
      fake.write("\x89PNG\r\n\x1a\nnot really");
    }
    window_->attachFiles({fake_path});
    QVERIFY(error.wait(kTimeoutMs));
    QVERIFY2(error.back().front().toString().startsWith(QStringLiteral("Could not attach broken.png: ")),
             qPrintable(error.back().front().toString()));
    QCOMPARE(attachments->count(), 0);
  }

  void aVisionModelReadsTheImageAndTheSessionKeepsIt() {
    QTemporaryDir data;
    const std::filesystem::path database = ownDatabase(data);
    if (QTest::currentTestFailed()) return;
    const QString image_path = QStringLiteral(LIGHTDESK_TEST_DATA "/tiny-vl/images/gradient.png");
    {
      StoreSessionRepository sessions(database);
      MainWindow window(sessions, *settings_);
      QSignalSpy ready(&window, &MainWindow::modelReady);
      window.openModelDirectory(QStringLiteral(LIGHTDESK_TEST_DATA "/tiny-vl"));
      QVERIFY2(ready.wait(kTimeoutMs), qPrintable(window.findChild<QLabel*>(QStringLiteral("messageLabel"))->text()));
      QSignalSpy attached(&window, &MainWindow::documentAttached);
      window.attachFiles({image_path});
      QVERIFY(attached.wait(kTimeoutMs));
      ask(window, QStringLiteral("Describe it"));
      // A 336-pixel image is one tile and its thumbnail: hundreds of rows in the prompt.
      const QString status = statusText(window);
      QVERIFY2(QLocale().toLongLong(status.section(QStringLiteral("generated. "), 1).section(QLatin1Char(' '), 0, 0)) > 500,
               qPrintable(status));
      QVERIFY(window.findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText().contains(QStringLiteral("Images: gradient.png")));
    }
    StoreSessionRepository reopened(database);
    MainWindow window(reopened, *settings_);
    const auto stored = reopened.load(reopened.list().front().id);
    QCOMPARE(stored->entries.size(), 2);
    QCOMPARE(stored->entries[0].images, QStringList{image_path});
    auto* attachments = window.findChild<QListWidget*>(QStringLiteral("attachmentList"));
    QTRY_COMPARE_WITH_TIMEOUT(attachments->item(0)->text(), QStringLiteral("gradient.png — 336×336 image (sent)"), kTimeoutMs);
    QVERIFY(!attachments->item(0)->icon().isNull());
  }

  void conversationMarkdown() {
    lightdesk::gui::ChatSession session;
    session.id = 1;
    session.title = QStringLiteral("Revenue");
    session.entries.append({lightdesk::gui::ChatEntry::Role::User, QStringLiteral("How much?"), {},
                            {{QStringLiteral("/tmp/q3.pdf"), QStringLiteral("text"), {}, 10}}, {}});
    session.entries.append({lightdesk::gui::ChatEntry::Role::Assistant, QStringLiteral("Twelve percent."),
                            QStringLiteral("Look at page 2.\nIt says 12%."), {}, {}});
    QCOMPARE(lightdesk::gui::conversation_markdown(session),
             QStringLiteral("# Revenue\n\n## You\n\nDocuments: q3.pdf\n\nHow much?\n\n## Lightdesk\n\n"
                            "> Look at page 2.\n> It says 12%.\n\nTwelve percent.\n"));
  }

  void exportToAnUnwritablePlaceShowsError() {
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    window_->exportConversation(directory_.filePath(QStringLiteral("no-such-folder/chat.md")));
    QCOMPARE(error.size(), 1);
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("no-such-folder/chat.md")),
             qPrintable(error.front().front().toString()));
  }

  void ctrlFSearchJumpsToTheMessage() {
    const lightdesk::gui::ChatSession quarterly = sessions_->create(QStringLiteral("Quarterly"));
    sessions_->append(quarterly.id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("Hello"), {}, {}, {}});
    sessions_->append(quarterly.id, {lightdesk::gui::ChatEntry::Role::Assistant, QStringLiteral("Hi."), {}, {}, {}});
    sessions_->append(quarterly.id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("What about revenue?"), {}, {}, {}});
    QTest::qWait(5);
    sessions_->create(QStringLiteral("Newer"));  // opened first
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    window_->show();
    QVERIFY(QTest::qWaitForWindowActive(window_.get()));
    auto* search = window_->findChild<QLineEdit*>(QStringLiteral("searchBox"));
    auto* results = window_->findChild<QListWidget*>(QStringLiteral("searchResults"));
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    QVERIFY(!results->isVisible());
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("revenue")));
    QTest::keyClick(window_->findChild<QPlainTextEdit*>(QStringLiteral("input")), Qt::Key_F, Qt::ControlModifier);
    QVERIFY(search->hasFocus());
    QTest::keyClicks(search, QStringLiteral("REVENUE"));
    QTRY_COMPARE(results->count(), 1);
    QVERIFY(results->isVisible());
    QVERIFY2(results->item(0)->data(Qt::AccessibleTextRole).toString().startsWith(QStringLiteral("Quarterly: What about revenue?")),
             qPrintable(results->item(0)->data(Qt::AccessibleTextRole).toString()));
    QTest::mouseClick(results->viewport(), Qt::LeftButton, {}, results->visualItemRect(results->item(0)).center());
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("What about revenue?")));
    // The word found is selected in the message found.
    const QTextCursor at = transcript->textCursor();
    QCOMPARE(at.selectedText(), QStringLiteral("revenue"));
    QVERIFY2(at.block().text().contains(QStringLiteral("What about revenue?")), qPrintable(at.block().text()));
    QTest::keyClicks(search, QStringLiteral("x"));
    QTRY_COMPARE(results->item(0)->text(), QStringLiteral("No message matches."));
    search->clear();
    QVERIFY(!results->isVisible());
  }

  void storeSearchUsesFullTextIndex() {
    window_.reset();
    QTemporaryDir data;
    QVERIFY(data.isValid());
    StoreSessionRepository sessions(data.filePath(QStringLiteral("sessions.sqlite")).toStdString());
    const lightdesk::gui::ChatSession budget = sessions.create(QStringLiteral("Budget"));
    sessions.append(budget.id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("Which departments overspent?"), {}, {}, {}});
    sessions.append(budget.id, {lightdesk::gui::ChatEntry::Role::Assistant, QStringLiteral("Marketing overspent."), {}, {}, {}});
    sessions.create(QStringLiteral("Other"));
    QList<lightdesk::gui::MessageHit> hits;
    bool answered = false;
    // "overspen" as a prefix, "marketing" in another case: FTS5 with prefix queries.
    sessions.search(QStringLiteral("MARKETING overspen"), qApp, [&](const QList<lightdesk::gui::MessageHit>& found) {
      hits = found;
      answered = true;
    });
    QTRY_VERIFY_WITH_TIMEOUT(answered, kTimeoutMs);
    QCOMPARE(hits.size(), 1);
    QCOMPARE(hits[0].session, budget.id);
    QCOMPARE(hits[0].entry, 1);
    QVERIFY2(hits[0].snippet.contains(QStringLiteral("[Marketing]")), qPrintable(hits[0].snippet));
    answered = false;
    sessions.search(QStringLiteral("\"unbalanced AND ("), qApp, [&](const QList<lightdesk::gui::MessageHit>& found) {
      hits = found;
      answered = true;
    });
    QTRY_VERIFY_WITH_TIMEOUT(answered, kTimeoutMs);
    QVERIFY(hits.isEmpty());
  }

  // A turn that continues a saved state hands out only its own positions' K/V; joined to the
  // state it continues it imports as the whole one would.
  void engineStateCopiesOnlyTheKvAfterTheSavedOne() {
    using lightdesk::gui::EngineState;
    using lightdesk::gui::EngineStatePtr;
    const auto model = lightdesk::Model::open(kModelDirectory.toStdString());
    std::vector<lightdesk::TokenId> tokens(61);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<lightdesk::TokenId>((i * 37 + 11) % 250);
    const std::span<const lightdesk::TokenId> all(tokens);
    auto session = model->create_session();
    session->feed(all.first(40));
    const EngineStatePtr earlier = EngineState::copy_of(*session);
    session->feed(all.subspan(40, 20));
    const EngineStatePtr later = EngineState::copy_of(*session, 40);
    QCOMPARE(later->kv_first(), 40);

    auto restored = model->create_session();
    QVERIFY_THROWS_EXCEPTION(lightdesk::Error, later->import_into(*restored, {}));
    auto stranger = model->create_session();
    stranger->feed(all.subspan(1, 40));
    QVERIFY_THROWS_EXCEPTION(lightdesk::Error, later->continuing(EngineState::copy_of(*stranger)));
    const EngineStatePtr joined = later->continuing(earlier);
    QCOMPARE(joined->kv_first(), 0);
    joined->import_into(*restored, {});
    session->feed(all.last(1));
    restored->feed(all.last(1));
    QVERIFY(std::equal(session->logits().begin(), session->logits().end(), restored->logits().begin(),
                       restored->logits().end()));

    // The in-memory repository joins a continuing state to the one it continues, or says it cannot.
    InMemorySessionRepository sessions;
    const qint64 id = sessions.create(QStringLiteral("continuing")).id;
    for (int i = 0; i < 2; ++i) {
      sessions.append(id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("Question"), {}, {}, {}});
      sessions.append(id, {lightdesk::gui::ChatEntry::Role::Assistant, QStringLiteral("Answer"), {}, {}, {}});
    }
    QSignalSpy failed(&sessions, &lightdesk::gui::SessionRepository::writeFailed);
    sessions.saveState(id, 4, later);
    QCOMPARE(failed.size(), 1);
    sessions.saveState(id, 2, earlier);
    sessions.saveState(id, 4, later);
    QCOMPARE(failed.size(), 1);
    lightdesk::gui::SavedStatePtr loaded;
    bool answered = false;
    sessions.loadState(id, 4, model->info(), qApp, [&](const lightdesk::gui::StateLoad& load) {
      loaded = load.state;
      answered = true;
    });
    QTRY_VERIFY_WITH_TIMEOUT(answered, kTimeoutMs);
    QVERIFY(loaded != nullptr);
    QCOMPARE(loaded->token_count(), 60);
    auto reloaded = model->create_session();
    loaded->import_into(*reloaded, {});
    reloaded->feed(all.last(1));
    QVERIFY(std::equal(session->logits().begin(), session->logits().end(), reloaded->logits().begin(),
                       reloaded->logits().end()));
  }

  void regenerateAndEditBranchFromCheckpoints() {
    QTemporaryDir data;
    const std::filesystem::path database = ownDatabase(data);
    if (QTest::currentTestFailed()) return;
    {
      StoreSessionRepository sessions(database);
      MainWindow window(sessions, *settings_);
      openModel(window);
      ask(window, QStringLiteral("First question"));
      ask(window, QStringLiteral("Second question"));
      const qint64 id = sessions.list().front().id;
      const QString old_answer = sessions.load(id)->entries[3].text;

      // Regenerate: the second answer again, from the state saved after the first answer.
      QSignalSpy restored(&window, &MainWindow::stateRestored);
      QSignalSpy finished(&window, &MainWindow::answerFinished);
      auto* transcript = window.findChild<QTextBrowser*>(QStringLiteral("transcript"));
      QVERIFY(transcript->toPlainText().contains(QStringLiteral("↻ Regenerate")));
      emit transcript->anchorClicked(QUrl(QStringLiteral("regenerate:")));
      QVERIFY(finished.wait(kTimeoutMs));
      QCOMPARE(restored.size(), 1);
      const QString status = statusText(window);
      QVERIFY2(status.contains(QStringLiteral("kept from the session state")), qPrintable(status));
      QCOMPARE(sessions.load(id)->entries.size(), 4);
      QCOMPARE(sessions.load(id)->entries[2].text, QStringLiteral("Second question"));
      QVERIFY(!old_answer.isEmpty());

      // Edit the second question: the conversation continues from the first answer's state.
      emit transcript->anchorClicked(QUrl(QStringLiteral("edit:2")));
      auto* input = window.findChild<QPlainTextEdit*>(QStringLiteral("input"));
      QCOMPARE(input->toPlainText(), QStringLiteral("Second question"));
      QVERIFY(!window.findChild<QLabel*>(QStringLiteral("editBar"))->isHidden());
      input->setPlainText(QStringLiteral("A better second question"));
      window.send();
      QVERIFY(finished.wait(kTimeoutMs));
      QVERIFY2(statusText(window).contains(QStringLiteral("kept from the session state")),
               qPrintable(statusText(window)));
      const auto edited = sessions.load(id);
      QCOMPARE(edited->entries.size(), 4);
      QCOMPARE(edited->entries[0].text, QStringLiteral("First question"));
      QCOMPARE(edited->entries[2].text, QStringLiteral("A better second question"));
      QVERIFY(!transcript->toPlainText().contains(QStringLiteral("Second question")));

      // An edit begun in one session does not follow the user into another.
      emit transcript->anchorClicked(QUrl(QStringLiteral("edit:0")));
      window.newSession();
      QVERIFY(window.findChild<QLabel*>(QStringLiteral("editBar"))->isHidden());
    }
    // After a restart the newest branch is shown; the earlier ones stay stored (8 messages).
    StoreSessionRepository reopened(database);
    std::optional<lightdesk::gui::ChatSession> shown;
    for (const lightdesk::gui::ChatSession& session : reopened.list())
      if (session.title == QStringLiteral("First question")) shown = reopened.load(session.id);
    QVERIFY(shown.has_value());
    QCOMPARE(shown->entries.size(), 4);
    QCOMPARE(shown->entries[2].text, QStringLiteral("A better second question"));
    sqlite3* db = nullptr;
    QCOMPARE(sqlite3_open(database.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* count = nullptr;
    QCOMPARE(sqlite3_prepare_v2(db, "SELECT count(*) FROM messages", -1, &count, nullptr), SQLITE_OK);
    QCOMPARE(sqlite3_step(count), SQLITE_ROW);
    const int messages = sqlite3_column_int(count, 0);
    sqlite3_finalize(count);
    sqlite3_close(db);
    QCOMPARE(messages, 8);
  }

  void memoryCheckNamesTheContextThatFits() {
    // The engine's plan on the CPU backend: weights, states, K/V and a prefill chunk's buffers.
    lightdesk::ModelOptions cpu;
    cpu.backend = lightdesk::BackendKind::Cpu;
    const lightdesk::ModelInfo info = lightdesk::Model::inspect(kModelDirectory.toStdString(), cpu);
    QVERIFY(info.kv_bytes_per_token > 0);
    const auto planned = [&](std::int64_t tokens) {
      lightdesk::PlanRequest request;
      request.devices = {{"host memory", std::uint64_t{1} << 40}};
      request.backend = lightdesk::BackendKind::Cpu;
      request.context_tokens = tokens;
      return lightdesk::plan_memory(info, request).plans.front().ranks.front().total_bytes();
    };
    const auto roomy = lightdesk::gui::memory_check(info, planned(info.max_context), QStringLiteral("host memory"));
    QVERIFY(roomy.fits());
    QCOMPARE(roomy.fitting_context, info.max_context);
    QVERIFY(roomy.workspace_bytes > 0);
    // Room for 100 tokens of the first plan: the policy's smaller expert formats may fit a few
    // more; the context named fits, one more token does not.
    const auto tight = lightdesk::gui::memory_check(info, planned(100), QStringLiteral("host memory"));
    QVERIFY(!tight.fits());
    QVERIFY2(tight.fitting_context >= 100, qPrintable(QString::number(tight.fitting_context)));
    lightdesk::ModelInfo limited = info;
    limited.max_context = tight.fitting_context;
    QVERIFY(lightdesk::gui::memory_check(limited, planned(100), QStringLiteral("host memory")).fits());
    limited.max_context = tight.fitting_context + 1;
    QVERIFY(!lightdesk::gui::memory_check(limited, planned(100), QStringLiteral("host memory")).fits());
    const auto hopeless = lightdesk::gui::memory_check(info, info.weight_bytes / 2, QStringLiteral("host memory"));
    QVERIFY(!hopeless.fits());
    QCOMPARE(hopeless.fitting_context, 0);
  }

  void followUpQuestionKeepsTheSessionState() {
    settings_->setValue(QStringLiteral("sampling/M1/max_new_tokens"), 8);
    QSignalSpy ready(window_.get(), &MainWindow::modelReady);
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(ready.wait(kTimeoutMs));
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    input->setPlainText(QStringLiteral("First question"));
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    const QString first = statusText(*window_);
    QVERIFY2(!first.contains(QStringLiteral("kept from the session state")), qPrintable(first));
    input->setPlainText(QStringLiteral("Second question"));
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    const QString second = statusText(*window_);
    QVERIFY2(second.contains(QStringLiteral("kept from the session state")), qPrintable(second));
  }

  void ctrlNCreatesSessionAndDeleteHasUndo() {
    const lightdesk::gui::ChatSession used = sessions_->create(QStringLiteral("Used"));
    sessions_->append(used.id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("Hello"), {}, {}, {}});
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    window_->show();
    QVERIFY(QTest::qWaitForWindowActive(window_.get()));
    auto* list = window_->findChild<QListWidget*>(QStringLiteral("sessionList"));
    QCOMPARE(list->count(), 1);  // the empty "New chat" of the window before is not kept
    QTest::keyClick(window_->findChild<QPlainTextEdit*>(QStringLiteral("input")), Qt::Key_N, Qt::ControlModifier);
    QCOMPARE(list->count(), 2);
    QCOMPARE(sessions_->list().size(), 2);
    // Finding 9: a second Ctrl+N reuses the empty session instead of making another.
    QTest::keyClick(window_->findChild<QPlainTextEdit*>(QStringLiteral("input")), Qt::Key_N, Qt::ControlModifier);
    QCOMPARE(list->count(), 2);
    QCOMPARE(sessions_->list().size(), 2);
    QPushButton* delete_button = nullptr;
    for (auto* button : window_->findChildren<QPushButton*>())
      if (button->text() == QStringLiteral("Delete")) delete_button = button;
    QVERIFY(delete_button);
    auto* undo_bar = window_->findChild<QWidget*>(QStringLiteral("undoBar"));
    QTest::mouseClick(delete_button, Qt::LeftButton);
    QCOMPARE(list->count(), 1);
    QVERIFY(undo_bar->isVisible());
    QCOMPARE(sessions_->list().size(), 2);  // not gone until the undo time is up
    QTest::mouseClick(window_->findChild<QPushButton*>(QStringLiteral("undoButton")), Qt::LeftButton);
    QCOMPARE(list->count(), 2);
    QVERIFY(!undo_bar->isVisible());

    QTest::mouseClick(delete_button, Qt::LeftButton);
    window_->findChild<QTimer*>(QStringLiteral("undoTimer"))->setInterval(1);
    window_->findChild<QTimer*>(QStringLiteral("undoTimer"))->start();
    QTRY_VERIFY(!undo_bar->isVisible());
    QCOMPARE(list->count(), 1);
    QCOMPARE(sessions_->list().size(), 1);
  }

  void reasoningIsCollapsed() {
    QTest::qWait(5);  // the newer session, opened first
    const lightdesk::gui::ChatSession session = sessions_->create(QStringLiteral("Reasoned chat"));
    sessions_->append(session.id, {lightdesk::gui::ChatEntry::Role::User, QStringLiteral("Why?"), {}, {}, {}});
    sessions_->append(session.id, {lightdesk::gui::ChatEntry::Role::Assistant, QStringLiteral("**Because.** <image> stays text"),
                                   QStringLiteral("the hidden chain of thought"), {}, {}});
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    // The answer is rendered as Markdown: bold, without its asterisks.
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Because.")));
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("**")));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Because. <image> stays text")));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Show reasoning")));
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("hidden chain")));
    emit transcript->anchorClicked(QUrl(QStringLiteral("reasoning:1")));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("hidden chain")));
    emit transcript->anchorClicked(QUrl(QStringLiteral("reasoning:1")));
    QVERIFY(!transcript->toPlainText().contains(QStringLiteral("hidden chain")));
  }

  void sessionsSurviveARestart() {
    window_.reset();  // this test runs two windows of its own on one database
    QTemporaryDir data;
    QVERIFY(data.isValid());
    const std::filesystem::path database = data.filePath(QStringLiteral("sessions.sqlite")).toStdString();
    const QString document_path = data.filePath(QStringLiteral("minutes.txt"));
    {
      QFile document(document_path);
      QVERIFY(document.open(QIODevice::WriteOnly));
      document.write("The board approved the new budget.\n");
    }
    settings_->setValue(QStringLiteral("sampling/M1/max_new_tokens"), 8);
    const QString question = QStringLiteral("What did the board approve?");

    lightdesk::gui::ChatSession asked;
    {
      StoreSessionRepository sessions(database);
      MainWindow window(sessions, *settings_);
      window.show();
      QSignalSpy ready(&window, &MainWindow::modelReady);
      window.openModelDirectory(kModelDirectory);
      QVERIFY(ready.wait(kTimeoutMs));
      dropFile(window, document_path);
      if (QTest::currentTestFailed()) return;
      QSignalSpy finished(&window, &MainWindow::answerFinished);
      window.findChild<QPlainTextEdit*>(QStringLiteral("input"))->setPlainText(question);
      window.send();
      QVERIFY(finished.wait(kTimeoutMs));
      QCOMPARE(sessions.list().size(), 1);
      asked = *sessions.load(sessions.list().front().id);
    }  // the window closes, then the repository, after writing everything it was given

    StoreSessionRepository reopened(database);
    const QList<lightdesk::gui::ChatSession> listed = reopened.list();
    QCOMPARE(listed.size(), 1);
    const std::optional<lightdesk::gui::ChatSession> restored = reopened.load(listed.front().id);
    QVERIFY(restored.has_value());
    QCOMPARE(restored->title, question);
    QCOMPARE(restored->entries.size(), 2);
    QCOMPARE(asked.entries.size(), 2);
    for (qsizetype i = 0; i < 2; ++i) {
      QCOMPARE(restored->entries[i].role, asked.entries[i].role);
      QCOMPARE(restored->entries[i].text, asked.entries[i].text);
      QCOMPARE(restored->entries[i].reasoning, asked.entries[i].reasoning);
    }
    QCOMPARE(restored->entries[0].text, question);
    QCOMPARE(restored->entries[0].documents.size(), 1);
    QCOMPARE(restored->entries[0].documents[0].path, document_path);
    QCOMPARE(restored->entries[0].documents[0].text, asked.entries[0].documents[0].text);
    QCOMPARE(restored->entries[0].documents[0].tokens, asked.entries[0].documents[0].tokens);
    QVERIFY(restored->entries[1].documents.isEmpty());

    // A new window on the same database opens the session with its messages.
    MainWindow window(reopened, *settings_);
    auto* list = window.findChild<QListWidget*>(QStringLiteral("sessionList"));
    QCOMPARE(list->count(), 1);
    QVERIFY2(list->item(0)->text().contains(question), qPrintable(list->item(0)->text()));
    const QString transcript = window.findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText();
    QVERIFY2(transcript.contains(question), qPrintable(transcript));
    QVERIFY2(transcript.contains(QStringLiteral("minutes.txt")), qPrintable(transcript));

    // With the model open, the session's saved state comes back instead of a second read.
    QSignalSpy state_restored(&window, &MainWindow::stateRestored);
    openModel(window);
    QVERIFY(state_restored.wait(kTimeoutMs));
    const QString restored_message = state_restored.front().front().toString();
    QVERIFY2(restored_message.startsWith(QStringLiteral("Restored ")) &&
                 restored_message.contains(QStringLiteral(" tokens from cache in ")),
             qPrintable(restored_message));
    const qint64 restored_tokens = QLocale().toLongLong(restored_message.section(QLatin1Char(' '), 1, 1));
    QVERIFY2(restored_tokens > 20, qPrintable(restored_message));
    ask(window, QStringLiteral("And the date?"));
    const QString second = statusText(window);
    QVERIFY2(second.contains(QStringLiteral("(%1 kept from the session state)").arg(restored_tokens)), qPrintable(second));
  }

  void commandLineStartsASessionWithDocumentsAndAQuestion() {
    settings_->setValue(QStringLiteral("sampling/M1/max_new_tokens"), 8);
    const QString document_path = directory_.filePath(QStringLiteral("brief.txt"));
    {
      QFile document(document_path);
      QVERIFY(document.open(QIODevice::WriteOnly));
      document.write("Lightdesk keeps the processed state with each session.\n");
    }
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    window_->startSession({document_path}, QStringLiteral("What does it keep?"));
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(finished.wait(kTimeoutMs));
    const QList<lightdesk::gui::ChatSession> listed = sessions_->list();
    QCOMPARE(listed.size(), 1);  // finding 9: the command line's question goes into the window's empty session
    const auto asked = sessions_->load(listed.front().id);
    QCOMPARE(asked->title, QStringLiteral("What does it keep?"));
    QCOMPARE(asked->entries.size(), 2);
    QCOMPARE(asked->entries[0].documents.size(), 1);
    QCOMPARE(asked->entries[0].documents[0].path, document_path);

    // A document that cannot be read leaves the question in the input box, unsent.
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    window_->startSession({QStringLiteral(LIGHTDESK_TEST_DATA "/documents/damaged.pdf")}, QStringLiteral("Pages?"));
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(error.wait(kTimeoutMs));
    QCOMPARE(window_->findChild<QPlainTextEdit*>(QStringLiteral("input"))->toPlainText(), QStringLiteral("Pages?"));
    QCOMPARE(sessions_->list().size(), 2);
    QVERIFY(sessions_->load(sessions_->list().front().id)->entries.isEmpty());
  }

  void settingsKeepEngineGpusAndDataDirectory() {
    {
      // Four GPUs, each a checkbox (desktop_flows_test has more).
      std::vector<lightdesk::GpuDevice> gpus;
      for (int i = 0; i < 4; ++i) gpus.push_back({i, "GPU", 1ull << 30, std::nullopt});
      lightdesk::gui::SettingsDialog dialog(*settings_, QString(), {}, gpus);
      auto* backend = dialog.findChild<QComboBox*>(QStringLiteral("backendBox"));
      QCOMPARE(backend->currentData().toString(), QStringLiteral("auto"));
      backend->setCurrentIndex(backend->findData(QStringLiteral("cpu")));
      dialog.findChild<QCheckBox*>(QStringLiteral("gpuBox1"))->setChecked(true);
      dialog.findChild<QCheckBox*>(QStringLiteral("gpuBox3"))->setChecked(true);
      auto* data = dialog.findChild<QLineEdit*>(QStringLiteral("dataDirectoryEdit"));
      data->setText(directory_.filePath(QStringLiteral("data")));
      dialog.accept();
    }
    QCOMPARE(lightdesk::gui::backend_setting(*settings_), QStringLiteral("cpu"));
    QCOMPARE(lightdesk::gui::gpus_setting(*settings_), QStringLiteral("1,3"));
    QCOMPARE(QString::fromStdString(lightdesk::gui::session_database_path(*settings_).string()),
             directory_.filePath(QStringLiteral("data/sessions.sqlite")));

    // The model opens on the chosen backend; the status bar names it with the host memory.
    openModel(*window_);
    const QString memory = window_->findChild<lightdesk::gui::ElidedLabel*>(QStringLiteral("memoryLabel"))->fullText();
    QVERIFY2(memory.startsWith(QStringLiteral("no GPU · host memory: ")) && memory.endsWith(QStringLiteral(" available")),
             qPrintable(memory));
    settings_->setValue(QStringLiteral("engine/backend"), QStringLiteral("quantum"));
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    window_->openModelDirectory(kModelDirectory);
    QVERIFY(error.wait(kTimeoutMs));
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("quantum")), qPrintable(error.front().front().toString()));
  }

  // The app kept its sessions in Qt's AppDataLocation (the data home's Lightdesk/Lightdesk) and,
  // once its settings were accepted, saved that place as its data directory. The sessions move
  // to the directory shared with lightdesk-cli, which the settings then show whole.
  void formerSessionsMoveToTheSharedDataDirectory() {
    QTemporaryDir temporary;
    // A data home as long as real ones get, so that a field of the default width would cut it.
    const QDir home(temporary.filePath(QStringLiteral("home/someone-with-a-long-name/.local/share")));
    QVERIFY(QDir().mkpath(home.path()));
    const QByteArray data_home = qgetenv("XDG_DATA_HOME"), data_dir = qgetenv("LIGHTDESK_DATA_DIR");
    const auto restore = qScopeGuard([&] {
      data_home.isNull() ? qunsetenv("XDG_DATA_HOME") : qputenv("XDG_DATA_HOME", data_home);
      data_dir.isNull() ? qunsetenv("LIGHTDESK_DATA_DIR") : qputenv("LIGHTDESK_DATA_DIR", data_dir);
    });
    qputenv("XDG_DATA_HOME", home.path().toUtf8());
    qunsetenv("LIGHTDESK_DATA_DIR");
    const QString former = home.filePath(QStringLiteral("Lightdesk/Lightdesk"));
    QVERIFY(QDir().mkpath(former));
    {
      StoreSessionRepository sessions(std::filesystem::path((former + QStringLiteral("/sessions.sqlite")).toStdString()));
      sessions.create(QStringLiteral("Kept from before"));
    }
    settings_->setValue(QStringLiteral("dataDirectory"), former);
    const std::filesystem::path database = lightdesk::gui::session_database_path(*settings_);
    QCOMPARE(QString::fromStdString(database.string()), home.filePath(QStringLiteral("Lightdesk/sessions.sqlite")));
    QVERIFY(!QFile::exists(former + QStringLiteral("/sessions.sqlite")));
    {
      StoreSessionRepository sessions(database);
      QCOMPARE(sessions.list().size(), 1);
      QCOMPARE(sessions.list().front().title, QStringLiteral("Kept from before"));
    }

    lightdesk::gui::SettingsDialog dialog(*settings_, QString(), {});
    dialog.show();
    QVERIFY(QTest::qWaitForWindowExposed(&dialog));
    auto* data = dialog.findChild<QLineEdit*>(QStringLiteral("dataDirectoryEdit"));
    QCOMPARE(data->text(), home.filePath(QStringLiteral("Lightdesk")));
    QVERIFY2(data->width() > data->fontMetrics().horizontalAdvance(data->text()),
             qPrintable(QStringLiteral("%1 px for %2").arg(data->width()).arg(data->text())));
    // Accepting the default saves no choice: the directory keeps following the environment.
    dialog.accept();
    QVERIFY(!settings_->contains(QStringLiteral("dataDirectory")));
  }

  void damagedStateFallsBackToReading() {
    QTemporaryDir data;
    const std::filesystem::path database = ownDatabase(data);
    if (QTest::currentTestFailed()) return;
    {
      StoreSessionRepository sessions(database);
      MainWindow window(sessions, *settings_);
      openModel(window);
      ask(window, QStringLiteral("Keep this question"));
    }
    // A stored lightning state zeroed, as a damaged disk could: its checksum no longer matches.
    executeSql(database, "UPDATE lightning_states SET data = zeroblob(length(data)) WHERE id = (SELECT min(id) FROM lightning_states)");
    if (QTest::currentTestFailed()) return;

    StoreSessionRepository sessions(database);
    MainWindow window(sessions, *settings_);
    QSignalSpy restored(&window, &MainWindow::stateRestored);
    QSignalSpy error(&window, &MainWindow::errorShown);
    openModel(window);
    QVERIFY(error.wait(kTimeoutMs));
    const QString message = error.front().front().toString();
    QVERIFY2(message.startsWith(QStringLiteral("The saved state of this conversation could not be used (")) &&
                 message.contains(QStringLiteral("checksum")) && message.contains(QStringLiteral("messages are kept")),
             qPrintable(message));
    QVERIFY(restored.isEmpty());
    const QString transcript = window.findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText();
    QVERIFY2(transcript.contains(QStringLiteral("Keep this question")), qPrintable(transcript));
    // The conversation goes on, read again from its messages.
    ask(window, QStringLiteral("Next"));
    const QString status = statusText(window);
    QVERIFY2(status.contains(QStringLiteral("tokens generated")) && !status.contains(QStringLiteral("kept from")),
             qPrintable(status));
    QCOMPARE(sessions.load(sessions.list().front().id)->entries.size(), 4);
  }

  void failedWriteIsShownAndTheConversationKept() {
    QTemporaryDir data;
    const std::filesystem::path database = ownDatabase(data);
    if (QTest::currentTestFailed()) return;
    StoreSessionRepository sessions(database);
    MainWindow window(sessions, *settings_);
    openModel(window);
    // The disk fills up: every new message is refused.
    executeSql(database, "CREATE TRIGGER full_disk BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END");
    if (QTest::currentTestFailed()) return;
    QSignalSpy error(&window, &MainWindow::errorShown);
    ask(window, QStringLiteral("Will this be saved?"));
    QTRY_VERIFY_WITH_TIMEOUT(!error.isEmpty(), kTimeoutMs);
    const QString message = error.front().front().toString();
    QVERIFY2(message.startsWith(QStringLiteral("Could not save to the session database ")) &&
                 message.contains(QStringLiteral("database or disk is full")) &&
                 message.contains(QStringLiteral("Export conversation")),
             qPrintable(message));
    const QString transcript = window.findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText();
    QVERIFY2(transcript.contains(QStringLiteral("Will this be saved?")), qPrintable(transcript));
  }

  void aQuestionThatCannotBeSentStaysInTheInput() {
    openModel(*window_);
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    // Longer than the model's 4096-token context (the tiny tokenizer reads a byte a token).
    const QString question = QStringLiteral("Summarise this: ") + QString(5000, QLatin1Char('x'));
    QSignalSpy error(window_.get(), &MainWindow::errorShown);
    QSignalSpy finished(window_.get(), &MainWindow::answerFinished);
    input->setPlainText(question);
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    QCOMPARE(error.size(), 1);
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("does not fit the model's context")),
             qPrintable(error.front().front().toString()));
    QVERIFY2(error.front().front().toString().contains(QStringLiteral("back in the input box")),
             qPrintable(error.front().front().toString()));
    QCOMPARE(input->toPlainText(), question);
    QVERIFY(!window_->findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText().contains(QStringLiteral("Summarise")));
    QVERIFY(sessions_->load(sessions_->list().front().id)->entries.isEmpty());

    // The same for an edit: the old turn is back, the edited text waits in the input box.
    settings_->setValue(QStringLiteral("sampling/M1/max_new_tokens"), 8);
    ask(*window_, QStringLiteral("Short"));
    auto* transcript = window_->findChild<QTextBrowser*>(QStringLiteral("transcript"));
    emit transcript->anchorClicked(QUrl(QStringLiteral("edit:0")));
    input->setPlainText(question);
    window_->send();
    QVERIFY(finished.wait(kTimeoutMs));
    QCOMPARE(input->toPlainText(), question);
    QVERIFY(!window_->findChild<QLabel*>(QStringLiteral("editBar"))->isHidden());
    QCOMPARE(sessions_->load(sessions_->list().front().id)->entries.size(), 2);
    QCOMPARE(sessions_->load(sessions_->list().front().id)->entries[0].text, QStringLiteral("Short"));
    QVERIFY(transcript->toPlainText().contains(QStringLiteral("Short")));
  }

 private:
  // A session database in `data` for a test that runs windows of its own on it (the shared
  // window closes first); short answers.
  std::filesystem::path ownDatabase(const QTemporaryDir& data) {
    window_.reset();
    [&data] { QVERIFY(data.isValid()); }();
    settings_->setValue(QStringLiteral("sampling/M1/max_new_tokens"), 8);
    return data.filePath(QStringLiteral("sessions.sqlite")).toStdString();
  }

  QTemporaryDir directory_;
  std::unique_ptr<InMemorySessionRepository> sessions_;
  std::unique_ptr<QSettings> settings_;
  std::unique_ptr<MainWindow> window_;
};

QTEST_MAIN(MainWindowTest)
#include "main_window_test.moc"
