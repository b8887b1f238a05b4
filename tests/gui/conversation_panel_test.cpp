#include <QClipboard>
#include <QGuiApplication>
#include <QLabel>
#include <QPlainTextEdit>
#include <QSignalSpy>
#include <QTest>
#include <QTextBlock>
#include <QTextBrowser>
#include <QTextFrame>

#include "code_blocks.h"
#include "conversation_panel.h"
#include "panel_tests.h"

using lightdesk::gui::ChatEntry;
using lightdesk::gui::ConversationPanel;

namespace {

QList<ChatEntry> two_turns() {
  return {{ChatEntry::Role::User, QStringLiteral("Where is the letter?"), {}, {{QStringLiteral("/tmp/demo.txt"), {}, {}, 10}}, {}},
          {ChatEntry::Role::Assistant, QStringLiteral("In the blue chest."), {}, {}, {}}};
}

// The foreground of the first fragment holding `text`.
QColor colour_of(const QTextDocument& document, const QString& text) {
  for (QTextBlock block = document.begin(); block.isValid(); block = block.next())
    for (auto fragment = block.begin(); !fragment.atEnd(); ++fragment)
      if (fragment.fragment().text().contains(text)) return fragment.fragment().charFormat().foreground().color();
  return {};
}

}  // namespace

// Finding 1: a typed draft survives an edit; Esc brings it back.
void ConversationPanelTest::editKeepsTheDraftAndEscBringsItBack() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(two_turns(), std::nullopt, true);
  auto* input = panel.findChild<QPlainTextEdit*>(QStringLiteral("input"));
  QTest::keyClicks(input, QStringLiteral("my half-written follow-up"));
  panel.beginEdit(0, QStringLiteral("Where is the letter?"));
  QCOMPARE(input->toPlainText(), QStringLiteral("Where is the letter?"));
  QVERIFY(panel.findChild<QLabel*>(QStringLiteral("editBar"))->isVisible());
  QTest::keyClick(input, Qt::Key_Escape);
  QCOMPARE(input->toPlainText(), QStringLiteral("my half-written follow-up"));
  QVERIFY(!panel.findChild<QLabel*>(QStringLiteral("editBar"))->isVisible());
  QVERIFY(!panel.editing());
}

// Finding 8: a message with siblings shows "‹ 2/3 ›" whose arrows ask for the others.
void ConversationPanelTest::branchSwitcherLinksTheSiblings() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(two_turns(), std::nullopt, true, {{0, {2, 3}}});
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  QVERIFY2(transcript->toPlainText().contains(QStringLiteral("‹ 2/3 ›")), qPrintable(transcript->toPlainText()));
  const QString html = transcript->toHtml();
  QVERIFY(html.contains(QStringLiteral("branch:0:1")));
  QVERIFY(html.contains(QStringLiteral("branch:0:3")));
  QSignalSpy branch(&panel, &ConversationPanel::branchRequested);
  emit transcript->anchorClicked(QUrl(QStringLiteral("branch:0:3")));
  QCOMPARE(branch.size(), 1);
  QCOMPARE(branch.front().at(0).toLongLong(), 0);
  QCOMPARE(branch.front().at(1).toInt(), 3);
  // No switcher for a message without siblings, and none while an answer streams.
  panel.showConversation(two_turns(), ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}}, false, {{0, {2, 3}}});
  QVERIFY(!transcript->toHtml().contains(QStringLiteral("branch:")));
}

// Finding 10: in a dark theme the edit bar, "You" and "Documents:" keep a readable contrast.
void ConversationPanelTest::darkPaletteKeepsTheTextReadable() {
  for (const QPalette& palette : {QPalette(QColor(0xef, 0xef, 0xef)), lightdesk::gui::dark_palette()}) {
    ConversationPanel panel;
    panel.setPalette(palette);
    panel.show();
    panel.showConversation(two_turns(), std::nullopt, true);
    panel.beginEdit(0, QStringLiteral("Where is the letter?"));
    auto* bar = panel.findChild<QLabel*>(QStringLiteral("editBar"));
    const QColor bar_text = bar->palette().color(bar->foregroundRole());
    const QColor bar_background = bar->palette().color(bar->backgroundRole());
    QVERIFY2(lightdesk::gui::contrast_ratio(bar_text, bar_background) >= 4.5,
             qPrintable(bar_text.name() + QStringLiteral(" on ") + bar_background.name()));
    const QTextDocument& document = *panel.findChild<QTextBrowser*>(QStringLiteral("transcript"))->document();
    const QColor base = palette.color(QPalette::Base);
    for (const QString& text : {QStringLiteral("You"), QStringLiteral("Documents:")}) {
      const QColor colour = colour_of(document, text);
      QVERIFY2(colour.isValid(), qPrintable(text));
      QVERIFY2(lightdesk::gui::contrast_ratio(colour, base) >= 4.5,
               qPrintable(text + QStringLiteral(": ") + colour.name() + QStringLiteral(" on ") + base.name()));
    }
  }
}

