#include "main_window.h"

#include <QAction>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QIcon>
#include <QImageReader>
#include <QPixmap>
#include <QPointer>
#include <QThreadPool>
#include <QHBoxLayout>
#include <QKeyEvent>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QLocale>
#include <QMenuBar>
#include <QMimeData>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QScrollBar>
#include <QSettings>
#include <QSplitter>
#include <QStatusBar>
#include <QTextBrowser>
#include <QTextBlock>
#include <QTextCursor>
#include <QTextDocumentFragment>
#include <QTimer>
#include <QUrl>
#include <QVBoxLayout>

#include "conversation_export.h"
#include "lightdesk/text.h"
#include "settings_dialog.h"

namespace lightdesk::gui {
namespace {

constexpr int kSessionIdRole = Qt::UserRole;
constexpr int kEntryRole = Qt::UserRole + 1;  // a search result's entry index
// An attachment item not sent yet: "document" or "image", and its index in that pending list.
constexpr int kAttachmentKindRole = Qt::UserRole;
constexpr int kAttachmentIndexRole = Qt::UserRole + 1;

QString format_bytes(std::uint64_t bytes) {
  return QLocale().formattedDataSize(static_cast<qint64>(bytes), 1, QLocale::DataSizeTraditionalFormat);
}

// The title of a session until the user names it or sends its first message.
QString untitled() { return MainWindow::tr("New chat"); }

QString paragraph(const QString& text, const QString& style = {}) {
  return QStringLiteral("<p style=\"white-space: pre-wrap; %1\">%2</p>").arg(style, text.toHtmlEscaped());
}

// The user's question with the documents sent along, in the engine's document-question layout.
QString prompt_with_documents(const QString& question, const QList<Attachment>& attachments) {
  if (attachments.isEmpty()) return question;
  std::vector<Document> documents;
  for (const Attachment& attachment : attachments) {
    Document document{attachment.path.toStdString(), attachment.page_offsets.isEmpty() ? "text" : "pdf",
                      attachment.text.toStdString(), {}};
    int page = 0;
    for (const qint64 offset : attachment.page_offsets)
      document.anchors.push_back({static_cast<std::size_t>(offset), ++page, 1});
    documents.push_back(std::move(document));
  }
  return QString::fromStdString(document_question_text(documents, question.toStdString()));
}

// The conversation as the engine reads it: each question with the documents sent along.
QList<PromptMessage> prompt_conversation(const QList<ChatEntry>& entries) {
  QList<PromptMessage> conversation;
  for (const ChatEntry& entry : entries) {
    const bool from_user = entry.role == ChatEntry::Role::User;
    conversation.append({from_user, from_user ? prompt_with_documents(entry.text, entry.documents) : entry.text,
                         entry.images});
  }
  return conversation;
}

}  // namespace

MainWindow::MainWindow(SessionRepository& sessions, QSettings& settings, QWidget* parent)
    : QMainWindow(parent), sessions_(sessions), settings_(settings), worker_(new EngineWorker(gpus_setting(settings))) {
  setWindowTitle(tr("Lightdesk"));
  setAcceptDrops(true);
  buildWidgets();
  buildMenus();
  connectEngine();

  const QList<ChatSession> existing = sessions_.list();
  if (existing.isEmpty())
    newSession();
  else
    selectSession(existing.front().id);
  setGenerating(false);
}

QString MainWindow::lastModelDirectory() const { return settings_.value(QStringLiteral("model/directory")).toString(); }

MainWindow::~MainWindow() {
  finishDelete();
  worker_->requestStop();
  engine_thread_.quit();
  engine_thread_.wait();
}

void MainWindow::buildWidgets() {
  auto* open_model_button = new QPushButton(tr("Open model…"));
  connect(open_model_button, &QPushButton::clicked, this, &MainWindow::chooseModelDirectory);
  model_label_ = new QLabel(tr("No model loaded. Choose a model directory to start."));
  model_label_->setObjectName(QStringLiteral("modelLabel"));
  model_label_->setWordWrap(true);
  model_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  auto* model_row = new QHBoxLayout;
  model_row->addWidget(open_model_button);
  model_row->addWidget(model_label_, 1);

  message_label_ = new QLabel;
  message_label_->setObjectName(QStringLiteral("messageLabel"));
  message_label_->setWordWrap(true);
  message_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  message_label_->setVisible(false);

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

  // Sessions.
  search_box_ = new QLineEdit;
  search_box_->setObjectName(QStringLiteral("searchBox"));
  search_box_->setPlaceholderText(tr("Search messages (Ctrl+F)"));
  search_box_->setClearButtonEnabled(true);
  // One query once typing pauses, not one per keystroke queued behind the store's writes;
  // clearing the box closes the results at once.
  auto* search_pause = new QTimer(this);
  search_pause->setSingleShot(true);
  search_pause->setInterval(200);
  connect(search_box_, &QLineEdit::textChanged, this, [this, search_pause](const QString& text) {
    if (text.trimmed().isEmpty()) {
      search_pause->stop();
      runSearch();
    } else {
      search_pause->start();
    }
  });
  connect(search_pause, &QTimer::timeout, this, &MainWindow::runSearch);
  search_results_ = new QListWidget;
  search_results_->setObjectName(QStringLiteral("searchResults"));
  search_results_->setVisible(false);
  connect(search_results_, &QListWidget::itemClicked, this, [this](QListWidgetItem* item) {
    showMessage(item->data(kSessionIdRole).toLongLong(), item->data(kEntryRole).toLongLong());
  });
  session_list_ = new QListWidget;
  session_list_->setObjectName(QStringLiteral("sessionList"));
  session_list_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  connect(session_list_, &QListWidget::itemClicked, this,
          [this](QListWidgetItem* item) { selectSession(item->data(kSessionIdRole).toLongLong()); });
  connect(session_list_, &QListWidget::itemChanged, this, [this](QListWidgetItem* item) {
    if (item->data(kSessionIdRole).toLongLong() != current_.id || item->text() == current_.title) return;
    current_.title = item->text();
    sessions_.rename(current_.id, current_.title);
  });
  auto* new_session_button = new QPushButton(tr("New"));
  auto* rename_session_button = new QPushButton(tr("Rename"));
  auto* delete_session_button = new QPushButton(tr("Delete"));
  connect(new_session_button, &QPushButton::clicked, this, &MainWindow::newSession);
  connect(rename_session_button, &QPushButton::clicked, this, &MainWindow::renameCurrentSession);
  connect(delete_session_button, &QPushButton::clicked, this, &MainWindow::deleteCurrentSession);
  auto* session_buttons = new QHBoxLayout;
  session_buttons->addWidget(new_session_button);
  session_buttons->addWidget(rename_session_button);
  session_buttons->addWidget(delete_session_button);
  auto* session_pane = new QWidget;
  auto* session_layout = new QVBoxLayout(session_pane);
  session_layout->addWidget(new QLabel(tr("Sessions")));
  session_layout->addWidget(search_box_);
  session_layout->addWidget(search_results_, 1);
  session_layout->addWidget(session_list_, 1);
  session_layout->addLayout(session_buttons);

  // Conversation.
  transcript_ = new QTextBrowser;
  transcript_->setObjectName(QStringLiteral("transcript"));
  transcript_->setOpenLinks(false);
  connect(transcript_, &QTextBrowser::anchorClicked, this, &MainWindow::onTranscriptLink);
  input_ = new QPlainTextEdit;
  input_->setObjectName(QStringLiteral("input"));
  input_->setPlaceholderText(tr("Ask about your documents… (Ctrl+Enter sends)"));
  input_->setMaximumHeight(input_->fontMetrics().lineSpacing() * 5);
  input_->installEventFilter(this);
  send_button_ = new QPushButton(tr("Send"));
  send_button_->setObjectName(QStringLiteral("sendButton"));
  send_button_->setToolTip(tr("Send (Ctrl+Enter)"));
  stop_button_ = new QPushButton(tr("Stop"));
  stop_button_->setObjectName(QStringLiteral("stopButton"));
  connect(send_button_, &QPushButton::clicked, this, &MainWindow::send);
  connect(stop_button_, &QPushButton::clicked, this, &MainWindow::stop);
  auto* input_buttons = new QVBoxLayout;
  input_buttons->addWidget(send_button_);
  input_buttons->addWidget(stop_button_);
  edit_bar_ = new QLabel(tr("Editing an earlier message: sending it continues the conversation from there "
                            "(the old branch stays stored). Esc cancels."));
  edit_bar_->setObjectName(QStringLiteral("editBar"));
  edit_bar_->setWordWrap(true);
  edit_bar_->setStyleSheet(QStringLiteral("QLabel { background: #fff4ce; padding: 4px; }"));
  edit_bar_->setVisible(false);
  auto* input_row = new QHBoxLayout;
  input_row->addWidget(input_, 1);
  input_row->addLayout(input_buttons);
  auto* conversation_pane = new QWidget;
  auto* conversation_layout = new QVBoxLayout(conversation_pane);
  conversation_layout->addWidget(transcript_, 1);
  conversation_layout->addWidget(edit_bar_);
  conversation_layout->addLayout(input_row);

  // Attachments.
  attachment_list_ = new QListWidget;
  attachment_list_->setObjectName(QStringLiteral("attachmentList"));
  attachment_list_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  attachment_list_->setToolTip(tr("Drop documents here or anywhere on the window"));
  auto* attach_button = new QPushButton(tr("Attach…"));
  auto* remove_attachment_button = new QPushButton(tr("Remove"));
  connect(attach_button, &QPushButton::clicked, this, &MainWindow::chooseDocuments);
  connect(remove_attachment_button, &QPushButton::clicked, this, &MainWindow::removeSelectedAttachment);
  auto* attachment_buttons = new QHBoxLayout;
  attachment_buttons->addWidget(attach_button);
  attachment_buttons->addWidget(remove_attachment_button);
  auto* attachment_pane = new QWidget;
  auto* attachment_layout = new QVBoxLayout(attachment_pane);
  attachment_layout->addWidget(new QLabel(tr("Documents")));
  attachment_layout->addWidget(attachment_list_, 1);
  attachment_layout->addLayout(attachment_buttons);

  auto* splitter = new QSplitter;
  splitter->addWidget(session_pane);
  splitter->addWidget(conversation_pane);
  splitter->addWidget(attachment_pane);
  splitter->setStretchFactor(1, 1);
  splitter->setSizes({200, 600, 220});

  auto* central = new QWidget;
  auto* layout = new QVBoxLayout(central);
  layout->addLayout(model_row);
  layout->addWidget(message_label_);
  layout->addWidget(undo_bar_);
  layout->addWidget(splitter, 1);
  setCentralWidget(central);

  progress_bar_ = new QProgressBar;
  progress_bar_->setObjectName(QStringLiteral("progressBar"));
  progress_bar_->setVisible(false);
  // Wide enough for the longest progress text on one line, whatever the font size.
  progress_bar_->setMinimumWidth(progress_bar_->fontMetrics().horizontalAdvance(
                                     tr("Reading the prompt: %1 of %2 tokens, %3 tokens/s, %4 s left")
                                         .arg(QStringLiteral("1000000"), QStringLiteral("1000000"),
                                              QStringLiteral("10000"), QStringLiteral("1000"))) +
                                 progress_bar_->fontMetrics().averageCharWidth() * 4);
  speed_label_ = new QLabel;
  speed_label_->setObjectName(QStringLiteral("speedLabel"));
  first_token_label_ = new QLabel;
  first_token_label_->setObjectName(QStringLiteral("firstTokenLabel"));
  context_label_ = new QLabel;
  context_label_->setObjectName(QStringLiteral("contextLabel"));
  statusBar()->addWidget(progress_bar_);
  statusBar()->addPermanentWidget(speed_label_);
  statusBar()->addPermanentWidget(first_token_label_);
  statusBar()->addPermanentWidget(context_label_);
  memory_label_ = new QLabel;
  memory_label_->setObjectName(QStringLiteral("memoryLabel"));
  statusBar()->addPermanentWidget(memory_label_);
  refreshMemoryLabel();
}

void MainWindow::buildMenus() {
  QMenu* file_menu = menuBar()->addMenu(tr("&File"));
  file_menu->addAction(tr("&Open model…"), QKeySequence::Open, this, &MainWindow::chooseModelDirectory);
  file_menu->addAction(tr("&Attach documents…"), this, &MainWindow::chooseDocuments);
  file_menu->addAction(tr("&Export conversation…"), this, &MainWindow::chooseExportFile);
  file_menu->addAction(tr("&Settings…"), QKeySequence::Preferences, this, &MainWindow::editSettings);
  file_menu->addSeparator();
  file_menu->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);
  QMenu* session_menu = menuBar()->addMenu(tr("&Session"));
  session_menu->addAction(tr("&New session"), QKeySequence::New, this, &MainWindow::newSession);
  session_menu->addAction(tr("&Rename"), QKeySequence(Qt::Key_F2), this, &MainWindow::renameCurrentSession);
  session_menu->addAction(tr("&Delete"), this, &MainWindow::deleteCurrentSession);
  session_menu->addAction(tr("Re&generate last answer"), QKeySequence(Qt::CTRL | Qt::Key_R), this,
                          &MainWindow::regenerate);
  session_menu->addAction(tr("&Search"), QKeySequence::Find, this, [this] {
    search_box_->setFocus();
    search_box_->selectAll();
  });
}

