// The desktop app's flows of issue 23, each driven through the whole window (offscreen): the
// first launch (what the app is for, "Try the demo", recent models, the model card), "Show in
// document", the settings that act on the window, and accessible names on every control.
#include <QAbstractButton>
#include <QApplication>
#include <QAccessible>
#include <QComboBox>
#include <QDir>
#include <QFile>
#include <QLabel>
#include <QListWidget>
#include <QMenu>
#include <QMenuBar>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSettings>
#include <QSignalSpy>
#include <QSpinBox>
#include <QTemporaryDir>
#include <QTest>
#include <QTextBrowser>
#include <QCheckBox>

#include <filesystem>
#include <memory>

#include "conversation_panel.h"
#include "document_viewer.h"
#include "main_window.h"
#include "session_repository.h"
#include "settings_dialog.h"
#include "store_session_repository.h"
#include "window_test_util.h"

using lightdesk::gui::Attachment;
using lightdesk::gui::ChatEntry;
using lightdesk::gui::InMemorySessionRepository;
using lightdesk::gui::MainWindow;

namespace {

const QString kDocument = QStringLiteral(LIGHTDESK_SOURCE_DIR "/resources/documents/lightdesk-notes.md");

}  // namespace

class DesktopFlowsTest : public QObject {
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

  // A first launch says what the app is for and offers the demo: one click opens its model,
  // attaches its document and puts its question in the input box. The model is remembered
  // among the recent ones, and Help > About shows its card.
  void firstLaunchOffersTheDemo() {
    // The demo model: the tiny one with a model card of its own.
    const QString model = directory_.filePath(QStringLiteral("demo-model"));
    QVERIFY(QDir().mkpath(model));
    for (const QString& name : QDir(window_test::kModelDirectory).entryList(QDir::Files))
      QVERIFY(QFile::copy(QDir(window_test::kModelDirectory).filePath(name), QDir(model).filePath(name)));
    QFile card(QDir(model).filePath(QStringLiteral("MODEL_CARD.md")));
    QVERIFY(card.open(QIODevice::WriteOnly));
    card.write("# tiny-demo\n\nA random model for the tests.\n");
    card.close();

    openWindow();
    auto* label = window_->findChild<QLabel*>(QStringLiteral("modelLabel"));
    QVERIFY2(label->text().startsWith(QStringLiteral("Lightdesk answers questions about your long documents")),
             qPrintable(label->text()));
    auto* demo = window_->findChild<QPushButton*>(QStringLiteral("demoButton"));
    QVERIFY(!demo->isVisible());  // no demo installed
    window_->setDemo({model, kDocument, QStringLiteral("What does Lightdesk keep?")});
    QVERIFY(demo->isVisible());
    QVERIFY(window_->recentModels().isEmpty());

    QSignalSpy attached(window_.get(), &MainWindow::documentAttached);
    demo->click();
    QVERIFY(attached.wait(window_test::kTimeoutMs));
    QCOMPARE(attached.front().front().toString(), kDocument);
    QVERIFY(!demo->isVisible());
    QCOMPARE(window_->findChild<QPlainTextEdit*>(QStringLiteral("input"))->toPlainText(),
             QStringLiteral("What does Lightdesk keep?"));
    QVERIFY(window_->findChild<QPushButton*>(QStringLiteral("sendButton"))->isEnabled());
    QCOMPARE(window_->recentModels(), QStringList{model});
    // The memory plan is said before loading.
    QVERIFY2(label->text().contains(QStringLiteral("Plan: ")), qPrintable(label->text()));

    auto* recent = window_->findChild<QMenu*>(QStringLiteral("recentMenu"));
    QCOMPARE(recent->actions().size(), 1);
    QCOMPARE(recent->actions().front()->text(), QStringLiteral("demo-model"));
    QCOMPARE(recent->actions().front()->toolTip(), model);

    window_->showAbout();
    auto* about = window_->findChild<QDialog*>(QStringLiteral("aboutDialog"));
    QVERIFY(about != nullptr);
    const QString shown = about->findChild<QTextBrowser*>(QStringLiteral("modelCard"))->toPlainText();
    QVERIFY2(shown.contains(QStringLiteral("A random model for the tests.")), qPrintable(shown));
    QVERIFY(shown.contains(QStringLiteral("answers questions about your long documents")));
    about->close();

    // Opening another model puts it first; the list holds each directory once.
    window_test::openModel(*window_);
    QCOMPARE(window_->recentModels(), (QStringList{window_test::kModelDirectory, model}));
    window_->openModelDirectory(model);
    QSignalSpy ready(window_.get(), &MainWindow::modelReady);
    QVERIFY(ready.wait(window_test::kTimeoutMs));
    QCOMPARE(window_->recentModels(), (QStringList{model, window_test::kModelDirectory}));
    window_->showAbout();
    QTRY_VERIFY(window_->findChild<QDialog*>(QStringLiteral("aboutDialog")) != nullptr);
  }

