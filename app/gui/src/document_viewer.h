// The document pane: one attached document's text, opened at a page (a PDF's) or a position with
// a passage highlighted, a search inside it, and the places an answer's words were found ("Show
// in document"). It is a pane beside the others, never a dialog, so the session list and the
// conversation stay usable while a document is read.
#pragma once

#include <QWidget>

#include "answer_sources.h"
#include "session_repository.h"

class QLabel;
class QLineEdit;
class QListWidget;
class QPlainTextEdit;
class QSpinBox;

namespace lightdesk::gui {

class DocumentViewer : public QWidget {
  Q_OBJECT

 public:
  explicit DocumentViewer(QWidget* parent = nullptr);

  // Shows `document` at `position`, the `length` characters from there highlighted (none: 0).
  void open(const Attachment& document, qsizetype position = 0, qsizetype length = 0);
  // Shows page `page` (1-based) of the open document.
  void showPage(int page);
  // The places `found` lists in `documents`, the first one opened; or, when nothing was found,
  // says so plainly.
  void showSources(const QList<Attachment>& documents, const AnswerSources& found);
  // Finds `text` (case-insensitive) from the cursor on, wrapping at the end; false if absent.
  bool find(const QString& text, bool backwards = false);

  QString documentPath() const { return document_.path; }
  // The highlighted passage, empty if none.
  QString highlighted() const;

 signals:
  void closeRequested();

 private:
  void highlight(qsizetype position, qsizetype length);
  void openSource(int row);

  QLabel* title_;
  QLabel* sources_label_;
  QListWidget* sources_;
  QSpinBox* page_;
  QLabel* page_count_;
  QLineEdit* search_;
  QLabel* search_result_;
  QPlainTextEdit* text_;
  Attachment document_;
  QList<Attachment> source_documents_;
  AnswerSources found_;
};

}  // namespace lightdesk::gui