void MainWindow::connectEngine() {
  worker_->moveToThread(&engine_thread_);
  connect(&engine_thread_, &QThread::finished, worker_, &QObject::deleteLater);
  connect(this, &MainWindow::checkModelRequested, worker_, &EngineWorker::checkModel);
  connect(this, &MainWindow::loadModelRequested, worker_, &EngineWorker::loadModel);
  connect(this, &MainWindow::readDocumentRequested, worker_, &EngineWorker::readDocument);
  connect(this, &MainWindow::generateRequested, worker_, &EngineWorker::generate);
  connect(worker_, &EngineWorker::modelChecked, this, &MainWindow::onModelChecked);
  connect(worker_, &EngineWorker::loadProgress, this, [this](qint64 done, qint64 total) {
    progress_bar_->setVisible(true);
    // Megabytes keep the range within int.
    progress_bar_->setRange(0, static_cast<int>(total >> 20));
    progress_bar_->setValue(static_cast<int>(done >> 20));
    progress_bar_->setFormat(tr("Loading weights: %1 of %2")
                                 .arg(format_bytes(static_cast<std::uint64_t>(done)),
                                      format_bytes(static_cast<std::uint64_t>(total))));
  });
  connect(worker_, &EngineWorker::modelLoaded, this, &MainWindow::onModelLoaded);
  connect(worker_, &EngineWorker::gpuMemoryMeasured, this, &MainWindow::onGpuMemoryMeasured);
  connect(worker_, &EngineWorker::modelRejected, this, &MainWindow::onModelRejected);
  connect(worker_, &EngineWorker::modelFailed, this, &MainWindow::onModelFailed);
  connect(worker_, &EngineWorker::documentReady, this, &MainWindow::onDocumentReady);
  connect(worker_, &EngineWorker::documentFailed, this, [this](const QString& path, const QString& message) {
    reading_documents_.erase(path);
    refreshAttachments();
    showError(tr("Could not attach %1: %2").arg(QFileInfo(path).fileName(), message));
    // A question about the documents waits in the input box rather than going without one.
    if (!question_after_documents_.isEmpty()) input_->setPlainText(question_after_documents_);
    question_after_documents_.clear();
  });
  connect(worker_, &EngineWorker::prefillProgress, this,
          [this](qint64 done, qint64 total, double rate, double seconds_left) {
            progress_bar_->setVisible(true);
            progress_bar_->setRange(0, static_cast<int>(total));
            progress_bar_->setValue(static_cast<int>(done));
            progress_bar_->setFormat(tr("Reading the prompt: %1 of %2 tokens, %3 tokens/s, %4 s left")
                                         .arg(done)
                                         .arg(total)
                                         .arg(rate, 0, 'f', 0)
                                         .arg(seconds_left, 0, 'f', 0));
          });
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
  message_label_->setVisible(false);
  statusBar()->showMessage(tr("Checking %1…").arg(directory));
  emit checkModelRequested(directory, backend_setting(settings_));
}

