#include "code_blocks.h"

#include <QRegularExpression>
#include <QSet>

namespace lightdesk::gui {
namespace {

enum class Language { None, C, Python, JavaScript, Shell, Json };

Language language_of(const QString& name) {
  static const QHash<QString, Language> names{
      {QStringLiteral("c"), Language::C},           {QStringLiteral("cpp"), Language::C},
      {QStringLiteral("c++"), Language::C},         {QStringLiteral("cxx"), Language::C},
      {QStringLiteral("h"), Language::C},           {QStringLiteral("hpp"), Language::C},
      {QStringLiteral("cuda"), Language::C},        {QStringLiteral("python"), Language::Python},
      {QStringLiteral("py"), Language::Python},     {QStringLiteral("javascript"), Language::JavaScript},
      {QStringLiteral("js"), Language::JavaScript}, {QStringLiteral("typescript"), Language::JavaScript},
      {QStringLiteral("ts"), Language::JavaScript}, {QStringLiteral("bash"), Language::Shell},
      {QStringLiteral("sh"), Language::Shell},      {QStringLiteral("shell"), Language::Shell},
      {QStringLiteral("console"), Language::Shell}, {QStringLiteral("json"), Language::Json}};
  return names.value(name.toLower(), Language::None);
}

QSet<QString> keywords_of(Language language) {
  auto set = [](const char* words) {
    QSet<QString> result;
    for (const QString& word : QString::fromLatin1(words).split(QLatin1Char(' '))) result.insert(word);
    return result;
  };
  switch (language) {
    case Language::C:
      return set("auto bool break case catch char class const constexpr continue default delete do double else enum "
                 "explicit extern false float for friend if inline int long namespace new noexcept nullptr operator "
                 "private protected public return short signed sizeof static struct switch template this throw true "
                 "try typedef typename union unsigned using virtual void volatile while include define ifdef ifndef "
                 "endif pragma");
    case Language::Python:
      return set("and as assert async await break class continue def del elif else except False finally for from "
                 "global if import in is lambda None nonlocal not or pass raise return True try while with yield");
    case Language::JavaScript:
      return set("async await break case catch class const continue default delete do else export extends false "
                 "finally for function if import in instanceof interface let new null of return switch this throw "
                 "true try type typeof undefined var void while yield");
    case Language::Shell:
      return set("case do done elif else esac export fi for function if in local return then until while");
    case Language::Json:
      return set("true false null");
    case Language::None:
      break;
  }
  return {};
}

// Where a comment starts: "//" and "/* */" (C, JavaScript), "#" (Python, shell).
bool line_comment_at(Language language, const QString& code, qsizetype i) {
  if (language == Language::Python || language == Language::Shell)
    return code[i] == QLatin1Char('#') && (language == Language::Python || i == 0 || code[i - 1].isSpace());
  if (language == Language::C || language == Language::JavaScript)
    return code.mid(i, 2) == QStringLiteral("//");
  return false;
}

}  // namespace

QList<AnswerPart> split_code_blocks(const QString& answer) {
  // A fence: three or more backticks or tildes at a line's start (up to three spaces in), then
  // the language; the block ends at a line of the same fence.
  static const QRegularExpression opening(QStringLiteral("^ {0,3}(`{3,}|~{3,})[ \\t]*([^`\\s]*)[^\\n]*$"),
                                          QRegularExpression::MultilineOption);
  QList<AnswerPart> parts;
  qsizetype at = 0;
  while (at < answer.size()) {
    const QRegularExpressionMatch open = opening.match(answer, at);
    if (!open.hasMatch()) break;
    if (open.capturedStart() > at) parts.append({false, answer.mid(at, open.capturedStart() - at), {}});
    const QString fence = open.captured(1);
    const qsizetype body = std::min(answer.size(), open.capturedEnd() + 1);
    const QRegularExpression closing(QStringLiteral("^ {0,3}%1%2*[ \\t]*$")
                                         .arg(QRegularExpression::escape(fence), QRegularExpression::escape(fence.left(1))),
                                     QRegularExpression::MultilineOption);
    const QRegularExpressionMatch close = closing.match(answer, body);
    const qsizetype body_end = close.hasMatch() ? close.capturedStart() : answer.size();
    QString code = answer.mid(body, body_end - body);
    if (code.endsWith(QLatin1Char('\n'))) code.chop(1);
    parts.append({true, code, open.captured(2).toLower()});
    at = close.hasMatch() ? std::min(answer.size(), close.capturedEnd() + 1) : answer.size();
  }
  if (at < answer.size()) parts.append({false, answer.mid(at), {}});
  return parts;
}

QString code_block(const QString& answer, qsizetype index) {
  qsizetype seen = 0;
  for (const AnswerPart& part : split_code_blocks(answer))
    if (part.code && seen++ == index) return part.text;
  return {};
}

bool highlighted_language(const QString& language) { return language_of(language) != Language::None; }

QList<CodeRun> highlight_code(const QString& code, const QString& language) {
  const Language lang = language_of(language);
  QList<CodeRun> runs;
  if (lang == Language::None) return runs;
  const QSet<QString> keywords = keywords_of(lang);
  const qsizetype n = code.size();
  qsizetype i = 0;
  while (i < n) {
    const QChar c = code[i];
    if (line_comment_at(lang, code, i)) {
      const qsizetype end = code.indexOf(QLatin1Char('\n'), i);
      const qsizetype stop = end < 0 ? n : end;
      runs.append({CodeRun::Kind::Comment, i, stop - i});
      i = stop;
    } else if ((lang == Language::C || lang == Language::JavaScript) && code.mid(i, 2) == QStringLiteral("/*")) {
      const qsizetype end = code.indexOf(QStringLiteral("*/"), i + 2);
      const qsizetype stop = end < 0 ? n : end + 2;
      runs.append({CodeRun::Kind::Comment, i, stop - i});
      i = stop;
    } else if (c == QLatin1Char('"') || c == QLatin1Char('\'') || (c == QLatin1Char('`') && lang == Language::JavaScript)) {
      // A string to its closing quote (a backslash escapes one), or to the line's end.
      qsizetype j = i + 1;
      while (j < n && code[j] != c && (code[j] != QLatin1Char('\n') || c == QLatin1Char('`')))
        j += code[j] == QLatin1Char('\\') ? 2 : 1;
      const qsizetype stop = std::min(n, j + 1);
      runs.append({CodeRun::Kind::String, i, stop - i});
      i = stop;
    } else if (c.isDigit() && (i == 0 || !(code[i - 1].isLetterOrNumber() || code[i - 1] == QLatin1Char('_')))) {
      qsizetype j = i;
      while (j < n && (code[j].isLetterOrNumber() || code[j] == QLatin1Char('.') || code[j] == QLatin1Char('\'')))
        ++j;
      runs.append({CodeRun::Kind::Number, i, j - i});
      i = j;
    } else if (c.isLetter() || c == QLatin1Char('_')) {
      qsizetype j = i;
      while (j < n && (code[j].isLetterOrNumber() || code[j] == QLatin1Char('_'))) ++j;
      if (keywords.contains(code.mid(i, j - i))) runs.append({CodeRun::Kind::Keyword, i, j - i});
      i = j;
    } else {
      ++i;
    }
  }
  return runs;
}

}  // namespace lightdesk::gui
