#include "main_window.h"

#include <QAction>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QImageReader>
#include <QLabel>
#include <QDialog>
#include <QDialogButtonBox>
#include <QFile>
#include <QLocale>
#include <QMenuBar>
#include <QTextBrowser>
#include <QMimeData>
#include <QPushButton>
#include <QScreen>
#include <QSettings>
#include <QSplitter>
#include <QStatusBar>
#include <QTimer>
#include <QUrl>
#include <QVBoxLayout>

#include "answer_sources.h"
#include "banner.h"
#include "conversation_export.h"
#include "conversation_panel.h"
#include "document_viewer.h"
#include "documents_panel.h"
#include "endpoint_dialog.h"
#include "session_panel.h"
#include "settings_dialog.h"
#include "status_panel.h"

namespace lightdesk::gui {
namespace {

QString format_bytes(std::uint64_t bytes) {
  return QLocale().formattedDataSize(static_cast<qint64>(bytes), 1, QLocale::DataSizeTraditionalFormat);
}

// What the app is for, in one sentence: the first thing a new user reads.
QString purpose() {
  return MainWindow::tr("Lightdesk answers questions about your long documents (contracts, logs, books) with a "
                        "MiniMax model that runs on this computer; nothing leaves it.");
}

constexpr int kRecentModels = 8;

// The title of a session until the user names it or sends its first message.
QString untitled() { return MainWindow::tr("New chat"); }

// The conversation as the engine reads it: each question with the documents and images sent along.
Turns to_turns(const QList<ChatEntry>& entries) {
  Turns turns;
  for (const ChatEntry& entry : entries) {
    conversation::Turn turn{entry.role == ChatEntry::Role::User, entry.text.toStdString(), {}, {}};
    for (const Attachment& attachment : entry.documents) {
      Document document{attachment.path.toStdString(), attachment.page_offsets.isEmpty() ? "text" : "pdf",
                        attachment.text.toStdString(), {}, {}};
      int page = 0;
      for (const qint64 offset : attachment.page_offsets)
        document.anchors.push_back({static_cast<std::size_t>(offset), ++page, 1});
      turn.documents.push_back(std::move(document));
    }
    for (const QString& image : entry.images) turn.images.emplace_back(image.toStdString());
    turns.push_back(std::move(turn));
  }
  return turns;
}

}  // namespace

MainWindow::MainWindow(SessionRepository& sessions, QSettings& settings, QWidget* parent)
    : MainWindow(sessions, settings, new EngineWorker(gpus_setting(settings)), parent) {}

MainWindow::MainWindow(SessionRepository& sessions, QSettings& settings, EngineWorker* engine, QWidget* parent)
    : QMainWindow(parent), sessions_(sessions), settings_(settings), worker_(engine) {
  setWindowTitle(tr("Lightdesk"));
  setAcceptDrops(true);
  buildWidgets();
  buildMenus();
  connectEngine();
  applySettings();
  // A top-level window without a size of its own would open at two thirds of the screen.
  resize(sizeHint());

  // The conversation shown last (QSettings) opens again, else the one used last; sessions never
  // used (an empty "New chat" of an earlier run) are not kept, so they cannot pile up.
  const qint64 last_shown = settings_.value(QStringLiteral("session/last")).toLongLong();
  std::optional<qint64> shown;
  for (const ChatSession& session : sessions_.list()) {
    const std::optional<ChatSession> loaded = sessions_.load(session.id);
    if (loaded && loaded->entries.isEmpty() && loaded->title == untitled())
      sessions_.remove(session.id);
    else if (!shown || session.id == last_shown)
      shown = session.id;
  }
  if (shown)
    selectSession(*shown);
  else
    newSession();
  setGenerating(false);
}

QString MainWindow::lastModelDirectory() const { return settings_.value(QStringLiteral("model/directory")).toString(); }

QStringList MainWindow::recentModels() const { return settings_.value(QStringLiteral("model/recent")).toStringList(); }

void MainWindow::rememberModel(const QString& directory) {
  settings_.setValue(QStringLiteral("model/directory"), directory);
  QStringList recent = recentModels();
  recent.removeAll(directory);
  recent.prepend(directory);
  settings_.setValue(QStringLiteral("model/recent"), recent.mid(0, kRecentModels));
  refreshRecentMenu();
}

void MainWindow::refreshRecentMenu() {
  recent_menu_->clear();
  const QStringList recent = recentModels();
  for (const QString& directory : recent) {
    QAction* action = recent_menu_->addAction(QFileInfo(directory).fileName(), this,
                                              [this, directory] { openModelDirectory(directory); });
    action->setToolTip(directory);
    action->setStatusTip(directory);
  }
  recent_menu_->setEnabled(!recent.isEmpty());
}

void MainWindow::setDemo(const Demo& demo) {
  demo_ = demo;
  demo_button_->setVisible(!demo.model.isEmpty() && !model_ready_);
}

void MainWindow::tryDemo() {
  if (generating_) return;
  if (demo_.model.isEmpty()) {
    showError(tr("The demo model is not installed with this copy of Lightdesk."));
    return;
  }
  auto attach = [this] {
    newSession();
    if (!demo_.document.isEmpty()) attachFiles({demo_.document});
    conversation_panel_->setInput(demo_.question);
    conversation_panel_->focusInput();
  };
  if (model_ready_ && model_info_.directory == std::filesystem::path(demo_.model.toStdString())) {
    attach();
    return;
  }
  connect(this, &MainWindow::modelReady, this, attach, Qt::SingleShotConnection);
  openModelDirectory(demo_.model);
}

void MainWindow::showAbout() {
  auto* dialog = new QDialog(this);
  dialog->setObjectName(QStringLiteral("aboutDialog"));
  dialog->setAttribute(Qt::WA_DeleteOnClose);
  dialog->setWindowTitle(tr("About Lightdesk"));
  auto* text = new QTextBrowser;
  text->setObjectName(QStringLiteral("modelCard"));
  text->setAccessibleName(tr("About Lightdesk and the model"));
  text->setOpenExternalLinks(true);
  QString markdown = QStringLiteral("# Lightdesk\n\n") + purpose() + QStringLiteral("\n\n");
  if (!model_ready_) {
    markdown += tr("No model is loaded: its model card shows here once one is.");
  } else {
    // The card the model's authors wrote, as its directory holds it.
    const QDir directory(QString::fromStdString(model_info_.directory.string()));
    QString card;
    for (const QString& name : {QStringLiteral("MODEL_CARD.md"), QStringLiteral("README.md")}) {
      QFile file(directory.filePath(name));
      if (file.open(QIODevice::ReadOnly)) {
        card = QString::fromUtf8(file.readAll());
        break;
      }
    }
    markdown += QStringLiteral("---\n\n") +
                (card.isEmpty() ? tr("The model in %1 has no model card (MODEL_CARD.md or README.md).").arg(directory.path())
                                : card);
  }
  text->setMarkdown(markdown);
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Close);
  connect(buttons, &QDialogButtonBox::rejected, dialog, &QDialog::close);
  auto* layout = new QVBoxLayout(dialog);
  layout->addWidget(text);
  layout->addWidget(buttons);
  dialog->resize(640, 520);
  dialog->show();
}

