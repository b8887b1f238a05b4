#include "session_panel.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QPushButton>
#include <QTextDocumentFragment>
#include <QTimer>
#include <QVBoxLayout>

namespace lightdesk::gui {
namespace {

constexpr int kSessionIdRole = Qt::UserRole;
constexpr int kEntryRole = Qt::UserRole + 1;    // a search result's entry index
constexpr int kMessageRole = Qt::UserRole + 2;  // and its message

}  // namespace

QString SessionPanel::snippetHtml(const QString& snippet) {
  QString text = snippet.simplified();
  // The store marks a cut with "...", the in-memory repository not at all.
  QString html;
  if (text.startsWith(QStringLiteral("..."))) {
    html += QStringLiteral("…");
    text.remove(0, 3);
  }
  const bool cut_end = text.endsWith(QStringLiteral("..."));
  if (cut_end) text.chop(3);
  bool in_match = false;
  QString run;
  auto flush = [&] {
    html += in_match ? QStringLiteral("<b>%1</b>").arg(run.toHtmlEscaped()) : run.toHtmlEscaped();
    run.clear();
  };
  for (const QChar c : text) {
    if ((c == QLatin1Char('[') && !in_match) || (c == QLatin1Char(']') && in_match)) {
      flush();
      in_match = !in_match;
      continue;
    }
    run += c;
  }
  flush();
  if (cut_end) html += QStringLiteral("…");
  return html;
}

SessionPanel::SessionPanel(QWidget* parent) : QWidget(parent) {
  search_box_ = new QLineEdit;
  search_box_->setObjectName(QStringLiteral("searchBox"));
  search_box_->setPlaceholderText(tr("Search messages (Ctrl+F)"));
  search_box_->setClearButtonEnabled(true);
  search_box_->setAccessibleName(tr("Search messages"));
  // One query once typing pauses, not one per keystroke queued behind the store's writes;
  // clearing the box closes the results at once.
  auto* search_pause = new QTimer(this);
  search_pause->setSingleShot(true);
  search_pause->setInterval(200);
  connect(search_box_, &QLineEdit::textChanged, this, [this, search_pause](const QString& text) {
    if (text.trimmed().isEmpty()) {
      search_pause->stop();
      search_results_->clear();
      search_results_->setVisible(false);
      emit searchRequested({});
    } else {
      search_pause->start();
    }
  });
  connect(search_pause, &QTimer::timeout, this, [this] { emit searchRequested(search_box_->text().trimmed()); });
  search_results_ = new QListWidget;
  search_results_->setObjectName(QStringLiteral("searchResults"));
  search_results_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  search_results_->setWordWrap(true);
  search_results_->setVisible(false);
  search_results_->setAccessibleName(tr("Search results"));
  auto open_hit = [this](QListWidgetItem* item) {
    if (const qint64 session = item->data(kSessionIdRole).toLongLong(); session != 0)
      emit hitActivated(session, item->data(kEntryRole).toLongLong(), item->data(kMessageRole).toLongLong());
  };
  // A click, or Enter on the keyboard.
  connect(search_results_, &QListWidget::itemClicked, this, open_hit);
  connect(search_results_, &QListWidget::itemActivated, this, open_hit);
  session_list_ = new QListWidget;
  session_list_->setObjectName(QStringLiteral("sessionList"));
  session_list_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  session_list_->setTextElideMode(Qt::ElideRight);
  session_list_->setAccessibleName(tr("Sessions"));
  auto select = [this](QListWidgetItem* item) { emit sessionSelected(item->data(kSessionIdRole).toLongLong()); };
  connect(session_list_, &QListWidget::itemClicked, this, select);
  connect(session_list_, &QListWidget::itemActivated, this, select);
  connect(session_list_, &QListWidget::itemChanged, this, [this](QListWidgetItem* item) {
    emit sessionRenamed(item->data(kSessionIdRole).toLongLong(), item->text());
  });
  auto* new_button = new_button_ = new QPushButton(tr("New"));
  new_button->setObjectName(QStringLiteral("newSessionButton"));
  new_button->setToolTip(tr("New session (Ctrl+N)"));
  auto* rename_button = new QPushButton(tr("Rename"));
  rename_button->setObjectName(QStringLiteral("renameSessionButton"));
  auto* delete_button = delete_button_ = new QPushButton(tr("Delete"));
  delete_button->setObjectName(QStringLiteral("deleteSessionButton"));
  connect(new_button, &QPushButton::clicked, this, &SessionPanel::newRequested);
  connect(rename_button, &QPushButton::clicked, this, &SessionPanel::renameCurrent);
  connect(delete_button, &QPushButton::clicked, this, &SessionPanel::deleteRequested);
  auto* buttons = new QHBoxLayout;
  buttons->addWidget(new_button);
  buttons->addWidget(rename_button);
  buttons->addWidget(delete_button);
  auto* layout = new QVBoxLayout(this);
  layout->addWidget(new QLabel(tr("Sessions")));
  layout->addWidget(search_box_);
  layout->addWidget(search_results_, 1);
  layout->addWidget(session_list_, 1);
  layout->addLayout(buttons);
}

void SessionPanel::setSessions(const QList<ChatSession>& sessions, qint64 current) {
  const QSignalBlocker blocker(session_list_);
  session_list_->clear();
  for (const ChatSession& session : sessions) {
    auto* item = new QListWidgetItem(session.title, session_list_);
    item->setData(kSessionIdRole, session.id);
    item->setToolTip(session.title);
    item->setFlags(item->flags() | Qt::ItemIsEditable);
    if (session.id == current) session_list_->setCurrentItem(item);
  }
}

void SessionPanel::setSearchResults(const QList<MessageHit>& hits, const std::map<qint64, QString>& titles) {
  search_results_->clear();
  // Shown first, so that the width the rows wrap to is the list's as laid out now.
  search_results_->setVisible(true);
  if (layout() != nullptr) layout()->activate();
  const int width = resultWidth();
  for (const MessageHit& hit : hits) {
    const auto title = titles.find(hit.session);
    if (title == titles.end()) continue;
    // The title on one line, the snippet under it, wrapped: nothing hides behind a scroll bar.
    auto* label = new QLabel(QStringLiteral("<b>%1</b><br>%2").arg(title->second.toHtmlEscaped(), snippetHtml(hit.snippet)));
    label->setWordWrap(true);
    label->setTextFormat(Qt::RichText);
    label->setContentsMargins(4, 2, 4, 2);
    label->setAttribute(Qt::WA_TransparentForMouseEvents);
    auto* item = new QListWidgetItem(search_results_);
    item->setData(kSessionIdRole, hit.session);
    item->setData(kEntryRole, hit.entry);
    item->setData(kMessageRole, hit.message);
    // The text a screen reader (and a test) reads; what is drawn is the label.
    item->setData(Qt::AccessibleTextRole,
                  QStringLiteral("%1: %2").arg(title->second,
                                               QTextDocumentFragment::fromHtml(snippetHtml(hit.snippet)).toPlainText()));
    item->setToolTip(hit.snippet.simplified());
    search_results_->setItemWidget(item, label);
  }
  fitResultRows(width);
  if (search_results_->count() == 0) {
    auto* none = new QListWidgetItem(tr("No message matches."), search_results_);
    none->setData(Qt::AccessibleTextRole, none->text());
  }
  search_results_->setVisible(true);
}

int SessionPanel::resultWidth() const { return search_results_->viewport()->width() - 2 * search_results_->spacing() - 4; }

void SessionPanel::fitResultRows(int width) {
  for (int row = 0; row < search_results_->count(); ++row) {
    QListWidgetItem* item = search_results_->item(row);
    if (const QWidget* label = search_results_->itemWidget(item)) item->setSizeHint({width, label->heightForWidth(width)});
  }
}

void SessionPanel::resizeEvent(QResizeEvent* event) {
  QWidget::resizeEvent(event);
  // The rows wrap again to the new width.
  if (search_results_->isVisible()) {
    if (layout() != nullptr) layout()->activate();
    fitResultRows(resultWidth());
  }
}

void SessionPanel::setBusy(bool busy) {
  new_button_->setEnabled(!busy);
  delete_button_->setEnabled(!busy);
}

void SessionPanel::focusSearch() {
  search_box_->setFocus();
  search_box_->selectAll();
}

void SessionPanel::renameCurrent() {
  if (QListWidgetItem* item = session_list_->currentItem()) session_list_->editItem(item);
}

QString SessionPanel::searchText() const { return search_box_->text().trimmed(); }

}  // namespace lightdesk::gui
