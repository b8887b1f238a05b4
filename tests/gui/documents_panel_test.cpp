#include <QLabel>
#include <QListWidget>
#include <QPushButton>
#include <QSignalSpy>
#include <QTest>

#include "documents_panel.h"
#include "panel_tests.h"

using lightdesk::gui::Attachment;
using lightdesk::gui::ChatEntry;
using lightdesk::gui::DocumentsPanel;

void DocumentsPanelTest::listsSentPendingAndReading() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  DocumentsPanel panel;
  panel.show();
  DocumentsPanel::Contents contents;
  contents.sent = {{ChatEntry::Role::User, QStringLiteral("Q"), {}, {{QStringLiteral("/d/sent.txt"), {}, {}, 24571}}, {}}};
  contents.pending = {{QStringLiteral("/d/next.pdf"), {}, {0, 100}, 1200}};
  contents.reading = {QStringLiteral("/d/big.txt")};
  contents.context_tokens = 4194304;
  panel.setContents(contents);
  auto* list = panel.findChild<QListWidget*>(QStringLiteral("attachmentList"));
  QCOMPARE(list->count(), 3);
  QCOMPARE(list->item(0)->text(), QStringLiteral("sent.txt — 24,571 tokens (sent)"));
  QCOMPARE(list->item(1)->text(), QStringLiteral("next.pdf — 1,200 tokens in 2 pages"));
  QCOMPARE(list->item(2)->text(), QStringLiteral("big.txt — reading…"));
  QCOMPARE(panel.documentTokens(), 25771);
  // Only what is not sent yet can be removed.
  QSignalSpy removed(&panel, &DocumentsPanel::removeRequested);
  list->setCurrentRow(0);
  QMetaObject::invokeMethod(&panel, [&panel] {
    for (auto* button : panel.findChildren<QPushButton*>())
      if (button->text() == QStringLiteral("Remove")) button->click();
  });
  QCOMPARE(removed.size(), 0);
  list->setCurrentRow(1);
  for (auto* button : panel.findChildren<QPushButton*>())
    if (button->text() == QStringLiteral("Remove")) button->click();
  QCOMPARE(removed.size(), 1);
  QCOMPARE(removed.front().at(0).toBool(), false);
  QCOMPARE(removed.front().at(1).toLongLong(), 0);
  QLocale::setDefault(QLocale::system());
}

// Finding 3: documents larger than the context are flagged where they are listed.
void DocumentsPanelTest::warnsWhenTheDocumentsExceedTheContext() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  DocumentsPanel panel;
  panel.show();
  DocumentsPanel::Contents contents;
  contents.pending = {{QStringLiteral("/d/a.txt"), {}, {}, 3000}, {QStringLiteral("/d/b.txt"), {}, {}, 3000}};
  contents.context_tokens = 4096;
  panel.setContents(contents);
  auto* total = panel.findChild<QLabel*>(QStringLiteral("documentTotal"));
  QVERIFY(total->isVisible());
  QVERIFY2(total->text().contains(QStringLiteral("6,000 tokens: more than the model's context of 4,096 tokens")),
           qPrintable(total->text()));
  contents.pending.removeLast();
  panel.setContents(contents);
  QVERIFY2(total->text().startsWith(QStringLiteral("3,000 of the model's 4,096 tokens")), qPrintable(total->text()));
  QLocale::setDefault(QLocale::system());
}

// Finding 11: a long name is shortened in its middle, so its count and "(sent)" stay whole, and
// the whole line and path are in the tooltip.
void DocumentsPanelTest::longNamesKeepTheirEndsAndATooltip() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  DocumentsPanel panel;
  panel.resize(220, 300);
  panel.show();
  QVERIFY(QTest::qWaitForWindowExposed(&panel));
  DocumentsPanel::Contents contents;
  const QString path = QStringLiteral("/d/a-document-with-a-very-long-name-indeed-quarterly-report-2026.txt");
  contents.sent = {{ChatEntry::Role::User, QStringLiteral("Q"), {}, {{path, {}, {}, 1291}}, {}}};
  panel.setContents(contents);
  auto* list = panel.findChild<QListWidget*>(QStringLiteral("attachmentList"));
  const QString line = list->item(0)->text();
  QVERIFY2(line.endsWith(QStringLiteral(" — 1,291 tokens (sent)")), qPrintable(line));
  QVERIFY2(line.startsWith(QStringLiteral("a-d")) && line.contains(QStringLiteral("…")), qPrintable(line));
  QVERIFY(list->fontMetrics().horizontalAdvance(line) <= list->viewport()->width());
  QVERIFY(list->item(0)->toolTip().contains(path));
  QVERIFY(list->item(0)->toolTip().contains(QStringLiteral("a-document-with-a-very-long-name-indeed-quarterly-report-2026.txt — 1,291 tokens (sent)")));
  QLocale::setDefault(QLocale::system());
}
