#include <QLabel>
#include <QProgressBar>
#include <QTest>
#include <QTimer>

#include "panel_tests.h"
#include "status_panel.h"

using lightdesk::gui::ElidedLabel;
using lightdesk::gui::StatusPanel;

// Finding 5: a long message and the figures share the row without drawing over each other, also
// on a narrow window; the message is elided with the whole text in its tooltip.
void StatusPanelTest::messageAndFiguresDoNotOverlap() {
  for (const int width : {1100, 600}) {
    StatusPanel panel([] { return QStringLiteral("no GPU · host memory: 21.8 GB available"); });
    panel.resize(width, 30);
    panel.show();
    QVERIFY(QTest::qWaitForWindowExposed(&panel));
    const QString message = QStringLiteral("24 tokens generated. 35 prompt tokens read (24,648 kept from the session state).");
    panel.showMessage(message);
    panel.showAnswerFigures(30.2, 0.07);
    panel.showContext(24707, 4194304);
    QCoreApplication::processEvents();
    auto* shown = panel.findChild<ElidedLabel*>(QStringLiteral("statusMessage"));
    QCOMPARE(shown->fullText(), message);
    QCOMPARE(shown->toolTip(), message);
    QVERIFY(shown->fontMetrics().horizontalAdvance(shown->text()) <= shown->contentsRect().width());
    QList<QWidget*> row{shown};
    for (const char* name : {"speedLabel", "firstTokenLabel", "contextLabel", "memoryLabel"})
      row.append(panel.findChild<QLabel*>(QString::fromLatin1(name)));
    for (qsizetype i = 0; i < row.size(); ++i)
      for (qsizetype j = i + 1; j < row.size(); ++j)
        QVERIFY2(!row[i]->geometry().intersects(row[j]->geometry()),
                 qPrintable(row[i]->objectName() + QStringLiteral(" overlaps ") + row[j]->objectName()));
  }
}

// Finding 2: a stop before the first token shows no speed and no time to first token.
void StatusPanelTest::noFiguresWithoutAToken() {
  StatusPanel panel({});
  panel.showAnswerFigures(30.2, 0.5);
  QVERIFY(!panel.findChild<QLabel*>(QStringLiteral("speedLabel"))->text().isEmpty());
  panel.showAnswerFigures(0.0, -1);
  QVERIFY(panel.findChild<QLabel*>(QStringLiteral("speedLabel"))->text().isEmpty());
  QVERIFY(panel.findChild<QLabel*>(QStringLiteral("firstTokenLabel"))->text().isEmpty());
}

// Finding 6: the memory figure follows the machine, not only the model's load.
void StatusPanelTest::memoryFigureIsRefreshed() {
  int asked = 0;
  StatusPanel panel([&asked] { return QStringLiteral("host memory: reading %1").arg(++asked); });
  auto* timer = panel.findChild<QTimer*>(QStringLiteral("memoryTimer"));
  QVERIFY(timer && timer->isActive());
  timer->setInterval(10);
  QTRY_VERIFY(asked >= 3);
  QCOMPARE(panel.findChild<ElidedLabel*>(QStringLiteral("memoryLabel"))->fullText(),
           QStringLiteral("host memory: reading %1").arg(asked));
}

// Finding 12: every count is written one way, in the locale's digit groups.
void StatusPanelTest::numbersUseTheLocalesGroups() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  StatusPanel panel({});
  panel.showContext(24715, 4194304);
  QCOMPARE(panel.findChild<QLabel*>(QStringLiteral("contextLabel"))->text(), QStringLiteral("context: 24,715 / 4,194,304"));
  panel.showPrefillProgress(3584, 24605, 1234.4, 12.2);
  const QString progress = panel.findChild<QProgressBar*>(QStringLiteral("progressBar"))->format();
  QVERIFY2(progress.contains(QStringLiteral("3,584 of 24,605 tokens, 1,234 tokens/s, about 12 s left")), qPrintable(progress));
  panel.showPrefillProgress(512, 24605, 1234.4, -1);  // not known yet: no time at all
  QVERIFY(!panel.findChild<QProgressBar*>(QStringLiteral("progressBar"))->format().contains(QStringLiteral("left")));
  QCOMPARE(lightdesk::gui::format_count(5860160), QStringLiteral("5,860,160"));
  QLocale::setDefault(QLocale::system());
}
