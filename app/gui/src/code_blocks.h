// Fenced code blocks of an answer (Markdown's ``` and ~~~ fences), and a small syntax colouring
// for a few common languages. Debian 12 ships no syntax-highlighting library for Qt 6, so the
// colouring is a tokenizer of its own: comments, strings, numbers and keywords of C and C++,
// Python, JavaScript and TypeScript, shell (bash, sh) and JSON. Other languages stay plain.
#pragma once

#include <QList>
#include <QString>

namespace lightdesk::gui {

// A piece of an answer: Markdown prose, or one fenced code block (its language as the fence
// names it, lower case; the code without the fences).
struct AnswerPart {
  bool code = false;
  QString text;
  QString language;
};
// The answer cut at its fences; an unclosed fence runs to the end (an answer still streaming).
QList<AnswerPart> split_code_blocks(const QString& answer);
// The code of fenced block `index` (0-based) of `answer`, empty if there is none.
QString code_block(const QString& answer, qsizetype index);

struct CodeRun {
  enum class Kind { Plain, Keyword, String, Comment, Number };
  Kind kind = Kind::Plain;
  qsizetype start = 0;
  qsizetype length = 0;
};
// Whether `language` (a fence's name: "cpp", "py", "bash", ...) is one that is coloured.
bool highlighted_language(const QString& language);
// The coloured runs of `code` (only the non-plain ones, in order, not overlapping).
QList<CodeRun> highlight_code(const QString& code, const QString& language);

}  // namespace lightdesk::gui
