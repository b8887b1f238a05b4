#include <QLabel>
#include <QPlainTextEdit>
#include <QSpinBox>
#include <QTextBlock>
#include <QListWidget>
#include <QPushButton>
#include <QSignalSpy>
#include <QTest>

#include "answer_sources.h"
#include "document_viewer.h"
#include "documents_panel.h"
#include "panel_tests.h"

using lightdesk::gui::Attachment;
using lightdesk::gui::ChatEntry;
using lightdesk::gui::DocumentsPanel;
using lightdesk::gui::DocumentViewer;

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

// Server mode: the server's tokenizer counts a document it reads, so none is shown here (not "0
// tokens"), and the total is of the documents counted here.
void DocumentsPanelTest::documentsAServerReadSayWhoCountsThem() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  DocumentsPanel panel;
  panel.resize(600, 300);  // room for the longer lines unshortened
  panel.show();
  DocumentsPanel::Contents contents;
  contents.sent = {{ChatEntry::Role::User, QStringLiteral("Q"), {}, {{QStringLiteral("/d/sent.txt"), {}, {}, std::nullopt}}, {}}};
  contents.pending = {{QStringLiteral("/d/next.txt"), {}, {}, 1200}, {QStringLiteral("/d/remote.pdf"), {}, {0, 9}, {}}};
  contents.context_tokens = 4096;
  panel.setContents(contents);
  auto* list = panel.findChild<QListWidget*>(QStringLiteral("attachmentList"));
  QCOMPARE(list->count(), 3);
  QCOMPARE(list->item(0)->text(), QStringLiteral("sent.txt — tokens counted by the server (sent)"));
  QCOMPARE(list->item(1)->text(), QStringLiteral("next.txt — 1,200 tokens"));
  QCOMPARE(list->item(2)->text(), QStringLiteral("remote.pdf — 2 pages, tokens counted by the server"));
  QCOMPARE(panel.documentTokens(), 1200);
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

namespace {

const QString kContract = QStringLiteral(
    "Clause 1. The tenant pays the rent on the first day of each month.\n"
    "Clause 2. Pets are not allowed.\n\nClause 3. The tenant  pays the rent\non the first day of each month, "
    "or the deposit is kept.");

}  // namespace

// The longest run of five or more of the answer's words, compared without case and with any
// whitespace as one space, found everywhere it occurs.
void DocumentViewerTest::answerSourcesFindTheLongestRunEverywhere() {
  using lightdesk::gui::find_answer_sources;
  const QList<Attachment> documents{{QStringLiteral("/d/notes.txt"), QStringLiteral("Nothing to see here."), {}, 5},
                                    {QStringLiteral("/d/contract.txt"), kContract, {}, 50}};
  const auto found = find_answer_sources(
      QStringLiteral("It says THE TENANT PAYS the rent on the first day of each month as agreed."), documents);
  QCOMPARE(found.words, 11);  // "the tenant ... of each": "month" is neither "month." nor "month,"
  QCOMPARE(found.run, QStringLiteral("THE TENANT PAYS the rent on the first day of each"));
  QCOMPARE(found.sources.size(), 2);
  QCOMPARE(found.sources[0].document, 1);
  QCOMPARE(kContract.mid(found.sources[0].position, found.sources[0].length),
           QStringLiteral("The tenant pays the rent on the first day of each"));
  QCOMPARE(kContract.mid(found.sources[1].position, found.sources[1].length),
           QStringLiteral("The tenant  pays the rent\non the first day of each"));
  QCOMPARE(found.sources[0].page, 0);
  // Four words in a row are not enough.
  QCOMPARE(find_answer_sources(QStringLiteral("See clause 2. pets are NOT"), documents).sources.size(), 1);
  QCOMPARE(find_answer_sources(QStringLiteral("pets are not allowed"), documents).words, 0);
  QVERIFY(find_answer_sources(QStringLiteral("pets are not allowed"), documents).sources.isEmpty());
  QVERIFY(find_answer_sources(QStringLiteral("The rent is due on Mondays."), documents).sources.isEmpty());
}