MainWindow::~MainWindow() {
  finishDelete();
  worker_->requestStop();
  engine_thread_.quit();
  engine_thread_.wait();
}

QSize MainWindow::sizeHint() const {
  const QSize wanted(1100, 700);
  const QScreen* shown_on = screen();
  if (shown_on == nullptr) return wanted;
  // The frame (title bar, borders) needs room too.
  return wanted.boundedTo(shown_on->availableGeometry().size() * 0.9);
}

void MainWindow::buildWidgets() {
  auto* open_model_button = new QPushButton(tr("Open model…"));
  open_model_button->setObjectName(QStringLiteral("openModelButton"));
  open_model_button->setToolTip(tr("Open a model directory (Ctrl+O)"));
  connect(open_model_button, &QPushButton::clicked, this, &MainWindow::chooseModelDirectory);
  demo_button_ = new QPushButton(tr("Try the demo"));
  demo_button_->setObjectName(QStringLiteral("demoButton"));
  demo_button_->setToolTip(tr("Open the bundled demo model with its document and a question to ask"));
  demo_button_->setVisible(false);
  connect(demo_button_, &QPushButton::clicked, this, &MainWindow::tryDemo);
  model_label_ = new QLabel(purpose() + QLatin1Char(' ') + tr("No model loaded. Choose a model directory to start."));
  model_label_->setObjectName(QStringLiteral("modelLabel"));
  model_label_->setWordWrap(true);
  model_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  auto* model_row = new QHBoxLayout;
  model_row->addWidget(open_model_button);
  model_row->addWidget(demo_button_);
  model_row->addWidget(model_label_, 1);

  banner_ = new Banner;

  undo_bar_ = new QWidget;
  undo_bar_->setObjectName(QStringLiteral("undoBar"));
  undo_label_ = new QLabel;
  auto* undo_button = new QPushButton(tr("Undo"));
  undo_button->setObjectName(QStringLiteral("undoButton"));
  connect(undo_button, &QPushButton::clicked, this, &MainWindow::undoDelete);
  auto* undo_layout = new QHBoxLayout(undo_bar_);
  undo_layout->setContentsMargins(0, 0, 0, 0);
  undo_layout->addWidget(undo_label_, 1);
  undo_layout->addWidget(undo_button);
  undo_bar_->setVisible(false);
  undo_timer_ = new QTimer(this);
  undo_timer_->setObjectName(QStringLiteral("undoTimer"));
  undo_timer_->setSingleShot(true);
  undo_timer_->setInterval(10000);
  connect(undo_timer_, &QTimer::timeout, this, &MainWindow::finishDelete);

  session_panel_ = new SessionPanel;
  connect(session_panel_, &SessionPanel::sessionSelected, this, &MainWindow::selectSession);
  connect(session_panel_, &SessionPanel::sessionRenamed, this, &MainWindow::renameSession);
  connect(session_panel_, &SessionPanel::newRequested, this, &MainWindow::newSession);
  connect(session_panel_, &SessionPanel::deleteRequested, this, &MainWindow::deleteCurrentSession);
  connect(session_panel_, &SessionPanel::searchRequested, this, &MainWindow::runSearch);
  connect(session_panel_, &SessionPanel::hitActivated, this, &MainWindow::showMessage);

  conversation_panel_ = new ConversationPanel;
  connect(conversation_panel_, &ConversationPanel::sendRequested, this, &MainWindow::send);
  connect(conversation_panel_, &ConversationPanel::stopRequested, this, &MainWindow::stop);
  connect(conversation_panel_, &ConversationPanel::editRequested, this, &MainWindow::editMessage);
  connect(conversation_panel_, &ConversationPanel::regenerateRequested, this, &MainWindow::regenerate);
  connect(conversation_panel_, &ConversationPanel::branchRequested, this, &MainWindow::showBranch);
  connect(conversation_panel_, &ConversationPanel::showInDocumentRequested, this, &MainWindow::showInDocument);
  connect(conversation_panel_, &ConversationPanel::systemPromptEditRequested, this, &MainWindow::editSessionSettings);

  documents_panel_ = new DocumentsPanel;
  connect(documents_panel_, &DocumentsPanel::attachRequested, this, &MainWindow::chooseDocuments);
  connect(documents_panel_, &DocumentsPanel::removeRequested, this, &MainWindow::removeAttachment);
  connect(documents_panel_, &DocumentsPanel::openRequested, this, [this](const Attachment& document) { openDocument(document); });

  document_viewer_ = new DocumentViewer;
  document_viewer_->setObjectName(QStringLiteral("documentViewer"));
  document_viewer_->setVisible(false);
  connect(document_viewer_, &DocumentViewer::closeRequested, this, [this] {
    document_viewer_->setVisible(false);
    conversation_panel_->focusInput();
  });

  // The document pane opens beside the conversation, so the sessions stay in reach.
  auto* splitter = new QSplitter;
  splitter_ = splitter;
  splitter->addWidget(session_panel_);
  splitter->addWidget(conversation_panel_);
  splitter->addWidget(document_viewer_);
  splitter->addWidget(documents_panel_);
  splitter->setStretchFactor(1, 1);
  splitter->setStretchFactor(2, 1);
  splitter->setSizes({200, 600, 0, 240});

  auto* central = new QWidget;
  auto* layout = new QVBoxLayout(central);
  layout->addLayout(model_row);
  layout->addWidget(banner_);
  layout->addWidget(undo_bar_);
  layout->addWidget(splitter, 1);
  setCentralWidget(central);

  status_panel_ = new StatusPanel([this] { return memoryText(); });
  statusBar()->addWidget(status_panel_, 1);
}

