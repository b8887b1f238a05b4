// Where an answer's words occur in its documents ("Show in document"): the longest run of at
// least five consecutive words of the answer that a document holds, compared after folding case
// and whitespace, and every place it occurs.
#pragma once

#include <QList>
#include <QString>

#include "session_repository.h"

namespace lightdesk::gui {

struct AnswerSource {
  qsizetype document = 0;  // index in the documents searched
  qsizetype position = 0;  // in the document's text (QString positions)
  qsizetype length = 0;
  int page = 0;            // 1-based for a PDF, 0 for other documents
};

struct AnswerSources {
  int words = 0;                // the run's length in words (0: none of at least kMinimumWords)
  QString run;                  // the answer's words that were found, as the answer writes them
  QList<AnswerSource> sources;  // every occurrence, in document order
};

inline constexpr int kMinimumWords = 5;

AnswerSources find_answer_sources(const QString& answer, const QList<Attachment>& documents);

// The page holding `position` of `document`'s text (PDF page offsets count UTF-8 bytes); 0 for a
// document without pages.
int page_at(const Attachment& document, qsizetype position);
// The text position where page `page` (1-based) of `document` starts.
qsizetype page_start(const Attachment& document, int page);

}  // namespace lightdesk::gui