void MainWindow::onModelChecked(const ModelCheck& check) {
  const std::uint64_t needed = check.weight_bytes + check.session_bytes;
  const QString needs = tr("%1: weights %2 + session memory %3 for %4 tokens of context = %5; %6 available in %7")
                            .arg(check.description, format_bytes(check.weight_bytes), format_bytes(check.session_bytes))
                            .arg(check.context_tokens)
                            .arg(format_bytes(needed), format_bytes(check.available_bytes), check.memory_place);
  statusBar()->clearMessage();
  if (!check.fits()) {
    showError((check.fitting_context > 0
                   ? tr("%1 does not fit in %2 at its full context. A context of %3 tokens would fit.")
                         .arg(check.directory, check.memory_place)
                         .arg(check.fitting_context)
                   : tr("%1 does not fit in %2: its weights alone need %3.")
                         .arg(check.directory, check.memory_place, format_bytes(check.weight_bytes))) +
              QLatin1Char('\n') + needs);
    return;
  }
  model_ready_ = false;
  // Busy while the weights load; Stop cancels the load.
  setGenerating(true);
  model_label_->setText(needs);
  emit loadModelRequested(check.directory, backend_setting(settings_));
}

void MainWindow::onModelLoaded(const ModelCheck& check, const QString& family, const SamplingSettings& sampling) {
  model_ready_ = true;
  model_info_ = check.model;
  engine_holds_ = {};
  model_family_ = family;
  default_sampling_ = sampling;
  settings_.setValue(QStringLiteral("model/directory"), check.directory);
  progress_bar_->setVisible(false);
  setWindowTitle(tr("Lightdesk — %1").arg(QFileInfo(check.directory).fileName()));
  statusBar()->showMessage(tr("Model loaded from %1").arg(check.directory), 5000);
  context_label_->setText(tr("context: 0 / %1").arg(check.context_tokens));
  refreshMemoryLabel();
  setGenerating(false);
  emit modelReady();
  restoreState();
}