void MainWindow::buildMenus() {
  QMenu* file_menu = menuBar()->addMenu(tr("&File"));
  file_menu->addAction(tr("&Open model…"), QKeySequence::Open, this, &MainWindow::chooseModelDirectory);
  file_menu->addAction(tr("Use a &server…"), this, &MainWindow::chooseEndpoint);
  file_menu->addAction(tr("&Attach documents…"), this, &MainWindow::chooseDocuments);
  file_menu->addAction(tr("&Export conversation…"), this, &MainWindow::chooseExportFile);
  file_menu->addAction(tr("&Settings…"), QKeySequence::Preferences, this, &MainWindow::editSettings);
  file_menu->addSeparator();
  file_menu->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);
  recent_menu_ = new QMenu(tr("Open &recent"), this);
  recent_menu_->setObjectName(QStringLiteral("recentMenu"));
  recent_menu_->setToolTipsVisible(true);
  file_menu->insertMenu(file_menu->actions().at(1), recent_menu_);
  refreshRecentMenu();
  QMenu* session_menu = menuBar()->addMenu(tr("&Session"));
  session_menu->addAction(tr("&New session"), QKeySequence::New, this, &MainWindow::newSession);
  session_menu->addAction(tr("&Rename"), QKeySequence(Qt::Key_F2), session_panel_, &SessionPanel::renameCurrent);
  session_menu->addAction(tr("&Delete"), this, &MainWindow::deleteCurrentSession);
  session_menu->addAction(tr("Re&generate last answer"), QKeySequence(Qt::CTRL | Qt::Key_R), this,
                          &MainWindow::regenerate);
  session_menu->addAction(tr("&Search"), QKeySequence::Find, session_panel_, &SessionPanel::focusSearch);
  session_menu->addAction(tr("Se&ttings for this session…"), this, &MainWindow::editSessionSettings)
      ->setObjectName(QStringLiteral("sessionSettingsAction"));
  QMenu* help_menu = menuBar()->addMenu(tr("&Help"));
  help_menu->addAction(tr("Try the &demo"), this, &MainWindow::tryDemo);
  QAction* about = help_menu->addAction(tr("&About Lightdesk and the model"), this, &MainWindow::showAbout);
  about->setObjectName(QStringLiteral("aboutAction"));
}

void MainWindow::connectEngine() {
  worker_->moveToThread(&engine_thread_);
  connect(&engine_thread_, &QThread::finished, worker_, &QObject::deleteLater);
  connect(this, &MainWindow::checkModelRequested, worker_, &EngineWorker::checkModel);
  connect(this, &MainWindow::loadModelRequested, worker_, &EngineWorker::loadModel);
  connect(this, &MainWindow::readDocumentRequested, worker_, &EngineWorker::readDocument);
  connect(this, &MainWindow::connectEndpointRequested, worker_, &EngineWorker::connectEndpoint);
  connect(worker_, &EngineWorker::endpointConnected, this, &MainWindow::onEndpointConnected);
  connect(worker_, &EngineWorker::endpointFailed, this, [this](const QString& endpoint, const QString& message) {
    status_panel_->clearMessage();
    showError(tr("%1 does not answer: %2").arg(endpoint, message));
  });
  connect(this, &MainWindow::generateRequested, worker_, &EngineWorker::generate);
  connect(worker_, &EngineWorker::modelChecked, this, &MainWindow::onModelChecked);
  connect(worker_, &EngineWorker::loadProgress, status_panel_, &StatusPanel::showLoadProgress);
  connect(worker_, &EngineWorker::modelLoaded, this, &MainWindow::onModelLoaded);
  // The memory figure follows with the modelLoaded or generationFinished that comes next.
  connect(worker_, &EngineWorker::gpuMemoryMeasured, this, [this](const std::vector<GpuDevice>& gpus) { gpus_ = gpus; });
  connect(worker_, &EngineWorker::modelRejected, this, &MainWindow::onModelRejected);
  connect(worker_, &EngineWorker::modelFailed, this, &MainWindow::onModelFailed);
  connect(worker_, &EngineWorker::documentReady, this, &MainWindow::onDocumentReady);
  connect(worker_, &EngineWorker::documentFailed, this, &MainWindow::onDocumentFailed);
  connect(worker_, &EngineWorker::documentProgress, this, [this](const QString& path, qint64 done, qint64 total) {
    if (reading_documents_.count(path) != 0) status_panel_->showDocumentProgress(QFileInfo(path).fileName(), done, total);
  });
  connect(worker_, &EngineWorker::prefillProgress, status_panel_, &StatusPanel::showPrefillProgress);
  connect(worker_, &EngineWorker::textPiece, this, &MainWindow::onTextPiece);
  connect(worker_, &EngineWorker::generationFinished, this, &MainWindow::onGenerationFinished);
  connect(worker_, &EngineWorker::generationFailed, this, &MainWindow::onGenerationFailed);
  connect(this, &MainWindow::adoptStateRequested, worker_, &EngineWorker::adoptState);
  connect(worker_, &EngineWorker::stateAdopted, this, &MainWindow::onStateAdopted);
  connect(worker_, &EngineWorker::stateRefused, this, &MainWindow::onStateRefused);
  // A failed write may have been the state the engine continues: its next state goes whole.
  connect(&sessions_, &SessionRepository::writeFailed, worker_, &EngineWorker::forgetSavedState);
  connect(&sessions_, &SessionRepository::writeFailed, this, [this](const QString& message) {
    showError(message + QLatin1Char('\n') +
              tr("The conversation stays in this window; export it (File > Export conversation…) to keep a copy."));
  });
  engine_thread_.start();
}

// ---- model ----

void MainWindow::chooseModelDirectory() {
  const QString directory = QFileDialog::getExistingDirectory(
      this, tr("Choose a model directory"), settings_.value(QStringLiteral("model/directory")).toString());
  if (!directory.isEmpty()) openModelDirectory(directory);
}

void MainWindow::openModelDirectory(const QString& directory) {
  if (generating_) {
    showError(tr("Stop the answer before opening another model."));
    return;
  }
  // The loaded model stays usable until the new one has passed the check.
  banner_->hide();
  status_panel_->showMessage(tr("Checking %1…").arg(directory));
  emit checkModelRequested(directory, backend_setting(settings_));
}

