// Runs every panel's tests (offscreen); the exit status counts the failed classes.
#include <QApplication>
#include <QTest>

#include "panel_tests.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  int failed = 0;
  SessionPanelTest sessions;
  ConversationPanelTest conversation;
  DocumentsPanelTest documents;
  StatusPanelTest status;
  DocumentViewerTest viewer;
  for (QObject* test : std::initializer_list<QObject*>{&sessions, &conversation, &documents, &status, &viewer})
    failed += QTest::qExec(test, argc, argv) != 0 ? 1 : 0;
  return failed;
}