void MainWindow::onModelRejected(const QString& directory, const QString& message) {
  statusBar()->clearMessage();
  showError(tr("%1 is not a model Lightdesk can open: %2").arg(directory, message));
}

void MainWindow::onModelFailed(const QString& directory, const QString& message) {
  model_ready_ = false;
  progress_bar_->setVisible(false);
  model_label_->setText(tr("No model loaded."));
  setGenerating(false);
  showError(tr("Could not open the model in %1: %2").arg(directory, message));
}

void MainWindow::editSettings() {
  // Sampling belongs to a model family: without a model the dialog shows the application part.
  SettingsDialog dialog(settings_, model_ready_ ? model_family_ : QString(), default_sampling_, this);
  dialog.exec();
}

// The label is refreshed by the modelLoaded or generationFinished that follows.
void MainWindow::onGpuMemoryMeasured(const std::vector<GpuDevice>& gpus) { gpus_ = gpus; }

void MainWindow::refreshMemoryLabel() {
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
  memory_label_->setText(
      tr("%1 · host memory: %2 available").arg(parts.join(QStringLiteral(" · ")), format_bytes(available_host_memory())));
}

// ---- conversation ----

bool MainWindow::eventFilter(QObject* watched, QEvent* event) {
  if (watched == input_ && event->type() == QEvent::KeyPress) {
    const auto* key = static_cast<QKeyEvent*>(event);
    if ((key->key() == Qt::Key_Return || key->key() == Qt::Key_Enter) && (key->modifiers() & Qt::ControlModifier)) {
      send();
      return true;
    }
    if (key->key() == Qt::Key_Escape && editing_) {
      editing_.reset();
      edit_bar_->setVisible(false);
      input_->clear();
      return true;
    }
  }
  return QMainWindow::eventFilter(watched, event);
}