void MainWindow::onModelChecked(const ModelCheck& full_check) {
  // The memory is planned for the context the settings allow, when shorter than the model's.
  ModelCheck check = full_check;
  if (const std::int64_t chosen = context_setting(settings_); chosen > 0 && chosen < full_check.model.max_context) {
    ModelInfo limited = full_check.model;
    limited.max_context = chosen;
    check = memory_check(limited, full_check.available_bytes, full_check.memory_place);
    check.model = full_check.model;
    check.directory = full_check.directory;
  }
  const std::uint64_t needed = check.weight_bytes + check.session_bytes + check.workspace_bytes;
  const QString needs = tr("%1: weights %2 + session memory %3 for %4 tokens of context + workspace %5 = %6; %7 "
                           "available in %8")
                            .arg(check.description, format_bytes(check.weight_bytes), format_bytes(check.session_bytes),
                                 format_count(check.context_tokens), format_bytes(check.workspace_bytes),
                                 format_bytes(needed), format_bytes(check.available_bytes), check.memory_place);
  status_panel_->clearMessage();
  if (!check.fits()) {
    showError((check.fitting_context > 0
                   ? tr("%1 does not fit in %2 at its full context. A context of %3 tokens would fit.")
                         .arg(check.directory, check.memory_place, format_count(check.fitting_context))
                   : tr("%1 does not fit in %2: its weights alone need %3.")
                         .arg(check.directory, check.memory_place, format_bytes(check.weight_bytes))) +
              QLatin1Char('\n') + needs);
    return;
  }
  model_ready_ = false;
  // Busy while the weights load; Stop cancels the load.
  setGenerating(true);
  // The plan the memory planner chose, said before the weights are read.
  const MemoryPlan& plan = check.plan.plans[*check.plan.chosen];
  model_label_->setText(needs + QLatin1Char('\n') + tr("Plan: %1.").arg(QString::fromStdString(plan.summary())));
  model_label_->setToolTip(check.directory);
  worker_->clearStop();
  emit loadModelRequested(check.directory, backend_setting(settings_));
}

void MainWindow::chooseEndpoint() {
  EndpointDialog dialog(this);
  if (dialog.exec() == QDialog::Accepted) connectEndpoint(dialog.endpoint(), dialog.apiKey(), dialog.model());
}

void MainWindow::connectEndpoint(const QString& endpoint, const QString& apiKey, const QString& model) {
  status_panel_->showMessage(tr("Connecting to %1…").arg(endpoint));
  emit connectEndpointRequested(endpoint, apiKey, model);
}

void MainWindow::onEndpointConnected(const QString& endpoint, const QString& model) {
  model_ready_ = true;
  endpoint_ = endpoint;
  model_info_ = {};
  engine_holds_ = {};
  engine_tokens_ = 0;
  model_family_ = QStringLiteral("remote");
  default_sampling_ = {};
  model_label_->setText(tr("Answers come from %1 at %2. Conversations and documents stay on this computer; "
                           "documents are sent as text; no model state is kept here.")
                            .arg(model, endpoint));
  status_panel_->clearAnswerFigures();
  status_panel_->showMessage(tr("Connected to %1").arg(endpoint), 5000);
  setWindowTitle(tr("Lightdesk — %1").arg(model));
  refreshContextFigure();
  refreshAttachments();
  setGenerating(false);
  showViewedSession();
  emit modelReady();
}

void MainWindow::onModelLoaded(const ModelCheck& check, const QString& family, const SamplingSettings& sampling) {
  model_ready_ = true;
  endpoint_.clear();
  model_info_ = check.model;
  engine_holds_ = {};
  engine_tokens_ = 0;
  model_family_ = family;
  default_sampling_ = sampling;
  rememberModel(check.directory);
  demo_button_->setVisible(false);
  status_panel_->hideProgress();
  status_panel_->clearAnswerFigures();  // they were the other model's
  setWindowTitle(tr("Lightdesk — %1").arg(QFileInfo(check.directory).fileName()));
  status_panel_->showMessage(tr("Model loaded from %1").arg(check.directory), 5000);
  refreshContextFigure();
  status_panel_->refreshMemory();
  refreshAttachments();
  setGenerating(false);
  // A session looked at during the load becomes the current one (and restores its state) before
  // whatever waits for the model (the command line's new session) takes over.
  const bool viewed = viewing_.has_value();
  showViewedSession();
  emit modelReady();
  if (!viewed) restoreState();
}

void MainWindow::onModelRejected(const QString& directory, const QString& message) {
  status_panel_->clearMessage();
  showError(tr("%1 is not a model Lightdesk can open: %2").arg(directory, message));
}

void MainWindow::onModelFailed(const QString& directory, const QString& message) {
  model_ready_ = false;
  status_panel_->hideProgress();
  model_label_->setText(tr("No model loaded."));
  setGenerating(false);
  showViewedSession();
  showError(tr("Could not open the model in %1: %2").arg(directory, message));
}

void MainWindow::editSettings() {
  // Sampling belongs to a model family: without a model the dialog shows the application part.
  SettingsDialog dialog(settings_, model_ready_ ? model_family_ : QString(), default_sampling_, gpu_devices(), this);
  if (dialog.exec() == QDialog::Accepted) applySettings();
}

void MainWindow::editSessionSettings() {
  if (generating_) return;
  // Without a model the dialog has the system prompt alone: sampling starts from a family's.
  const QString family = model_ready_ ? model_family_ : QString();
  SessionSettingsDialog dialog(current_.title, current_.system_prompt, family,
                               load_sampling(settings_, family, default_sampling_), current_.sampling, this);
  dialog.setObjectName(QStringLiteral("sessionSettingsDialog"));
  if (dialog.exec() != QDialog::Accepted) return;
  if (model_ready_ && dialog.sampling() != current_.sampling) {
    current_.sampling = dialog.sampling();
    sessions_.setSampling(current_.id, current_.sampling);
  }
  setSystemPrompt(dialog.systemPrompt());
}

void MainWindow::setSystemPrompt(const QString& prompt) {
  if (generating_ || prompt == current_.system_prompt) return;
  current_.system_prompt = prompt;
  sessions_.setSystemPrompt(current_.id, current_.system_prompt);
  renderTranscript();
  if (current_.entries.isEmpty()) return;
  // The system prompt opens the state: what was computed after the old one cannot go on.
  read_again_.insert(current_.id);
  if (engine_holds_.session == current_.id) engine_holds_ = {};
  status_panel_->showMessage(tr("New system prompt: the next question reads the conversation again."), 10000);
}

void MainWindow::applySettings() {
  conversation_panel_->setEnterSends(enter_sends_setting(settings_));
  refreshContextFigure();
  refreshAttachments();
}

