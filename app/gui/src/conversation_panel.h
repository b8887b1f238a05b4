// The conversation pane: the transcript (questions, answers rendered as Markdown with code blocks
// in coloured monospace frames, the answer streaming in, reasoning folded away, "Copy",
// "✎ Edit", "⌕ Show in document" and "↻ Regenerate" links, "‹ 2/3 ›" between the branches of a
// message), the bar that says an earlier message is being edited, and the input
// box with Send and Stop. Colours come from the palette (light and dark themes alike).
#pragma once

#include <QWidget>

#include <map>
#include <optional>

#include "session_repository.h"

class QLabel;
class QPlainTextEdit;
class QPushButton;
class QTextBrowser;
class QUrl;

namespace lightdesk::gui {

class ConversationPanel : public QWidget {
  Q_OBJECT

 public:
  explicit ConversationPanel(QWidget* parent = nullptr);

  // Which of its siblings a message is: shown as "‹ index/count ›" when count > 1.
  struct Branches {
    int index = 1;  // 1-based
    int count = 1;
  };
  // Shows `entries`, then `streaming` (the answer being written, plain text until it ends) if
  // any; `idle` adds the edit and regenerate links. `branches`: by entry index.
  void showConversation(const QList<ChatEntry>& entries, const std::optional<ChatEntry>& streaming, bool idle,
                        const std::map<qsizetype, Branches>& branches = {});
  // The session's system prompt (empty: none), shown folded to its first line at the top of the
  // transcript from the next showConversation; a click unfolds it.
  void setSystemPrompt(const QString& prompt);
  // Appends a piece of the streaming answer.
  void appendStreamed(const QString& text, bool reasoning);
  // Moves the transcript to entry `entry` and selects `words` (a search's) in it, if found there.
  void showEntry(qsizetype entry, const QString& words = {});

  // Enter alone sends (Shift+Enter adds a line) when true; else only Ctrl+Enter does.
  void setEnterSends(bool enter_sends);
  bool enterSends() const { return enter_sends_; }

  QString input() const;
  void setInput(const QString& text);
  void focusInput();
  // Puts user message `entry` (`text`) into the input box and shows the edit bar; what was typed
  // before is kept and comes back when the edit is cancelled (Esc) or sent. `cost` says what
  // sending it will read again, if that is worth saying.
  void beginEdit(qsizetype entry, const QString& text, const QString& cost = {});
  // The edit is over (sent, or its session left): the input gets back what was typed before it.
  void endEdit();
  std::optional<qsizetype> editing() const { return editing_; }
  // The state of the buttons: `can_send` (a model is ready and nothing runs), `can_stop`.
  void setBusy(bool can_send, bool can_stop);
  // Forgets per-session view state (folded reasoning) when another session is shown.
  void resetView();

 signals:
  void sendRequested();
  void stopRequested();
  void editRequested(qsizetype entry);
  void regenerateRequested();
  // Shows sibling `index` (1-based) of message `entry` and the branch that follows it.
  void branchRequested(qsizetype entry, int index);
  // "Show in document" on answer `entry`.
  void showInDocumentRequested(qsizetype entry);
  // "✎ Change" on the system prompt line.
  void systemPromptEditRequested();

 protected:
  bool eventFilter(QObject* watched, QEvent* event) override;
  void changeEvent(QEvent* event) override;

 private:
  void onLink(const QUrl& link);
  void rerender();
  void applyPalette();

  QTextBrowser* transcript_;
  QLabel* edit_bar_;
  QPlainTextEdit* input_;
  QPushButton* send_button_;
  QPushButton* stop_button_;
  std::optional<qsizetype> editing_;
  QString draft_;  // what was typed before an edit began
  std::map<qsizetype, bool> expanded_reasoning_;  // entry index -> shown
  QString system_prompt_;
  bool expanded_system_prompt_ = false;
  QList<int> entry_positions_;                    // where each entry starts in the transcript
  // What is shown, for a re-render (a reasoning folded or unfolded, a palette change).
  QList<ChatEntry> entries_;
  std::optional<ChatEntry> streaming_;
  bool idle_ = true;
  bool enter_sends_ = true;
  std::map<qsizetype, Branches> branches_;
};

// WCAG's contrast ratio of two colours (1 to 21): what the panels' colours are chosen by.
double contrast_ratio(const QColor& a, const QColor& b);
// A dark theme's palette (the screenshots' and the tests'), disabled text greyed.
QPalette dark_palette();

}  // namespace lightdesk::gui