// Finding 7: the message a search opens has the searched word selected.
void ConversationPanelTest::searchedWordIsSelected() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(two_turns(), std::nullopt, true);
  panel.showEntry(1, QStringLiteral("chest"));
  const QTextCursor cursor = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"))->textCursor();
  QCOMPARE(cursor.selectedText(), QStringLiteral("chest"));
  QVERIFY(cursor.block().text().contains(QStringLiteral("In the blue chest.")));
}

namespace {

const QString kCodeAnswer = QStringLiteral(
    "Run this:\n\n```python\ndef answer():\n    return \"42\"  # the answer\n```\n\nThen `answer()` says 42.");

QList<ChatEntry> code_turns() {
  return {{ChatEntry::Role::User, QStringLiteral("How do I get the answer?"), {}, {}, {}},
          {ChatEntry::Role::Assistant, kCodeAnswer, {}, {}, {}}};
}

}  // namespace

// "⧉ Copy" on a message copies its text; "⧉ Copy code" copies only the code of that block.
void ConversationPanelTest::copyLinksCopyTheMessageAndItsCode() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(code_turns(), std::nullopt, true);
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  const QString html = transcript->toHtml();
  QVERIFY(html.contains(QStringLiteral("copy:0")));
  QVERIFY(html.contains(QStringLiteral("copy:1")));
  QVERIFY(html.contains(QStringLiteral("copycode:1:0")));
  QGuiApplication::clipboard()->clear();
  emit transcript->anchorClicked(QUrl(QStringLiteral("copy:1")));
  QCOMPARE(QGuiApplication::clipboard()->text(), kCodeAnswer);
  emit transcript->anchorClicked(QUrl(QStringLiteral("copycode:1:0")));
  QCOMPARE(QGuiApplication::clipboard()->text(), QStringLiteral("def answer():\n    return \"42\"  # the answer"));
  // While an answer streams there is nothing finished to copy from it.
  panel.showConversation(code_turns(), ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}}, false);
  QVERIFY(!transcript->toHtml().contains(QStringLiteral("copy:")));
}

// A code block is a frame of its own in a fixed-pitch font, its keywords, strings and comments
// coloured; the prose around it stays Markdown.
void ConversationPanelTest::codeBlocksAreColouredMonospaceFrames() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(code_turns(), std::nullopt, true);
  const QTextDocument& document = *panel.findChild<QTextBrowser*>(QStringLiteral("transcript"))->document();
  const QList<QTextFrame*> frames = document.rootFrame()->childFrames();
  QCOMPARE(frames.size(), 1);
  QVERIFY(frames.front()->frameFormat().border() > 0);
  QTextCursor inside = frames.front()->firstCursorPosition();
  inside.setPosition(frames.front()->lastPosition(), QTextCursor::KeepAnchor);
  QCOMPARE(inside.selectedText().replace(QChar::ParagraphSeparator, QLatin1Char('\n')),
           QStringLiteral("def answer():\n    return \"42\"  # the answer"));
  auto format_of = [&document](const QString& text) {
    for (QTextBlock block = document.begin(); block.isValid(); block = block.next())
      for (auto fragment = block.begin(); !fragment.atEnd(); ++fragment)
        if (fragment.fragment().text() == text) return fragment.fragment().charFormat();
    return QTextCharFormat();
  };
  const QTextCharFormat keyword = format_of(QStringLiteral("def"));
  const QTextCharFormat string = format_of(QStringLiteral("\"42\""));
  const QTextCharFormat comment = format_of(QStringLiteral("# the answer"));
  QVERIFY(keyword.isValid() && string.isValid() && comment.isValid());
  QVERIFY(QFontInfo(keyword.font()).fixedPitch());
  QVERIFY(keyword.foreground().color() != string.foreground().color());
  QVERIFY(comment.fontItalic());
  QVERIFY(document.toPlainText().contains(QStringLiteral("Then answer() says 42.")));
}