std::int64_t MainWindow::contextLimit() const {
  const std::int64_t chosen = context_setting(settings_);
  return chosen > 0 ? std::min(chosen, model_info_.max_context) : model_info_.max_context;
}

// ---- documents ----

void MainWindow::openDocument(const Attachment& document, qsizetype position) {
  if (!document_viewer_->isVisible()) {
    document_viewer_->setVisible(true);
    // Room for the document beside the conversation.
    QList<int> sizes = splitter_->sizes();
    const int shared = sizes[1] + sizes[2];
    sizes[1] = shared / 2;
    sizes[2] = shared - sizes[1];
    splitter_->setSizes(sizes);
  }
  document_viewer_->open(document, position);
}

void MainWindow::showInDocument(qsizetype entry) {
  if (entry < 0 || entry >= current_.entries.size()) return;
  // The documents sent up to this answer: what the model had read when it wrote it.
  QList<Attachment> documents;
  for (qsizetype i = 0; i < entry; ++i) documents += current_.entries[i].documents;
  const AnswerSources found = find_answer_sources(current_.entries[entry].text, documents);
  if (!documents.isEmpty()) openDocument(found.sources.isEmpty() ? documents.front() : documents[found.sources.front().document]);
  else document_viewer_->setVisible(true);
  document_viewer_->showSources(documents, found);
  status_panel_->showMessage(found.sources.isEmpty()
                                 ? tr("Not found: no run of %1 or more words of this answer occurs in its documents.")
                                       .arg(kMinimumWords)
                                 : found.sources.size() == 1
                                 ? tr("Found %1 words of the answer in one place.").arg(QLocale().toString(found.words))
                                 : tr("Found %1 words of the answer in %2 places.")
                                       .arg(QLocale().toString(found.words), QLocale().toString(found.sources.size())),
                             10000);
}

QString MainWindow::memoryText() const {
  // Every GPU's memory (free where known: on the one the engine runs on) as the engine thread
  // last measured it, while a model runs on them; then the host's.
  QStringList parts;
  const bool model_on_gpu = model_ready_ && model_info_.backend == BackendKind::Cuda;
  for (const GpuDevice& gpu : model_on_gpu ? gpus_ : std::vector<GpuDevice>{})
    parts << (gpu.free_bytes ? tr("GPU %1: %2 free of %3")
                                   .arg(gpu.index)
                                   .arg(format_bytes(*gpu.free_bytes), format_bytes(gpu.total_bytes))
                             : tr("GPU %1: %2").arg(gpu.index).arg(format_bytes(gpu.total_bytes)));
  if (parts.isEmpty()) parts << tr("no GPU");
  return tr("%1 · host memory: %2 available").arg(parts.join(QStringLiteral(" · ")), format_bytes(available_host_memory()));
}

void MainWindow::refreshContextFigure() {
  // A server's context is its own: nothing here counts against it.
  if (!model_ready_ || !endpoint_.isEmpty()) {
    status_panel_->clearContext();
    return;
  }
  // The engine's figure belongs to the session it holds; another session starts from nothing.
  status_panel_->showContext(engine_holds_.session == shownSession().id ? engine_tokens_ : 0, contextLimit());
}

// ---- conversation ----

void MainWindow::send() {
  const QString question = conversation_panel_->input().trimmed();
  if (question.isEmpty() || generating_ || !model_ready_ || readingDocuments()) return;
  // Refused at once, before anything is read or renamed: documents that cannot fit the context
  // (a server's is its own).
  if (endpoint_.isEmpty() && documents_panel_->documentTokens() >= contextLimit()) {
    showError(tr("The documents (%1 tokens) do not fit the model's context of %2 tokens. Remove one to ask.")
                  .arg(format_count(documents_panel_->documentTokens()), format_count(contextLimit())));
    return;
  }
  const auto pending = pending_documents_.find(current_.id);
  ChatEntry user{ChatEntry::Role::User, question, {},
                 pending == pending_documents_.end() ? QList<Attachment>{} : pending->second, pending_images_[current_.id]};
  if (pending != pending_documents_.end()) pending_documents_.erase(pending);
  pending_images_.erase(current_.id);
  qsizetype keep = current_.entries.size();
  if (const std::optional<qsizetype> editing = conversation_panel_->editing(); editing && *editing < keep) {
    // The edited message keeps the documents and images it was sent with, plus any attached since.
    keep = *editing;
    user.documents = current_.entries[keep].documents + user.documents;
    user.images = current_.entries[keep].images + user.images;
  }
  // What was typed before the edit comes back into the input box; a new question leaves it empty.
  if (conversation_panel_->editing())
    conversation_panel_->endEdit();
  else
    conversation_panel_->setInput({});
  ask(keep, user, false);
}

void MainWindow::regenerate() {
  if (generating_ || !model_ready_) return;
  for (qsizetype i = current_.entries.size() - 1; i >= 0; --i) {
    if (current_.entries[i].role != ChatEntry::Role::User) continue;
    ask(i, current_.entries[i], true);
    return;
  }
}

void MainWindow::editMessage(qsizetype entry) {
  if (generating_ || entry < 0 || entry >= current_.entries.size() ||
      current_.entries[entry].role != ChatEntry::Role::User)
    return;
  // Nothing comes before the first question: its documents are read again, which takes long
  // enough for a long one to be worth saying.
  qint64 tokens = 0;
  if (entry == 0)
    for (const Attachment& document : current_.entries[entry].documents) tokens += document.tokens;
  conversation_panel_->beginEdit(
      entry, current_.entries[entry].text,
      tokens > 0 ? tr("Sending it reads its documents again (%1 tokens).").arg(format_count(tokens)) : QString());
}

void MainWindow::ask(qsizetype keep, const ChatEntry& user, bool regenerated) {
  ++restore_ticket_;  // a restore under way is superseded by the one this turn asks for
  banner_->hide();    // what it said is about the turn before
  turn_ = Turn{keep, current_.entries.mid(keep), false, regenerated,
               current_.entries.isEmpty() && current_.title == untitled() ? user.text.simplified().left(40) : QString()};
  current_.entries.resize(keep);
  current_.entries.append(user);
  answer_ = ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}};
  refreshAttachments();
  renderTranscript();
  setGenerating(true);
  status_panel_->showMessage(tr("Reading the prompt…"));
  worker_->clearStop();

  const Turns conversation = to_turns(current_.entries);
  // The session's own sampling, else its model family's.
  const SamplingSettings sampling = current_.sampling.value_or(load_sampling(settings_, model_family_, default_sampling_));
  if (keep == 0 || !endpoint_.isEmpty() || read_again_.count(current_.id) != 0 ||
      (engine_holds_.session == current_.id && engine_holds_.entries >= 0 && engine_holds_.entries <= keep)) {
    emit generateRequested(conversation, current_.system_prompt, sampling, current_.id);
    return;
  }
  // The engine holds another conversation or a later point of this one: start from the state
  // saved at the branch point, if there is one, rather than reading everything again.
  sessions_.loadState(current_.id, keep, model_info_, this,
                      [this, conversation, sampling, id = current_.id, system = current_.system_prompt](const StateLoad& load) {
                        adoptLoadedState(load);
                        emit generateRequested(conversation, system, sampling, id);
                      });
}

