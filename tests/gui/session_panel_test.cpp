#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QScrollBar>
#include <QSignalSpy>
#include <QTest>

#include "panel_tests.h"
#include "session_panel.h"

using lightdesk::gui::ChatSession;
using lightdesk::gui::MessageHit;
using lightdesk::gui::SessionPanel;

void SessionPanelTest::listsSessionsAndSaysWhichWasChosen() {
  SessionPanel panel;
  panel.show();
  panel.setSessions({{1, QStringLiteral("Budget"), {}, {}}, {2, QStringLiteral("Notes"), {}, {}}}, 2);
  auto* list = panel.findChild<QListWidget*>(QStringLiteral("sessionList"));
  QCOMPARE(list->count(), 2);
  QCOMPARE(list->currentItem()->text(), QStringLiteral("Notes"));
  QSignalSpy selected(&panel, &SessionPanel::sessionSelected);
  QTest::mouseClick(list->viewport(), Qt::LeftButton, {}, list->visualItemRect(list->item(0)).center());
  QCOMPARE(selected.size(), 1);
  QCOMPARE(selected.front().front().toLongLong(), 1);
  QSignalSpy renamed(&panel, &SessionPanel::sessionRenamed);
  list->item(1)->setText(QStringLiteral("Meeting notes"));
  QCOMPARE(renamed.size(), 1);
  QCOMPARE(renamed.front().at(1).toString(), QStringLiteral("Meeting notes"));
}

// Finding 7: a hit's snippet is shown whole, wrapped under its session's title, without a
// horizontal scroll bar and without the store's brackets.
void SessionPanelTest::searchResultsWrapWithTheMatchInBold() {
  SessionPanel panel;
  panel.resize(220, 500);
  panel.show();
  QVERIFY(QTest::qWaitForWindowExposed(&panel));
  QSignalSpy asked(&panel, &SessionPanel::searchRequested);
  QTest::keyClicks(panel.findChild<QLineEdit*>(QStringLiteral("searchBox")), QStringLiteral("pass"));
  QTRY_COMPARE(asked.size(), 1);
  QCOMPARE(asked.front().front().toString(), QStringLiteral("pass"));
  const QString snippet = QStringLiteral("...the [pass] key is 68937, written on the back of the blue chest's lid...");
  panel.setSearchResults({{7, 3, snippet, 11}}, {{7, QStringLiteral("Where did Karl hide the letter?")}});
  auto* results = panel.findChild<QListWidget*>(QStringLiteral("searchResults"));
  QVERIFY(results->isVisible());
  QCOMPARE(results->horizontalScrollBarPolicy(), Qt::ScrollBarAlwaysOff);
  auto* label = qobject_cast<QLabel*>(results->itemWidget(results->item(0)));
  QVERIFY(label);
  QVERIFY(label->wordWrap());
  QVERIFY2(label->text().contains(QStringLiteral("<b>pass</b>")), qPrintable(label->text()));
  QVERIFY(!label->text().contains(QLatin1Char('[')));
  QVERIFY2(label->text().contains(QStringLiteral("blue chest")), qPrintable(label->text()));
  // The row is as tall as the wrapped text needs.
  QVERIFY(results->item(0)->sizeHint().height() >= label->heightForWidth(results->item(0)->sizeHint().width()));
  QSignalSpy activated(&panel, &SessionPanel::hitActivated);
  QTest::mouseClick(results->viewport(), Qt::LeftButton, {}, results->visualItemRect(results->item(0)).center());
  QCOMPARE(activated.size(), 1);
  QCOMPARE(activated.front().at(0).toLongLong(), 7);
  QCOMPARE(activated.front().at(1).toLongLong(), 3);
  QCOMPARE(activated.front().at(2).toLongLong(), 11);
}

void SessionPanelTest::snippetMarkersBecomeBold() {
  QCOMPARE(SessionPanel::snippetHtml(QStringLiteral("...The [pass] key...")), QStringLiteral("…The <b>pass</b> key…"));
  QCOMPARE(SessionPanel::snippetHtml(QStringLiteral("a <tag> & [b]")), QStringLiteral("a &lt;tag&gt; &amp; <b>b</b>"));
  QCOMPARE(SessionPanel::snippetHtml(QStringLiteral("plain")), QStringLiteral("plain"));
}