void MainWindow::send() {
  const QString question = input_->toPlainText().trimmed();
  if (question.isEmpty() || generating_ || !model_ready_) return;
  if (current_.entries.isEmpty() && current_.title == untitled()) {
    current_.title = question.left(40);
    sessions_.rename(current_.id, current_.title);
  }
  const auto pending = pending_documents_.find(current_.id);
  ChatEntry user{ChatEntry::Role::User, question, {},
                 pending == pending_documents_.end() ? QList<Attachment>{} : pending->second, pending_images_[current_.id]};
  if (pending != pending_documents_.end()) pending_documents_.erase(pending);
  pending_images_.erase(current_.id);
  qsizetype keep = current_.entries.size();
  if (editing_ && *editing_ < keep) {
    // The edited message keeps the documents and images it was sent with, plus any attached since.
    keep = *editing_;
    user.documents = current_.entries[keep].documents + user.documents;
    user.images = current_.entries[keep].images + user.images;
  }
  editing_.reset();
  edit_bar_->setVisible(false);
  input_->clear();
  refreshSessionList();
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
  editing_ = entry;
  input_->setPlainText(current_.entries[entry].text);
  edit_bar_->setVisible(true);
  input_->setFocus();
}

void MainWindow::ask(qsizetype keep, const ChatEntry& user, bool regenerated) {
  ++restore_ticket_;  // a restore under way is superseded by the one this turn asks for
  turn_ = Turn{keep, current_.entries.mid(keep), false, regenerated};
  current_.entries.resize(keep);
  current_.entries.append(user);
  answer_ = ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}};
  refreshAttachments();
  renderTranscript();
  setGenerating(true);
  statusBar()->showMessage(tr("Reading the prompt…"));

  const QList<PromptMessage> conversation = prompt_conversation(current_.entries);
  const SamplingSettings sampling = load_sampling(settings_, model_family_, default_sampling_);
  if (keep == 0 || (engine_holds_.session == current_.id && engine_holds_.entries >= 0 && engine_holds_.entries <= keep)) {
    emit generateRequested(conversation, sampling, current_.id);
    return;
  }
  // The engine holds another conversation or a later point of this one: start from the state
  // saved at the branch point, if there is one, rather than reading everything again.
  sessions_.loadState(current_.id, keep, model_info_, this,
                      [this, conversation, sampling, id = current_.id](const StateLoad& load) {
                        adoptLoadedState(load);
                        emit generateRequested(conversation, sampling, id);
                      });
}

void MainWindow::adoptLoadedState(const StateLoad& load) {
  if (load.state) {
    adopting_ = {current_.id, load.entries};
    state_read_seconds_ = load.seconds;
    emit adoptStateRequested(load.state, prompt_conversation(current_.entries.mid(0, load.entries)), current_.id);
  } else if (!load.refused.isEmpty()) {
    onStateRefused(load.refused);
  }
}

void MainWindow::stop() { worker_->requestStop(); }

void MainWindow::onTextPiece(const QString& reasoning, const QString& answer) {
  progress_bar_->setVisible(false);  // the prompt is read once the answer streams
  if (turn_ && !turn_->stored) {
    // The answer has begun: the question (and the branch it starts, if any) is kept.
    if (!turn_->replaced.isEmpty()) sessions_.branch(current_.id, turn_->keep);
    sessions_.append(current_.id, current_.entries.back());
    turn_->stored = true;
  }
  if (answer_->text.isEmpty() && answer_->reasoning.isEmpty()) statusBar()->showMessage(tr("Writing the answer…"));
  answer_->reasoning += reasoning;
  answer_->text += answer;
  if (!reasoning.isEmpty()) appendToTranscript(reasoning, true);
  if (!answer.isEmpty()) appendToTranscript(answer, false);
}

void MainWindow::onGenerationFinished(const GenerationStats& stats, const EngineStatePtr& state) {
  progress_bar_->setVisible(false);
  speed_label_->setText(tr("%1 tokens/s").arg(stats.decode_tokens_per_second, 0, 'f', 1));
  first_token_label_->setText(tr("first token: %1 s").arg(stats.seconds_to_first_token, 0, 'f', 2));
  context_label_->setText(tr("context: %1 / %2").arg(stats.context_used).arg(stats.context_size));
  refreshMemoryLabel();
  QString summary = stats.stopped ? tr("Stopped after %1 tokens.").arg(stats.generated_tokens)
                                  : tr("%1 tokens generated.").arg(stats.generated_tokens);
  summary += QLatin1Char(' ') + tr("%1 prompt tokens read").arg(stats.prompt_tokens);
  if (stats.reused_tokens > 0) summary += QLatin1Char(' ') + tr("(%1 kept from the session state)").arg(stats.reused_tokens);
  statusBar()->showMessage(summary + QLatin1Char('.'), 10000);
  keepAnswer();
  if (state) {
    // Saved with the answer, so that reopening the session (or branching here) reads it back.
    sessions_.saveState(current_.id, current_.entries.size(), state);
    engine_holds_ = {current_.id, current_.entries.size()};
  } else {
    engine_holds_ = {};
  }
  emit answerFinished();
}

void MainWindow::onGenerationFailed(const QString& message) {
  progress_bar_->setVisible(false);
  engine_holds_ = {};
  showError(keepAnswer() ? tr("The answer failed: %1\nYour question is back in the input box.").arg(message)
                        : tr("The answer failed: %1").arg(message));
  emit answerFinished();
}