void MainWindow::adoptLoadedState(const StateLoad& load) {
  if (load.state) {
    adopting_ = {current_.id, load.entries};
    state_read_seconds_ = load.seconds;
    emit adoptStateRequested(load.state, to_turns(current_.entries.mid(0, load.entries)), current_.system_prompt,
                             current_.id);
  } else if (!load.refused.isEmpty()) {
    adopting_ = {current_.id, -1};
    onStateRefused(load.refused);
  }
}

void MainWindow::stop() { worker_->requestStop(); }

void MainWindow::onTextPiece(const QString& reasoning, const QString& answer) {
  status_panel_->hideProgress();  // the prompt is read once the answer streams
  if (turn_ && !turn_->stored) {
    // The answer has begun: the question (and the branch it starts, if any) is kept, and a new
    // session is named after it.
    if (!turn_->replaced.isEmpty()) sessions_.branch(current_.id, turn_->keep);
    sessions_.append(current_.id, current_.entries.back());
    turn_->stored = true;
    if (!turn_->title.isEmpty()) renameSession(current_.id, turn_->title);
  }
  if (answer_->text.isEmpty() && answer_->reasoning.isEmpty()) status_panel_->showMessage(tr("Writing the answer…"));
  answer_->reasoning += reasoning;
  answer_->text += answer;
  if (viewing_) return;  // streamed into a session not in view
  if (!reasoning.isEmpty()) conversation_panel_->appendStreamed(reasoning, true);
  if (!answer.isEmpty()) conversation_panel_->appendStreamed(answer, false);
}

void MainWindow::onGenerationFinished(const GenerationStats& stats, const EngineStatePtr& state) {
  status_panel_->hideProgress();
  const bool wrote = stats.generated_tokens > 0;
  status_panel_->showAnswerFigures(stats.decode_tokens_per_second, wrote ? stats.seconds_to_first_token : -1);
  status_panel_->refreshMemory();
  QString summary;
  if (!stats.stopped)
    summary = tr("%1 tokens generated.").arg(format_count(stats.generated_tokens));
  else if (wrote)
    summary = tr("Stopped after %1 tokens.").arg(format_count(stats.generated_tokens));
  else
    summary = tr("Stopped while reading the prompt; sending it again goes on from there.");
  // A read stopped part way says how far it came.
  const qint64 read = wrote || !stats.stopped ? stats.prompt_tokens : stats.context_used - stats.reused_tokens;
  summary += QLatin1Char(' ') + (read < stats.prompt_tokens ? tr("%1 of %2 prompt tokens read")
                                                                  .arg(format_count(read), format_count(stats.prompt_tokens))
                                                            : tr("%1 prompt tokens read").arg(format_count(read)));
  if (stats.reused_tokens > 0)
    summary += QLatin1Char(' ') + tr("(%1 kept from the session state)").arg(format_count(stats.reused_tokens));
  status_panel_->showMessage(summary + QLatin1Char('.'), 10000);
  keepAnswer();
  engine_tokens_ = stats.context_used;
  if (state) {
    // Saved with the answer, so that reopening the session (or branching here) reads it back.
    sessions_.saveState(current_.id, current_.entries.size(), state);
    engine_holds_ = {current_.id, current_.entries.size()};
    read_again_.erase(current_.id);  // its newest state begins with the new one
  } else {
    engine_holds_ = {current_.id, -1};
  }
  refreshContextFigure();
  showViewedSession();
  emit answerFinished();
}

void MainWindow::onGenerationFailed(const QString& message) {
  status_panel_->hideProgress();
  status_panel_->clearMessage();
  engine_holds_ = {};
  showError(keepAnswer() ? tr("The answer failed: %1\nYour question is back in the input box.").arg(message)
                        : tr("The answer failed: %1").arg(message));
  showViewedSession();
  emit answerFinished();
}

bool MainWindow::keepAnswer() {
  // What was written before a stop or failure stays; an answer that never began does not, and
  // neither does its question, which goes back where it came from.
  bool question_returned = false;
  if (turn_ && !turn_->stored) {
    question_returned = undoTurn();
    // The question is back in the input box: its session stays in view.
    if (question_returned) viewing_.reset();
  } else if (!answer_->text.isEmpty() || !answer_->reasoning.isEmpty()) {
    sessions_.append(current_.id, *answer_);
    current_.entries.append(*answer_);
  }
  turn_.reset();
  answer_.reset();
  refreshAttachments();
  renderTranscript();
  setGenerating(false);
  return question_returned;
}

bool MainWindow::undoTurn() {
  const ChatEntry question = current_.entries.takeLast();
  current_.entries.append(turn_->replaced);
  // A regenerated question is the stored one: with the old turn back, nothing is lost.
  if (turn_->regenerated) return false;
  const ChatEntry* original = turn_->replaced.isEmpty() ? nullptr : &turn_->replaced.front();
  const QString typed = conversation_panel_->input();
  // An edit goes back into the input box still editing that message (what was typed before it
  // stays kept); a new question goes before what was typed since.
  if (original != nullptr)
    conversation_panel_->beginEdit(turn_->keep, question.text);
  else
    conversation_panel_->setInput(typed.isEmpty() ? question.text : question.text + QStringLiteral("\n\n") + typed);
  // What was attached for this question (beyond an edited message's own) is pending again.
  QList<Attachment>& documents = pending_documents_[current_.id];
  documents = question.documents.mid(original ? original->documents.size() : 0) + documents;
  QStringList& images = pending_images_[current_.id];
  images = question.images.mid(original ? original->images.size() : 0) + images;
  return true;
}

