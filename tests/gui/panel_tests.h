// The panels' QtTest classes, run one after another by panel_tests_main.cpp.
#pragma once

#include <QObject>

class SessionPanelTest : public QObject {
  Q_OBJECT
 private slots:
  void listsSessionsAndSaysWhichWasChosen();
  void searchResultsWrapWithTheMatchInBold();
  void snippetMarkersBecomeBold();
};

class ConversationPanelTest : public QObject {
  Q_OBJECT
 private slots:
  void editKeepsTheDraftAndEscBringsItBack();
  void branchSwitcherLinksTheSiblings();
  void darkPaletteKeepsTheTextReadable();
  void searchedWordIsSelected();
  void copyLinksCopyTheMessageAndItsCode();
  void codeBlocksAreColouredMonospaceFrames();
  void fencesSplitAndLanguagesColour();
  void enterSendsAndShiftEnterAddsALine();
  void streamingAnswerIsMarkedAsWriting();
  void showInDocumentOnlyWithDocuments();
  void systemPromptFoldsToItsFirstLine();
  void streamedTextSurvivesARerender();
};

class DocumentViewerTest : public QObject {
  Q_OBJECT
 private slots:
  void answerSourcesFindTheLongestRunEverywhere();
  void viewerOpensAtAPageAndSearches();
  void showSourcesHighlightsOrSaysNotFound();
  void documentsPanelOpensADocument();
};

class DocumentsPanelTest : public QObject {
  Q_OBJECT
 private slots:
  void listsSentPendingAndReading();
  void warnsWhenTheDocumentsExceedTheContext();
  void longNamesKeepTheirEndsAndATooltip();
};

class StatusPanelTest : public QObject {
  Q_OBJECT
 private slots:
  void messageAndFiguresDoNotOverlap();
  void noFiguresWithoutAToken();
  void memoryFigureIsRefreshed();
  void numbersUseTheLocalesGroups();
};
