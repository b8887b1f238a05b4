#include "document_viewer.h"

#include <QFileInfo>
#include <QGuiApplication>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QLocale>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QToolButton>
#include <QTextBlock>
#include <QVBoxLayout>

namespace lightdesk::gui {

DocumentViewer::DocumentViewer(QWidget* parent) : QWidget(parent) {
  title_ = new QLabel;
  title_->setObjectName(QStringLiteral("documentTitle"));
  title_->setTextFormat(Qt::PlainText);
  auto* close = new QPushButton(tr("Close"));
  close->setObjectName(QStringLiteral("closeDocumentButton"));
  close->setAccessibleName(tr("Close the document"));
  connect(close, &QPushButton::clicked, this, &DocumentViewer::closeRequested);
  auto* title_row = new QHBoxLayout;
  title_row->addWidget(title_, 1);
  title_row->addWidget(close);

  sources_label_ = new QLabel;
  sources_label_->setObjectName(QStringLiteral("sourcesLabel"));
  sources_label_->setWordWrap(true);
  sources_label_->setVisible(false);
  sources_ = new QListWidget;
  sources_->setObjectName(QStringLiteral("sourcesList"));
  sources_->setAccessibleName(tr("Places the answer's words were found"));
  sources_->setVisible(false);
  connect(sources_, &QListWidget::currentRowChanged, this, &DocumentViewer::openSource);

  page_ = new QSpinBox;
  page_->setObjectName(QStringLiteral("pageBox"));
  page_->setAccessibleName(tr("Page"));
  page_->setPrefix(tr("Page "));
  page_->setMinimum(1);
  page_count_ = new QLabel;
  connect(page_, &QSpinBox::valueChanged, this, &DocumentViewer::showPage);
  search_ = new QLineEdit;
  search_->setObjectName(QStringLiteral("documentSearch"));
  search_->setAccessibleName(tr("Search in the document"));
  search_->setPlaceholderText(tr("Search in the document…"));
  search_->setClearButtonEnabled(true);
  auto* previous = new QToolButton;
  previous->setArrowType(Qt::UpArrow);
  previous->setAccessibleName(tr("Previous match"));
  previous->setToolTip(tr("Previous match (Shift+Enter)"));
  auto* next = new QToolButton;
  next->setArrowType(Qt::DownArrow);
  next->setAccessibleName(tr("Next match"));
  next->setToolTip(tr("Next match (Enter)"));
  search_result_ = new QLabel;
  search_result_->setObjectName(QStringLiteral("documentSearchResult"));
  search_result_->setVisible(false);  // until a search says something
  connect(search_, &QLineEdit::returnPressed, this,
          [this] { find(search_->text(), QGuiApplication::keyboardModifiers() & Qt::ShiftModifier); });
  connect(next, &QPushButton::clicked, this, [this] { find(search_->text()); });
  connect(previous, &QPushButton::clicked, this, [this] { find(search_->text(), true); });
  auto* search_row = new QHBoxLayout;
  search_row->addWidget(page_);
  search_row->addWidget(page_count_);
  search_row->addWidget(search_, 1);
  search_row->addWidget(previous);
  search_row->addWidget(next);

  text_ = new QPlainTextEdit;
  text_->setObjectName(QStringLiteral("documentText"));
  text_->setAccessibleName(tr("Document text"));
  text_->setReadOnly(true);
  text_->setTextInteractionFlags(Qt::TextSelectableByMouse | Qt::TextSelectableByKeyboard);

  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addLayout(title_row);
  layout->addWidget(sources_label_);
  layout->addWidget(sources_);
  layout->addLayout(search_row);
  layout->addWidget(search_result_);
  layout->addWidget(text_, 1);
  setTabOrder(sources_, page_);
  setTabOrder(page_, search_);
  setTabOrder(search_, text_);
}

void DocumentViewer::open(const Attachment& document, qsizetype position, qsizetype length) {
  if (document.path != document_.path || document.text.size() != document_.text.size()) {
    document_ = document;
    text_->setPlainText(document.text);
    title_->setText(QFileInfo(document.path).fileName());
    title_->setToolTip(document.path);
    const QSignalBlocker quiet(page_);
    page_->setMaximum(std::max<int>(1, static_cast<int>(document.page_offsets.size())));
    page_->setVisible(!document.page_offsets.isEmpty());
    page_count_->setVisible(!document.page_offsets.isEmpty());
    page_count_->setText(tr("of %1").arg(QLocale().toString(document.page_offsets.size())));
    search_result_->clear();
    search_result_->setVisible(false);
  }
  highlight(position, length);
}

void DocumentViewer::showPage(int page) {
  highlight(page_start(document_, page), 0);
}

void DocumentViewer::highlight(qsizetype position, qsizetype length) {
  position = std::clamp<qsizetype>(position, 0, document_.text.size());
  QTextCursor cursor(text_->document());
  cursor.setPosition(static_cast<int>(position));
  QList<QTextEdit::ExtraSelection> selections;
  if (length > 0) {
    cursor.setPosition(static_cast<int>(std::min(position + length, document_.text.size())), QTextCursor::KeepAnchor);
    QTextEdit::ExtraSelection selection;
    selection.cursor = cursor;
    selection.format.setBackground(palette().color(QPalette::Highlight));
    selection.format.setForeground(palette().color(QPalette::HighlightedText));
    selections.append(selection);
  }
  text_->setExtraSelections(selections);
  // The passage a few lines from the top, rather than on the last line of the view.
  QTextCursor top(cursor);
  top.setPosition(static_cast<int>(position));
  text_->setTextCursor(top);
  text_->moveCursor(QTextCursor::End);
  text_->setTextCursor(top);
  text_->centerCursor();
  if (!document_.page_offsets.isEmpty()) {
    const QSignalBlocker quiet(page_);
    page_->setValue(page_at(document_, position));
  }
}

QString DocumentViewer::highlighted() const {
  const QList<QTextEdit::ExtraSelection> selections = text_->extraSelections();
  return selections.isEmpty() ? QString() : selections.front().cursor.selectedText();
}

bool DocumentViewer::find(const QString& text, bool backwards) {
  if (text.isEmpty()) return false;
  search_result_->setVisible(true);
  const QTextDocument::FindFlags flags = backwards ? QTextDocument::FindBackward : QTextDocument::FindFlags();
  QTextCursor found = text_->document()->find(text, text_->textCursor(), flags);
  if (found.isNull()) {
    // Wrap around.
    QTextCursor from(text_->document());
    if (backwards) from.movePosition(QTextCursor::End);
    found = text_->document()->find(text, from, flags);
  }
  if (found.isNull()) {
    search_result_->setText(tr("“%1” is not in this document.").arg(text));
    return false;
  }
  const int count = [&] {
    int n = 0;
    for (QTextCursor c = text_->document()->find(text, 0); !c.isNull(); c = text_->document()->find(text, c)) ++n;
    return n;
  }();
  search_result_->setText(count == 1 ? tr("1 match") : tr("%1 matches").arg(QLocale().toString(count)));
  highlight(found.selectionStart(), found.selectionEnd() - found.selectionStart());
  // The next search goes on after this match.
  QTextCursor after(text_->document());
  after.setPosition(backwards ? found.selectionStart() : found.selectionEnd());
  text_->setTextCursor(after);
  return true;
}

void DocumentViewer::showSources(const QList<Attachment>& documents, const AnswerSources& found) {
  source_documents_ = documents;
  found_ = found;
  sources_label_->setVisible(true);
  const QSignalBlocker quiet(sources_);
  sources_->clear();
  if (found.sources.isEmpty()) {
    sources_label_->setText(documents.isEmpty()
                                ? tr("Not found: this conversation has no documents.")
                                : tr("Not found: no run of %1 or more words of this answer occurs in its documents.")
                                      .arg(kMinimumWords));
    sources_->setVisible(false);
    return;
  }
  sources_label_->setText(found.sources.size() == 1
                              ? tr("“%1” (%2 words) occurs once:").arg(found.run, QLocale().toString(found.words))
                              : tr("“%1” (%2 words) occurs %3 times:")
                                    .arg(found.run, QLocale().toString(found.words),
                                         QLocale().toString(found.sources.size())));
  for (const AnswerSource& source : found.sources) {
    const Attachment& document = documents[source.document];
    const QString name = QFileInfo(document.path).fileName();
    sources_->addItem(source.page > 0 ? tr("%1, page %2").arg(name, QLocale().toString(source.page))
                                      : tr("%1, character %2").arg(name, QLocale().toString(source.position + 1)));
  }
  // As tall as its rows, up to five.
  sources_->setFixedHeight(sources_->sizeHintForRow(0) * static_cast<int>(std::min<qsizetype>(found.sources.size(), 5)) +
                           2 * sources_->frameWidth());
  sources_->setVisible(true);
  sources_->setCurrentRow(0);
  openSource(0);
}

void DocumentViewer::openSource(int row) {
  if (row < 0 || row >= found_.sources.size()) return;
  const AnswerSource& source = found_.sources[row];
  open(source_documents_[source.document], source.position, source.length);
}

}  // namespace lightdesk::gui