bool MainWindow::keepAnswer() {
  // What was written before a stop or failure stays; an answer that never began does not, and
  // neither does its question, which goes back where it came from.
  bool question_returned = false;
  if (turn_ && !turn_->stored) {
    question_returned = undoTurn();
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
  if (original != nullptr) {  // an edit: back into the input box, still editing that message
    editing_ = turn_->keep;
    edit_bar_->setVisible(true);
  }
  const QString typed = input_->toPlainText();
  input_->setPlainText(typed.isEmpty() ? question.text : question.text + QStringLiteral("\n\n") + typed);
  // What was attached for this question (beyond an edited message's own) is pending again.
  QList<Attachment>& documents = pending_documents_[current_.id];
  documents = question.documents.mid(original ? original->documents.size() : 0) + documents;
  QStringList& images = pending_images_[current_.id];
  images = question.images.mid(original ? original->images.size() : 0) + images;
  return true;
}

void MainWindow::restoreState() {
  const quint64 ticket = ++restore_ticket_;  // a read still under way is for a session no longer shown
  if (!model_ready_ || generating_ || current_.entries.isEmpty() || engine_holds_.session == current_.id) return;
  statusBar()->showMessage(tr("Restoring the session's state…"));
  sessions_.loadState(current_.id, current_.entries.size(), model_info_, this, [this, ticket](const StateLoad& load) {
    if (ticket != restore_ticket_) return;  // another session was opened, or a question sent, since
    statusBar()->clearMessage();
    adoptLoadedState(load);
  });
}

void MainWindow::onStateAdopted(qint64 tokens, double seconds) {
  engine_holds_ = adopting_;
  const QString message = tr("Restored %1 tokens from cache in %2 s.")
                              .arg(QLocale().toString(tokens))
                              .arg(state_read_seconds_ + seconds, 0, 'f', 2);
  statusBar()->showMessage(message, 10000);
  context_label_->setText(tr("context: %1 / %2").arg(tokens).arg(model_info_.max_context));
  emit stateRestored(message);
}

void MainWindow::onStateRefused(const QString& message) {
  engine_holds_ = {};
  showError(tr("The saved state of this conversation could not be used (%1). Its messages are kept; the next "
               "question reads the conversation again.")
                .arg(message));
}

void MainWindow::renderTranscript() {
  transcript_->clear();
  QTextCursor cursor(transcript_->document());
  // Each piece starts a block of its own with plain formats, so no style leaks into the next.
  auto insert_html = [&cursor](const QString& html) {
    cursor.insertHtml(html);
    cursor.insertBlock(QTextBlockFormat(), QTextCharFormat());
  };
  QList<ChatEntry> shown_entries = current_.entries;
  if (answer_) shown_entries.append(*answer_);
  entry_positions_.clear();
  const bool idle = !answer_;
  for (qsizetype i = 0; i < shown_entries.size(); ++i) {
    const ChatEntry& entry = shown_entries[i];
    // Space above each message, also after a Markdown answer (whose last block keeps its own).
    QTextBlockFormat spaced;
    spaced.setTopMargin(cursor.block().previous().isValid() ? 12 : 0);
    cursor.setBlockFormat(spaced);
    entry_positions_.append(cursor.position());
    if (entry.role == ChatEntry::Role::User) {
      QString html = QStringLiteral("<p style=\"color:#1a5fb4; margin-top:12px;\"><b>%1</b>").arg(tr("You").toHtmlEscaped());
      if (idle) html += QStringLiteral(" &nbsp; <a href=\"edit:%1\">%2</a>").arg(i).arg(tr("✎ Edit").toHtmlEscaped());
      html += QStringLiteral("</p>");
      QStringList names;
      for (const Attachment& document : entry.documents) names.append(QFileInfo(document.path).fileName());
      if (!names.isEmpty()) html += paragraph(tr("Documents: %1").arg(names.join(QStringLiteral(", "))), "color:#666;");
      QStringList image_names;
      for (const QString& image : entry.images) image_names.append(QFileInfo(image).fileName());
      if (!image_names.isEmpty())
        html += paragraph(tr("Images: %1").arg(image_names.join(QStringLiteral(", "))), "color:#666;");
      insert_html(html + paragraph(entry.text));
      continue;
    }
    QString html = QStringLiteral("<p style=\"color:#26a269; margin-top:12px;\"><b>%1</b></p>").arg(tr("Lightdesk").toHtmlEscaped());
    if (!entry.reasoning.isEmpty()) {
      const bool shown = expanded_reasoning_[static_cast<int>(i)];
      html += QStringLiteral("<p><a href=\"reasoning:%1\">%2</a></p>")
                  .arg(i)
                  .arg((shown ? tr("▾ Hide reasoning") : tr("▸ Show reasoning (%1 characters)").arg(entry.reasoning.size()))
                           .toHtmlEscaped());
      if (shown) html += paragraph(entry.reasoning, "color:#777; font-style:italic;");
    }
    insert_html(html);
    // A finished answer is Markdown (lists, emphasis, code blocks); the one streaming in is
    // appended as it comes, as plain text.
    if (answer_ && i == shown_entries.size() - 1) continue;
    // Without HTML: tags the model writes (<image>, <think>) are text to show, not markup.
    cursor.insertFragment(QTextDocumentFragment::fromMarkdown(
        entry.text, QTextDocument::MarkdownFeatures(QTextDocument::MarkdownDialectGitHub | QTextDocument::MarkdownNoHTML)));
    cursor.insertBlock(QTextBlockFormat(), QTextCharFormat());
    if (idle && i == shown_entries.size() - 1)
      insert_html(QStringLiteral("<p><a href=\"regenerate:\">%1</a></p>").arg(tr("↻ Regenerate").toHtmlEscaped()));
  }
  transcript_->verticalScrollBar()->setValue(transcript_->verticalScrollBar()->maximum());
}

void MainWindow::appendToTranscript(const QString& text, bool reasoning) {
  QTextCursor cursor(transcript_->document());
  cursor.movePosition(QTextCursor::End);
  QTextCharFormat format;
  if (reasoning) {
    format.setForeground(QColor(0x77, 0x77, 0x77));
    format.setFontItalic(true);
  }
  cursor.insertText(text, format);
  transcript_->verticalScrollBar()->setValue(transcript_->verticalScrollBar()->maximum());
}

void MainWindow::onTranscriptLink(const QUrl& link) {
  if (link.scheme() == QStringLiteral("regenerate")) {
    regenerate();
    return;
  }
  bool ok = false;
  const int index = link.path().toInt(&ok);
  if (!ok) return;
  if (link.scheme() == QStringLiteral("edit")) {
    editMessage(index);
    return;
  }
  if (link.scheme() != QStringLiteral("reasoning")) return;
  expanded_reasoning_[index] = !expanded_reasoning_[index];
  renderTranscript();
}

// ---- sessions ----

void MainWindow::newSession() {
  if (generating_) return;
  showSession(sessions_.create(untitled()));
  input_->setFocus();
}

void MainWindow::selectSession(qint64 id) {
  if (generating_ || id == current_.id) return;
  if (const std::optional<ChatSession> session = sessions_.load(id)) showSession(*session);
}

void MainWindow::showSession(const ChatSession& session) {
  current_ = session;
  expanded_reasoning_.clear();
  editing_.reset();  // an edit belongs to the session it began in
  edit_bar_->setVisible(false);
  refreshSessionList();
  refreshAttachments();
  renderTranscript();
  restoreState();
}

void MainWindow::refreshSessionList() {
  const QSignalBlocker blocker(session_list_);
  session_list_->clear();
  for (const ChatSession& session : sessions_.list()) {
    if (session.id == deleting_) continue;
    auto* item = new QListWidgetItem(session.title, session_list_);
    item->setData(kSessionIdRole, session.id);
    item->setToolTip(session.title);
    item->setFlags(item->flags() | Qt::ItemIsEditable);
    if (session.id == current_.id) session_list_->setCurrentItem(item);
  }
}

void MainWindow::renameCurrentSession() {
  if (QListWidgetItem* item = session_list_->currentItem()) session_list_->editItem(item);
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

void MainWindow::runSearch() {
  const QString query = search_box_->text().trimmed();
  const quint64 ticket = ++search_ticket_;
  if (query.isEmpty()) {
    search_results_->clear();
    search_results_->setVisible(false);
    return;
  }
  sessions_.search(query, this, [this, ticket](const QList<MessageHit>& hits) {
    if (ticket != search_ticket_) return;  // the query changed since
    search_results_->clear();
    std::map<qint64, QString> titles;
    for (const ChatSession& session : sessions_.list()) titles[session.id] = session.title;
    for (const MessageHit& hit : hits) {
      if (hit.session == deleting_ || titles.count(hit.session) == 0) continue;
      auto* item = new QListWidgetItem(QStringLiteral("%1: %2").arg(titles[hit.session], hit.snippet.simplified()),
                                       search_results_);
      item->setData(kSessionIdRole, hit.session);
      item->setData(kEntryRole, hit.entry);
      item->setToolTip(hit.snippet);
    }
    if (hits.isEmpty()) search_results_->addItem(tr("No message matches."));
    search_results_->setVisible(true);
  });
}

void MainWindow::showMessage(qint64 session, qsizetype entry) {
  if (session == 0) return;
  selectSession(session);
  if (session != current_.id || entry < 0 || entry >= entry_positions_.size()) return;
  QTextCursor cursor(transcript_->document());
  cursor.setPosition(entry_positions_[entry]);
  transcript_->setTextCursor(cursor);
  transcript_->ensureCursorVisible();
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
  input_->setPlainText(question_after_documents_);
  question_after_documents_.clear();
  send();
}

void MainWindow::attachFiles(const QStringList& paths) {
  for (const QString& path : paths) {
    if (!QImageReader::imageFormat(path).isEmpty()) {
      attachImage(path);
      continue;
    }
    reading_documents_[path] = current_.id;
    emit readDocumentRequested(path);
  }
  refreshAttachments();
}

void MainWindow::onDocumentReady(const QString& path, const QString& text, const QList<qint64>& pageOffsets,
                                 qint64 tokens) {
  const auto reading = reading_documents_.find(path);
  if (reading == reading_documents_.end()) return;
  const qint64 session_id = reading->second;
  reading_documents_.erase(reading);
  pending_documents_[session_id].append({path, text, pageOffsets, tokens});
  refreshAttachments();
  emit documentAttached(path);
  askQuestionAfterDocuments();
}

void MainWindow::decodeThumbnail(const QString& path, const std::function<void(const QString& error)>& done) {
  constexpr int kThumbnailPixels = 64;
  QPointer<MainWindow> window(this);
  // Decoding a large image takes long enough to be felt: a pool thread does it.
  QThreadPool::globalInstance()->start([window, path, done] {
    QImageReader reader(path);
    reader.setAutoTransform(true);
    const QSize size = reader.size();
    QImage image = reader.read();
    const QString error = image.isNull() ? reader.errorString() : QString();
    if (!image.isNull())
      image = image.scaled(kThumbnailPixels, kThumbnailPixels, Qt::KeepAspectRatio, Qt::SmoothTransformation);
    QMetaObject::invokeMethod(window, [window, path, size, image, error, done] {
      if (!window) return;
      if (!image.isNull()) window->thumbnails_[path] = {size.isValid() ? size : image.size(), image};
      done(error);
    });
  });
}

void MainWindow::attachImage(const QString& path) {
  reading_documents_[path] = current_.id;
  decodeThumbnail(path, [this, path](const QString& error) {
    const auto reading = reading_documents_.find(path);
    if (reading == reading_documents_.end()) return;
    const qint64 session_id = reading->second;
    reading_documents_.erase(reading);
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

void MainWindow::removeSelectedAttachment() {
  // Only what is not sent yet can go: its item names the list and the index it comes from.
  const QListWidgetItem* item = attachment_list_->currentItem();
  if (item == nullptr) return;
  const qsizetype index = item->data(kAttachmentIndexRole).toLongLong();
  const QString kind = item->data(kAttachmentKindRole).toString();
  if (kind == QStringLiteral("document"))
    pending_documents_[current_.id].removeAt(index);
  else if (kind == QStringLiteral("image"))
    pending_images_[current_.id].removeAt(index);
  refreshAttachments();
}

void MainWindow::refreshAttachments() {
  attachment_list_->clear();
  auto add = [this](const Attachment& attachment, qsizetype pending_index) {
    QString line = tr("%1 — %2 tokens").arg(QFileInfo(attachment.path).fileName()).arg(attachment.tokens);
    if (const qsizetype pages = attachment.page_offsets.size(); pages > 0)
      line += QLatin1Char(' ') + (pages == 1 ? tr("in 1 page") : tr("in %1 pages").arg(pages));
    if (pending_index < 0) line += QLatin1Char(' ') + tr("(sent)");
    auto* item = new QListWidgetItem(line, attachment_list_);
    item->setToolTip(attachment.path);
    if (pending_index >= 0) {
      item->setData(kAttachmentKindRole, QStringLiteral("document"));
      item->setData(kAttachmentIndexRole, pending_index);
    }
  };
  auto add_image = [this](const QString& path, qsizetype pending_index) {
    auto* item = new QListWidgetItem(attachment_list_);
    item->setToolTip(path);
    QString line = QFileInfo(path).fileName();
    if (const auto thumbnail = thumbnails_.find(path); thumbnail != thumbnails_.end()) {
      item->setIcon(QIcon(QPixmap::fromImage(thumbnail->second.image)));
      line = tr("%1 — %2×%3 image").arg(line).arg(thumbnail->second.size.width()).arg(thumbnail->second.size.height());
    } else if (thumbnails_requested_.insert(path).second) {
      // An image of a stored session: its thumbnail is made once, when it is first listed.
      decodeThumbnail(path, [this](const QString&) { refreshAttachments(); });
    }
    if (pending_index < 0) line += QLatin1Char(' ') + tr("(sent)");
    item->setText(line);
    if (pending_index >= 0) {
      item->setData(kAttachmentKindRole, QStringLiteral("image"));
      item->setData(kAttachmentIndexRole, pending_index);
    }
  };
  for (const ChatEntry& entry : current_.entries) {
    for (const Attachment& attachment : entry.documents) add(attachment, -1);
    for (const QString& image : entry.images) add_image(image, -1);
  }
  if (const auto pending = pending_documents_.find(current_.id); pending != pending_documents_.end())
    for (qsizetype i = 0; i < pending->second.size(); ++i) add(pending->second[i], i);
  if (const auto images = pending_images_.find(current_.id); images != pending_images_.end())
    for (qsizetype i = 0; i < images->second.size(); ++i) add_image(images->second[i], i);
  for (const auto& [path, session_id] : reading_documents_)
    if (session_id == current_.id) attachment_list_->addItem(tr("%1 — reading…").arg(QFileInfo(path).fileName()));
}

void MainWindow::chooseExportFile() {
  const QString path = QFileDialog::getSaveFileName(this, tr("Export conversation"), current_.title + QStringLiteral(".md"),
                                                    tr("Markdown (*.md);;JSON (*.json)"));
  if (!path.isEmpty()) exportConversation(path);
}

void MainWindow::exportConversation(const QString& path) {
  try {
    export_conversation(current_, path);
    statusBar()->showMessage(tr("Conversation exported to %1").arg(path), 5000);
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
  send_button_->setEnabled(!generating_ && model_ready_);
  stop_button_->setEnabled(generating_);
  session_list_->setEnabled(!generating_);
}

void MainWindow::showError(const QString& message) {
  message_label_->setStyleSheet(QStringLiteral("QLabel { background: #fde2e1; color: #8a1c15; padding: 6px; }"));
  message_label_->setText(message);
  message_label_->setVisible(true);
  emit errorShown(message);
}

}  // namespace lightdesk::gui