void MainWindow::restoreState() {
  const quint64 ticket = ++restore_ticket_;  // a read still under way is for a session no longer shown
  if (!model_ready_ || !endpoint_.isEmpty() || generating_ || current_.entries.isEmpty() ||
      engine_holds_.session == current_.id || read_again_.count(current_.id) != 0)
    return;
  status_panel_->showMessage(tr("Restoring the session's state…"));
  sessions_.loadState(current_.id, current_.entries.size(), model_info_, this, [this, ticket](const StateLoad& load) {
    if (ticket != restore_ticket_) return;  // another session was opened, or a question sent, since
    status_panel_->clearMessage();
    adoptLoadedState(load);
  });
}

void MainWindow::onStateAdopted(qint64 tokens, double seconds) {
  engine_holds_ = adopting_;
  engine_tokens_ = tokens;
  const QString message = tr("Restored %1 tokens from cache in %2 s.")
                              .arg(format_count(tokens), QLocale().toString(state_read_seconds_ + seconds, 'f', 2));
  status_panel_->showMessage(message, 10000);
  refreshContextFigure();
  emit stateRestored(message);
}

void MainWindow::onStateRefused(const QString& message) {
  engine_holds_ = {};
  read_again_.insert(adopting_.session);
  showError(tr("The saved state of this conversation could not be used (%1). Its messages are kept; the next "
               "question reads the conversation again.")
                .arg(message));
}

void MainWindow::renderTranscript() {
  const ChatSession& shown = shownSession();
  std::map<qsizetype, ConversationPanel::Branches> branches;
  for (qsizetype i = 0; i < shown.entries.size(); ++i)
    if (const SiblingPlace place = sessions_.siblings(shown.id, i); place.count > 1)
      branches[i] = {place.index, place.count};
  conversation_panel_->setSystemPrompt(shown.system_prompt);
  // A session looked at while the engine works is only read: no links that start a turn.
  conversation_panel_->showConversation(shown.entries, viewing_ ? std::nullopt : answer_, !answer_ && !viewing_, branches);
}

// ---- sessions ----

void MainWindow::newSession() {
  if (generating_) return;
  // An unused "New chat" is reused rather than a second one made.
  std::optional<ChatSession> empty;
  if (current_.id != 0 && current_.entries.isEmpty() && current_.title == untitled()) empty = current_;
  for (const ChatSession& session : empty ? QList<ChatSession>{} : sessions_.list()) {
    if (session.id == deleting_ || session.title != untitled()) continue;
    if (const std::optional<ChatSession> loaded = sessions_.load(session.id); loaded && loaded->entries.isEmpty()) {
      empty = loaded;
      break;
    }
  }
  showSession(empty ? *empty : sessions_.create(untitled()));
  conversation_panel_->focusInput();
}

void MainWindow::selectSession(qint64 id) {
  if (id == shownSession().id) return;
  if (!generating_) {
    if (const std::optional<ChatSession> session = sessions_.load(id)) showSession(*session);
    return;
  }
  // The engine works for the current session: the other one is looked at meanwhile.
  if (id == current_.id) {
    viewing_.reset();
  } else if (std::optional<ChatSession> session = sessions_.load(id)) {
    viewing_ = std::move(session);
  } else {
    return;
  }
  conversation_panel_->resetView();
  settings_.setValue(QStringLiteral("session/last"), id);
  refreshSessionList();
  refreshAttachments();
  renderTranscript();
  refreshContextFigure();
}

void MainWindow::showViewedSession() {
  if (!viewing_) return;
  const ChatSession viewed = *viewing_;
  viewing_.reset();
  showSession(viewed);
}

void MainWindow::showSession(const ChatSession& session) {
  const bool other = session.id != current_.id;
  current_ = session;
  settings_.setValue(QStringLiteral("session/last"), current_.id);  // a launch without arguments opens it again
  if (other) {
    conversation_panel_->resetView();
    conversation_panel_->endEdit();  // an edit belongs to the session it began in
    banner_->hide();                 // what it said was about the session left
    status_panel_->clearAnswerFigures();
  }
  refreshSessionList();
  refreshAttachments();
  renderTranscript();
  refreshContextFigure();
  restoreState();
}

void MainWindow::showBranch(qsizetype entry, int index) {
  if (generating_) return;
  if (const std::optional<ChatSession> session = sessions_.showSibling(current_.id, entry, index)) {
    // The engine's state is of the branch shown before: the newest checkpoint of this one is read.
    if (engine_holds_.session == current_.id) engine_holds_ = {};
    showSession(*session);
  }
}

void MainWindow::refreshSessionList() {
  QList<ChatSession> shown;
  for (const ChatSession& session : sessions_.list())
    if (session.id != deleting_) shown.append(session);
  session_panel_->setSessions(shown, shownSession().id);
}

void MainWindow::renameSession(qint64 id, const QString& title) {
  if (title.trimmed().isEmpty()) {
    refreshSessionList();
    return;
  }
  if (viewing_ && id == viewing_->id) viewing_->title = title;
  if (id == current_.id) {
    if (title == current_.title) return;
    current_.title = title;
  }
  sessions_.rename(id, title);
  refreshSessionList();
}

void MainWindow::deleteCurrentSession() {
  if (generating_) return;
  finishDelete();  // one undo at a time: an earlier deletion becomes final
  deleting_ = current_.id;
  undo_label_->setText(tr("Deleted “%1”.").arg(current_.title));
  undo_bar_->setVisible(true);
  undo_timer_->start();
  pending_documents_.erase(current_.id);
  current_ = {};
  engine_holds_ = {};
  qint64 next = 0;
  for (const ChatSession& session : sessions_.list())
    if (session.id != deleting_ && next == 0) next = session.id;
  if (next == 0)
    newSession();
  else
    selectSession(next);
}

void MainWindow::undoDelete() {
  if (!deleting_) return;
  const qint64 id = *deleting_;
  deleting_.reset();
  undo_timer_->stop();
  undo_bar_->setVisible(false);
  selectSession(id);
  refreshSessionList();
}

void MainWindow::finishDelete() {
  if (!deleting_) return;
  sessions_.remove(*deleting_);
  deleting_.reset();
  undo_timer_->stop();
  undo_bar_->setVisible(false);
}

void MainWindow::runSearch(const QString& query) {
  const quint64 ticket = ++search_ticket_;
  last_search_ = query;
  if (query.isEmpty()) return;
  sessions_.search(query, this, [this, ticket](const QList<MessageHit>& hits) {
    if (ticket != search_ticket_) return;  // the query changed since
    std::map<qint64, QString> titles;
    for (const ChatSession& session : sessions_.list())
      if (session.id != deleting_) titles[session.id] = session.title;
    session_panel_->setSearchResults(hits, titles);
  });
}