void ConversationPanelTest::fencesSplitAndLanguagesColour() {
  using lightdesk::gui::CodeRun;
  const QList<lightdesk::gui::AnswerPart> parts = lightdesk::gui::split_code_blocks(
      QStringLiteral("A\n~~~bash\necho \"hi\" # say\n~~~\nB\n```\nplain\n```\n```cpp\nint x = 1; // unclosed"));
  QCOMPARE(parts.size(), 5);
  QCOMPARE(parts[0].text, QStringLiteral("A\n"));
  QVERIFY(parts[1].code);
  QCOMPARE(parts[1].language, QStringLiteral("bash"));
  QCOMPARE(parts[1].text, QStringLiteral("echo \"hi\" # say"));
  QCOMPARE(parts[2].text, QStringLiteral("B\n"));
  QVERIFY(parts[3].code && parts[3].language.isEmpty());
  QCOMPARE(parts[4].text, QStringLiteral("int x = 1; // unclosed"));  // an answer still streaming
  QCOMPARE(lightdesk::gui::code_block(kCodeAnswer, 1), QString());

  const QString cpp = QStringLiteral("int x = 10; /* c */ return \"a\\\"b\";");
  const QList<CodeRun> runs = lightdesk::gui::highlight_code(cpp, QStringLiteral("cpp"));
  QStringList seen;
  for (const CodeRun& run : runs) seen.append(cpp.mid(run.start, run.length));
  QCOMPARE(seen, QStringList({QStringLiteral("int"), QStringLiteral("10"), QStringLiteral("/* c */"),
                              QStringLiteral("return"), QStringLiteral("\"a\\\"b\"")}));
  // A language without a highlighter stays plain; a '#' inside a shell word is no comment.
  QVERIFY(lightdesk::gui::highlight_code(cpp, QStringLiteral("cobol")).isEmpty());
  QVERIFY(!lightdesk::gui::highlighted_language(QStringLiteral("cobol")));
  const QList<CodeRun> shell = lightdesk::gui::highlight_code(QStringLiteral("echo a#b"), QStringLiteral("sh"));
  QCOMPARE(shell.size(), 0);
}

// Enter sends and Shift+Enter adds a line; with the setting off, Enter adds a line. Ctrl+Enter
// sends either way.
void ConversationPanelTest::enterSendsAndShiftEnterAddsALine() {
  ConversationPanel panel;
  panel.show();
  auto* input = panel.findChild<QPlainTextEdit*>(QStringLiteral("input"));
  QSignalSpy send(&panel, &ConversationPanel::sendRequested);
  QVERIFY(panel.enterSends());
  QTest::keyClicks(input, QStringLiteral("one"));
  QTest::keyClick(input, Qt::Key_Return, Qt::ShiftModifier);
  QTest::keyClicks(input, QStringLiteral("two"));
  QCOMPARE(send.size(), 0);
  QCOMPARE(input->toPlainText(), QStringLiteral("one\ntwo"));
  QTest::keyClick(input, Qt::Key_Return);
  QCOMPARE(send.size(), 1);
  QTest::keyClick(input, Qt::Key_Enter, Qt::KeypadModifier);
  QCOMPARE(send.size(), 2);
  panel.setEnterSends(false);
  QVERIFY(input->placeholderText().contains(QStringLiteral("Ctrl+Enter")));
  QTest::keyClick(input, Qt::Key_Return);
  QCOMPARE(send.size(), 2);
  QCOMPARE(input->toPlainText(), QStringLiteral("one\ntwo\n"));
  QTest::keyClick(input, Qt::Key_Return, Qt::ControlModifier);
  QCOMPARE(send.size(), 3);
}