// A PDF's page anchors: the viewer opens at a page, says which page a place is on, and searches.
void DocumentViewerTest::viewerOpensAtAPageAndSearches() {
  QLocale::setDefault(QLocale(QLocale::English, QLocale::UnitedStates));
  // Page offsets count UTF-8 bytes: "é" is two of them.
  const QString text = QStringLiteral("Page one, café.\nPage two has the key.\nPage three repeats the key.");
  const qint64 second = QStringLiteral("Page one, café.\n").toUtf8().size();
  const qint64 third = second + QStringLiteral("Page two has the key.\n").toUtf8().size();
  const Attachment pdf{QStringLiteral("/d/report.pdf"), text, {0, second, third}, 30};
  QCOMPARE(lightdesk::gui::page_start(pdf, 2), text.indexOf(QStringLiteral("Page two")));
  QCOMPARE(lightdesk::gui::page_at(pdf, text.indexOf(QStringLiteral("three"))), 3);
  DocumentViewer viewer;
  viewer.show();
  viewer.open(pdf);
  auto* page = viewer.findChild<QSpinBox*>(QStringLiteral("pageBox"));
  QVERIFY(page->isVisible());
  QCOMPARE(page->maximum(), 3);
  page->setValue(2);
  auto* text_view = viewer.findChild<QPlainTextEdit*>(QStringLiteral("documentText"));
  QCOMPARE(text_view->textCursor().block().text(), QStringLiteral("Page two has the key."));
  QVERIFY(viewer.find(QStringLiteral("KEY")));
  QCOMPARE(viewer.highlighted(), QStringLiteral("key"));
  QCOMPARE(viewer.findChild<QLabel*>(QStringLiteral("documentSearchResult"))->text(), QStringLiteral("2 matches"));
  QVERIFY(viewer.find(QStringLiteral("key")));
  QCOMPARE(page->value(), 3);  // the second match is on page 3
  QVERIFY(viewer.find(QStringLiteral("key")));  // wraps around to the first
  QCOMPARE(page->value(), 2);
  QVERIFY(!viewer.find(QStringLiteral("lock")));
  QVERIFY(viewer.findChild<QLabel*>(QStringLiteral("documentSearchResult"))->text().contains(QStringLiteral("not in")));
  // A text document has no pages to choose.
  viewer.open({QStringLiteral("/d/plain.txt"), QStringLiteral("plain text"), {}, 2});
  QVERIFY(!page->isVisible());
}

void DocumentViewerTest::showSourcesHighlightsOrSaysNotFound() {
  const QList<Attachment> documents{{QStringLiteral("/d/contract.txt"), kContract, {}, 50}};
  DocumentViewer viewer;
  viewer.show();
  viewer.showSources(documents, lightdesk::gui::find_answer_sources(
                                    QStringLiteral("the tenant pays the rent on the first day"), documents));
  auto* list = viewer.findChild<QListWidget*>(QStringLiteral("sourcesList"));
  QCOMPARE(list->count(), 2);
  QCOMPARE(list->item(0)->text(), QStringLiteral("contract.txt, character 11"));
  QCOMPARE(viewer.highlighted(), QStringLiteral("The tenant pays the rent on the first day"));
  list->setCurrentRow(1);
  QCOMPARE(viewer.highlighted().simplified(), QStringLiteral("The tenant pays the rent on the first day"));
  auto* label = viewer.findChild<QLabel*>(QStringLiteral("sourcesLabel"));
  QVERIFY2(label->text().contains(QStringLiteral("occurs 2 times")), qPrintable(label->text()));

  viewer.showSources(documents, lightdesk::gui::find_answer_sources(QStringLiteral("Nothing like it."), documents));
  QVERIFY(label->text().startsWith(QStringLiteral("Not found")));
  QVERIFY(!list->isVisible());
}

// Double-clicking a listed document (or Open) asks for it to be read in the document pane.
void DocumentViewerTest::documentsPanelOpensADocument() {
  DocumentsPanel panel;
  panel.show();
  DocumentsPanel::Contents contents;
  contents.sent = {{ChatEntry::Role::User, QStringLiteral("Q"), {}, {{QStringLiteral("/d/sent.txt"), QStringLiteral("sent text"), {}, 2}}, {}}};
  contents.pending = {{QStringLiteral("/d/next.txt"), QStringLiteral("next text"), {}, 2}};
  panel.setContents(contents);
  QSignalSpy open(&panel, &DocumentsPanel::openRequested);
  auto* list = panel.findChild<QListWidget*>(QStringLiteral("attachmentList"));
  emit list->itemActivated(list->item(1));
  QCOMPARE(open.size(), 1);
  QCOMPARE(open.front().front().value<Attachment>().text, QStringLiteral("next text"));
  list->setCurrentRow(0);
  panel.findChild<QPushButton*>(QStringLiteral("openDocumentButton"))->click();
  QCOMPARE(open.size(), 2);
  QCOMPARE(open.back().front().value<Attachment>().path, QStringLiteral("/d/sent.txt"));
}