void MainWindow::showMessage(qint64 session, qsizetype entry, qsizetype message) {
  if (session == 0) return;
  selectSession(session);
  if (session != shownSession().id) return;
  // Another branch of the session the engine works for waits until it is done.
  if (entry < 0 && message >= 0 && !(generating_ && session == current_.id)) {
    if (const auto shown = sessions_.showBranchOf(session, message)) {
      if (viewing_) {
        viewing_ = shown->first;
        renderTranscript();
      } else {
        if (engine_holds_.session == current_.id) engine_holds_ = {};
        showSession(shown->first);
      }
      entry = shown->second;
    }
  }
  conversation_panel_->showEntry(entry, last_search_);
}

// ---- attachments ----

void MainWindow::chooseDocuments() {
  const QStringList paths = QFileDialog::getOpenFileNames(this, tr("Attach documents"), QString(),
                                                          tr("Documents (*.txt *.md *.pdf *.*)"));
  attachFiles(paths);
}

void MainWindow::startSession(const QStringList& documents, const QString& question) {
  connect(this, &MainWindow::modelReady, this, [this, documents, question] {
    newSession();
    question_after_documents_ = question;
    attachFiles(documents);
    askQuestionAfterDocuments();
  }, Qt::SingleShotConnection);
}

void MainWindow::askQuestionAfterDocuments() {
  if (question_after_documents_.isEmpty()) return;
  for (const auto& [path, session_id] : reading_documents_)
    if (session_id == current_.id) return;
  conversation_panel_->setInput(question_after_documents_);
  question_after_documents_.clear();
  send();
}

bool MainWindow::readingDocuments() const { return !reading_documents_.empty(); }

void MainWindow::attachFiles(const QStringList& paths) {
  for (const QString& path : paths) {
    if (!QImageReader::imageFormat(path).isEmpty()) {
      attachImage(path);
      continue;
    }
    reading_documents_[path] = shownSession().id;
    if (!generating_) worker_->clearStop();
    emit readDocumentRequested(path);
  }
  refreshAttachments();
  setGenerating(generating_);  // Stop ends a document's count
}

void MainWindow::onDocumentReady(const QString& path, const QString& text, const QList<qint64>& pageOffsets,
                                 qint64 tokens) {
  const auto reading = reading_documents_.find(path);
  if (reading == reading_documents_.end()) return;
  const qint64 session_id = reading->second;
  reading_documents_.erase(reading);
  if (!readingDocuments()) status_panel_->hideProgress();
  pending_documents_[session_id].append({path, text, pageOffsets, tokens});
  refreshAttachments();
  setGenerating(generating_);
  emit documentAttached(path);
  askQuestionAfterDocuments();
}

void MainWindow::onDocumentFailed(const QString& path, const QString& message) {
  const auto reading = reading_documents_.find(path);
  const bool here = reading != reading_documents_.end() && reading->second == shownSession().id;
  if (reading != reading_documents_.end()) reading_documents_.erase(reading);
  if (!readingDocuments()) status_panel_->hideProgress();
  refreshAttachments();
  setGenerating(generating_);
  // An error about another session's document is not shown over this one.
  if (here) showError(tr("Could not attach %1: %2").arg(QFileInfo(path).fileName(), message));
  // A question about the documents waits in the input box rather than going without one.
  if (!question_after_documents_.isEmpty()) conversation_panel_->setInput(question_after_documents_);
  question_after_documents_.clear();
}

void MainWindow::attachImage(const QString& path) {
  reading_documents_[path] = shownSession().id;
  documents_panel_->decodeThumbnail(path, [this, path](const QString& error) {
    const auto reading = reading_documents_.find(path);
    if (reading == reading_documents_.end()) return;
    const qint64 session_id = reading->second;
    reading_documents_.erase(reading);
    setGenerating(generating_);
    if (!error.isEmpty()) {
      refreshAttachments();
      showError(tr("Could not attach %1: %2").arg(QFileInfo(path).fileName(), error));
      return;
    }
    pending_images_[session_id].append(path);
    refreshAttachments();
    emit documentAttached(path);
  });
}

void MainWindow::removeAttachment(bool image, qsizetype index) {
  if (image)
    pending_images_[shownSession().id].removeAt(index);
  else
    pending_documents_[shownSession().id].removeAt(index);
  refreshAttachments();
}

void MainWindow::refreshAttachments() {
  const ChatSession& shown = shownSession();
  DocumentsPanel::Contents contents;
  contents.sent = shown.entries;
  if (const auto pending = pending_documents_.find(shown.id); pending != pending_documents_.end())
    contents.pending = pending->second;
  if (const auto images = pending_images_.find(shown.id); images != pending_images_.end())
    contents.pending_images = images->second;
  for (const auto& [path, session_id] : reading_documents_)
    if (session_id == shown.id) contents.reading.append(path);
  contents.context_tokens = model_ready_ ? contextLimit() : 0;
  documents_panel_->setContents(contents);
}

void MainWindow::chooseExportFile() {
  const QString path = QFileDialog::getSaveFileName(this, tr("Export conversation"), shownSession().title + QStringLiteral(".md"),
                                                    tr("Markdown (*.md);;JSON (*.json)"));
  if (!path.isEmpty()) exportConversation(path);
}

void MainWindow::exportConversation(const QString& path) {
  try {
    export_conversation(shownSession(), path);
    status_panel_->showMessage(tr("Conversation exported to %1").arg(path), 5000);
  } catch (const std::exception& e) {
    showError(tr("Could not export the conversation: %1").arg(QString::fromUtf8(e.what())));
  }
}

void MainWindow::dragEnterEvent(QDragEnterEvent* event) {
  if (event->mimeData()->hasUrls()) event->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* event) {
  QStringList paths;
  for (const QUrl& url : event->mimeData()->urls())
    if (url.isLocalFile()) paths.append(url.toLocalFile());
  attachFiles(paths);
  event->acceptProposedAction();
}

// ---- state ----

void MainWindow::setGenerating(bool generating) {
  generating_ = generating;
  conversation_panel_->setBusy(!generating_ && model_ready_, generating_ || readingDocuments());
  // Sessions can still be looked at, renamed and searched meanwhile.
  session_panel_->setBusy(generating_);
}

void MainWindow::showError(const QString& message) {
  banner_->showError(message);
  emit errorShown(message);
}

}  // namespace lightdesk::gui