// The answer being written says so, and grows as its pieces come.
void ConversationPanelTest::streamingAnswerIsMarkedAsWriting() {
  ConversationPanel panel;
  panel.show();
  panel.showConversation(two_turns().mid(0, 1), ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}}, false);
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  QVERIFY(transcript->toPlainText().contains(QStringLiteral("writing…")));
  panel.appendStreamed(QStringLiteral("In the blue"), false);
  panel.appendStreamed(QStringLiteral(" chest."), false);
  QVERIFY(transcript->toPlainText().endsWith(QStringLiteral("In the blue chest.")));
  panel.showConversation(two_turns(), std::nullopt, true);
  QVERIFY(!transcript->toPlainText().contains(QStringLiteral("writing…")));
}

// "Show in document" is offered on answers that have documents before them, and asks for the answer.
void ConversationPanelTest::showInDocumentOnlyWithDocuments() {
  ConversationPanel panel;
  panel.show();
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  panel.showConversation(code_turns(), std::nullopt, true);
  QVERIFY(!transcript->toHtml().contains(QStringLiteral("source:")));
  panel.showConversation(two_turns(), std::nullopt, true);
  QVERIFY(transcript->toHtml().contains(QStringLiteral("source:1")));
  QSignalSpy show(&panel, &ConversationPanel::showInDocumentRequested);
  emit transcript->anchorClicked(QUrl(QStringLiteral("source:1")));
  QCOMPARE(show.size(), 1);
  QCOMPARE(show.front().at(0).toLongLong(), 1);
}

// The session's system prompt at the top of the transcript: a short one shown whole, a longer one
// folded to its first line until its link is clicked; "✎ Change" asks for the session settings.
void ConversationPanelTest::systemPromptFoldsToItsFirstLine() {
  ConversationPanel panel;
  panel.show();
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  panel.setSystemPrompt(QStringLiteral("Be brief."));
  panel.showConversation(two_turns(), std::nullopt, true);
  QVERIFY2(transcript->toPlainText().startsWith(QStringLiteral("System prompt: Be brief.")), qPrintable(transcript->toPlainText()));
  QVERIFY(!transcript->toHtml().contains(QStringLiteral("systemprompt:")));
  panel.setSystemPrompt(QStringLiteral("Answer in French.\nCite the page of every fact."));
  panel.showConversation(two_turns(), std::nullopt, true);
  QVERIFY2(transcript->toPlainText().startsWith(QStringLiteral("▸ System prompt: Answer in French.…")),
           qPrintable(transcript->toPlainText()));
  QVERIFY(!transcript->toPlainText().contains(QStringLiteral("Cite the page")));
  emit transcript->anchorClicked(QUrl(QStringLiteral("systemprompt:")));
  QVERIFY(transcript->toPlainText().startsWith(QStringLiteral("▾ System prompt")));
  QVERIFY(transcript->toPlainText().contains(QStringLiteral("Answer in French.\nCite the page of every fact.")));
  QSignalSpy change(&panel, &ConversationPanel::systemPromptEditRequested);
  emit transcript->anchorClicked(QUrl(QStringLiteral("systempromptedit:")));
  QCOMPARE(change.size(), 1);
  // Not while an answer is written.
  panel.showConversation(two_turns(), ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}}, false);
  QVERIFY(!transcript->toPlainText().contains(QStringLiteral("✎ Change")));
}

// The answer being written, shown again (another session left and come back to, a palette
// change), keeps what came so far, and goes on from there.
void ConversationPanelTest::streamedTextSurvivesARerender() {
  ConversationPanel panel;
  panel.show();
  auto* transcript = panel.findChild<QTextBrowser*>(QStringLiteral("transcript"));
  QList<ChatEntry> question = two_turns().mid(0, 1);
  panel.showConversation(question, ChatEntry{ChatEntry::Role::Assistant, {}, {}, {}, {}}, false);
  panel.appendStreamed(QStringLiteral("Chests hold letters. "), true);
  panel.appendStreamed(QStringLiteral("In the blue"), false);
  panel.showConversation(question,
                         ChatEntry{ChatEntry::Role::Assistant, QStringLiteral("In the blue"),
                                   QStringLiteral("Chests hold letters. "), {}, {}},
                         false);
  panel.appendStreamed(QStringLiteral(" chest."), false);
  const QString text = transcript->toPlainText();
  QVERIFY2(text.endsWith(QStringLiteral("Chests hold letters. In the blue chest.")), qPrintable(text));
  QCOMPARE(text.count(QStringLiteral("Chests hold letters.")), 1);
  QVERIFY(!text.contains(QStringLiteral("Show reasoning")));
}
