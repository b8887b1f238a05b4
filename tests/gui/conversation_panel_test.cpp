#include <QLabel>
#include <QPlainTextEdit>
#include <QSignalSpy>
#include <QTest>
#include <QTextBlock>
#include <QTextBrowser>

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
  QPalette dark;
  dark.setColor(QPalette::Window, QColor(0x2d, 0x2d, 0x2d));
  dark.setColor(QPalette::WindowText, QColor(0xee, 0xee, 0xee));
  dark.setColor(QPalette::Base, QColor(0x1e, 0x1e, 0x1e));
  dark.setColor(QPalette::Text, QColor(0xee, 0xee, 0xee));
  dark.setColor(QPalette::ToolTipBase, QColor(0x3b, 0x3b, 0x3b));
  dark.setColor(QPalette::ToolTipText, QColor(0xf0, 0xf0, 0xf0));
  for (const QPalette& palette : {QPalette(QColor(0xef, 0xef, 0xef)), dark}) {
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