  // "Show in document" opens the document at the answer's words, highlighted, and lists every
  // place; an answer not in its documents says so. The session list stays usable meanwhile.
  void showInDocumentOpensTheDocumentHighlighted() {
    const QString contract = QStringLiteral(
        "Clause 1. The tenant pays the rent on the first day of each month.\nClause 2. Pets are not allowed.\n");
    const Attachment document{QStringLiteral("/d/contract.txt"), contract, {}, 40};
    const lightdesk::gui::ChatSession other = sessions_->create(QStringLiteral("Other"));
    sessions_->append(other.id, {ChatEntry::Role::User, QStringLiteral("Hello?"), {}, {}, {}});
    const lightdesk::gui::ChatSession session = sessions_->create(QStringLiteral("Contract"));
    sessions_->append(session.id, {ChatEntry::Role::User, QStringLiteral("When is the rent due?"), {}, {document}, {}});
    sessions_->append(session.id, {ChatEntry::Role::Assistant,
                                   QStringLiteral("The contract says: the tenant pays the rent on the first day."),
                                   {}, {}, {}});
    sessions_->append(session.id, {ChatEntry::Role::User, QStringLiteral("And pets?"), {}, {}, {}});
    sessions_->append(session.id, {ChatEntry::Role::Assistant, QStringLiteral("Cats are welcome."), {}, {}, {}});
    openWindow();
    window_->showMessage(session.id, 1);

    window_->showInDocument(1);
    auto* viewer = window_->findChild<lightdesk::gui::DocumentViewer*>(QStringLiteral("documentViewer"));
    QVERIFY(viewer->isVisible());
    QCOMPARE(viewer->documentPath(), QStringLiteral("/d/contract.txt"));
    // "day." of the answer is not "day" of the document: the run ends before it.
    QCOMPARE(viewer->highlighted(), QStringLiteral("The tenant pays the rent on the first"));
    QCOMPARE(window_->findChild<QListWidget*>(QStringLiteral("sourcesList"))->count(), 1);

    window_->showInDocument(3);
    QVERIFY(window_->findChild<QLabel*>(QStringLiteral("sourcesLabel"))->text().startsWith(QStringLiteral("Not found")));
    QVERIFY(window_test::statusText(*window_).startsWith(QStringLiteral("Not found")));

    // Another session can be chosen while the document is read.
    auto* sessions = window_->findChild<QListWidget*>(QStringLiteral("sessionList"));
    QVERIFY(sessions->isEnabled());
    QCOMPARE(sessions->count(), 2);
    // By keyboard: the other session, then Enter.
    sessions->setFocus();
    const int other_row = sessions->item(0)->text() == QStringLiteral("Other") ? 0 : 1;
    sessions->setCurrentRow(other_row == 0 ? 1 : 0);
    QTest::keyClick(sessions, other_row == 0 ? Qt::Key_Up : Qt::Key_Down);
    QTest::keyClick(sessions, Qt::Key_Return);
    QTRY_VERIFY(window_->findChild<QTextBrowser*>(QStringLiteral("transcript"))->toPlainText().contains(QStringLiteral("Hello?")));
    QVERIFY(viewer->isVisible());
  }

  // The settings act on the window: Enter sends or adds a line, the GPUs are checkboxes, and
  // the context length is the one the memory is planned for.
  void settingsForEnterGpusAndContext() {
    openWindow();
    {
      std::vector<lightdesk::GpuDevice> gpus{{0, "GPU A", 80ull << 30, std::nullopt}, {1, "GPU B", 80ull << 30, std::nullopt}};
      settings_->setValue(QStringLiteral("engine/gpus"), QStringLiteral("1"));
      lightdesk::gui::SettingsDialog dialog(*settings_, QString(), {}, gpus);
      auto* first = dialog.findChild<QCheckBox*>(QStringLiteral("gpuBox0"));
      auto* second = dialog.findChild<QCheckBox*>(QStringLiteral("gpuBox1"));
      QVERIFY(first && second);
      QVERIFY(!first->isChecked() && second->isChecked());
      QVERIFY(first->text().startsWith(QStringLiteral("GPU 0: GPU A, 80")));
      first->setChecked(true);
      dialog.findChild<QSpinBox*>(QStringLiteral("contextBox"))->setValue(1000);
      dialog.findChild<QCheckBox*>(QStringLiteral("enterSendsBox"))->setChecked(false);
      dialog.accept();
    }
    QCOMPARE(lightdesk::gui::gpus_setting(*settings_), QStringLiteral("0,1"));
    QCOMPARE(lightdesk::gui::context_setting(*settings_), 1000);
    QVERIFY(!lightdesk::gui::enter_sends_setting(*settings_));
    {
      // Without a GPU the dialog says so and keeps the stored choice.
      lightdesk::gui::SettingsDialog dialog(*settings_, QString(), {});
      QVERIFY(dialog.findChild<QLabel*>(QStringLiteral("noGpuLabel")) != nullptr);
      dialog.accept();
      QCOMPARE(lightdesk::gui::gpus_setting(*settings_), QStringLiteral("0,1"));
    }
    // Read at the next start; the memory check counts the chosen context.
    settings_->setValue(QStringLiteral("engine/gpus"), QString());
    openWindow();
    QVERIFY(!window_->findChild<lightdesk::gui::ConversationPanel*>()->enterSends());
    window_test::openModel(*window_);
    const QString label = window_->findChild<QLabel*>(QStringLiteral("modelLabel"))->text();
    QVERIFY2(label.contains(QStringLiteral("for 1,000 tokens of context")), qPrintable(label));
    QVERIFY2(label.contains(QStringLiteral("Plan: ")), qPrintable(label));
  }

