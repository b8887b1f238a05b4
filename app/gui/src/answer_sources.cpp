#include "answer_sources.h"

#include <QHash>

namespace lightdesk::gui {
namespace {

struct Word {
  QString folded;  // lower case
  qsizetype start = 0;
  qsizetype end = 0;
};

// Words as whitespace separates them, so that any run of whitespace (a line break in a PDF, two
// spaces) compares equal to one space.
QList<Word> words_of(const QString& text) {
  QList<Word> words;
  qsizetype i = 0;
  const qsizetype n = text.size();
  while (i < n) {
    while (i < n && text[i].isSpace()) ++i;
    const qsizetype start = i;
    while (i < n && !text[i].isSpace()) ++i;
    if (i > start) words.append({text.mid(start, i - start).toCaseFolded(), start, i});
  }
  return words;
}

}  // namespace

int page_at(const Attachment& document, qsizetype position) {
  if (document.page_offsets.isEmpty()) return 0;
  const qint64 byte = document.text.left(position).toUtf8().size();
  int page = 0;
  for (const qint64 offset : document.page_offsets)
    if (offset <= byte) ++page;
  return std::max(page, 1);
}

qsizetype page_start(const Attachment& document, int page) {
  if (page < 1 || page > document.page_offsets.size()) return 0;
  // The UTF-8 offset back to a text position.
  return QString::fromUtf8(document.text.toUtf8().left(document.page_offsets[page - 1])).size();
}

AnswerSources find_answer_sources(const QString& answer, const QList<Attachment>& documents) {
  const QList<Word> answer_words = words_of(answer);
  AnswerSources result;
  struct Indexed {
    QList<Word> words;
    QHash<QString, QList<qsizetype>> at;  // folded word -> its indices
  };
  QList<Indexed> indexed;
  for (const Attachment& document : documents) {
    Indexed entry{words_of(document.text), {}};
    for (qsizetype i = 0; i < entry.words.size(); ++i) entry.at[entry.words[i].folded].append(i);
    indexed.append(std::move(entry));
  }
  // The longest run: from each answer word, extend along every place the document has it.
  qsizetype best_start = 0, best_length = 0;
  for (qsizetype a = 0; a + std::max<qsizetype>(best_length, kMinimumWords - 1) < answer_words.size(); ++a) {
    for (const Indexed& document : indexed) {
      for (const qsizetype d : document.at.value(answer_words[a].folded)) {
        qsizetype length = 1;
        while (a + length < answer_words.size() && d + length < document.words.size() &&
               answer_words[a + length].folded == document.words[d + length].folded)
          ++length;
        if (length > best_length) {
          best_length = length;
          best_start = a;
        }
      }
    }
  }
  if (best_length < kMinimumWords) return result;
  result.words = static_cast<int>(best_length);
  result.run = answer.mid(answer_words[best_start].start,
                          answer_words[best_start + best_length - 1].end - answer_words[best_start].start);
  // Every place the run occurs.
  for (qsizetype i = 0; i < indexed.size(); ++i) {
    const Indexed& document = indexed[i];
    for (const qsizetype d : document.at.value(answer_words[best_start].folded)) {
      if (d + best_length > document.words.size()) continue;
      bool same = true;
      for (qsizetype k = 1; k < best_length && same; ++k)
        same = answer_words[best_start + k].folded == document.words[d + k].folded;
      if (!same) continue;
      const qsizetype start = document.words[d].start;
      const qsizetype end = document.words[d + best_length - 1].end;
      result.sources.append({i, start, end - start, page_at(documents[i], start)});
    }
  }
  return result;
}

}  // namespace lightdesk::gui