  // A session's own sampling is kept in its settings (the store's settings JSON, other keys
  // untouched), survives a restart and is what its questions are answered with; without one the
  // model family's is used.
  void sessionSamplingIsKeptAndUsed() {
    const std::filesystem::path database = directory_.filePath(QStringLiteral("sessions.sqlite")).toStdString();
    std::filesystem::remove(database);
    qint64 id = 0;
    const lightdesk::gui::SamplingSettings own{0.0, 0.5, 7, 3};
    {
      lightdesk::gui::StoreSessionRepository store(database);
      id = store.create(QStringLiteral("Own sampling")).id;
      store.setSampling(id, own);
    }
    {
      lightdesk::gui::StoreSessionRepository store(database);
      QCOMPARE(store.load(id)->sampling, std::optional(own));
      store.setSampling(id, std::nullopt);
    }
    QVERIFY(!lightdesk::gui::StoreSessionRepository(database).load(id)->sampling);

    const qint64 session = sessions_->create(QStringLiteral("Own sampling")).id;
    sessions_->append(session, {ChatEntry::Role::User, QStringLiteral("Hi?"), {}, {}, {}});
    sessions_->setSampling(session, own);
    openWindow();
    window_test::openModel(*window_);
    window_->showMessage(session, 0);
    QSignalSpy generate(window_.get(), &MainWindow::generateRequested);
    window_test::ask(*window_, QStringLiteral("Again?"));
    QCOMPARE(generate.size(), 1);
    const auto used = generate.front().at(2).value<lightdesk::gui::SamplingSettings>();
    QCOMPARE(used, own);
    // The dialog offers the family's sampling until the session has its own.
    lightdesk::gui::SessionSettingsDialog dialog(QStringLiteral("S"), {}, QStringLiteral("M1"), {1.0, 0.95, 0, 8},
                                                 std::nullopt);
    QVERIFY(!dialog.sampling());
    dialog.findChild<QCheckBox*>(QStringLiteral("ownSamplingBox"))->setChecked(true);
    dialog.findChild<QSpinBox*>(QStringLiteral("maxNewTokensBox"))->setValue(5);
    QCOMPARE(dialog.sampling(), std::optional(lightdesk::gui::SamplingSettings{1.0, 0.95, 0, 5}));
  }

  // Every control a person can reach has a name a screen reader says; the input comes first
  // after the session list in the tab order.
  void everyControlHasAnAccessibleName() {
    openWindow();
    window_test::openModel(*window_);
    QStringList unnamed;
    const auto widgets = window_->findChildren<QWidget*>();
    for (QWidget* widget : widgets) {
      if (!widget->isVisibleTo(window_.get()) || widget->focusPolicy() == Qt::NoFocus || widget->inherits("QScrollBar") || widget->inherits("QMenu") ||
          widget->inherits("QSplitterHandle") || widget->inherits("QTabBar"))
        continue;
      // The viewport and the line edit inside a spin box belong to their parent.
      if (widget->parentWidget() && (widget->parentWidget()->inherits("QAbstractSpinBox") ||
                                     widget->parentWidget()->inherits("QAbstractScrollArea")))
        continue;
      QAccessibleInterface* accessible = QAccessible::queryAccessibleInterface(widget);
      if (accessible == nullptr || accessible->text(QAccessible::Name).trimmed().isEmpty())
        unnamed.append(QStringLiteral("%1 %2").arg(QString::fromLatin1(widget->metaObject()->className()), widget->objectName()));
    }
    QVERIFY2(unnamed.isEmpty(), qPrintable(unnamed.join(QStringLiteral(", "))));
    auto* input = window_->findChild<QPlainTextEdit*>(QStringLiteral("input"));
    // Tab leaves the input (it does not type a tab) for Send, then Stop.
    input->setFocus();
    QTest::keyClick(input, Qt::Key_Tab);
    QCOMPARE(QApplication::focusWidget(), window_->findChild<QPushButton*>(QStringLiteral("sendButton")));
    QVERIFY(input->toPlainText().isEmpty());
  }

 private:
  void openWindow() {
    window_.reset();
    window_ = std::make_unique<MainWindow>(*sessions_, *settings_);
    window_->show();
    QVERIFY(QTest::qWaitForWindowActive(window_.get()));
  }

  QTemporaryDir directory_;
  std::unique_ptr<QSettings> settings_;
  std::unique_ptr<InMemorySessionRepository> sessions_;
  std::unique_ptr<MainWindow> window_;
};

QTEST_MAIN(DesktopFlowsTest)
#include "desktop_flows_test.moc"
