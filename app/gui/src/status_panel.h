// The status bar's contents: the progress of a load or a prompt's read, the last event's message
// and the figures of the last answer (decode speed, time to first token, context used) and the
// memory. One row of widgets in a layout, so no text is drawn over another; a message too long
// for its room is elided and shown whole in its tooltip.
#pragma once

#include <QLabel>
#include <QWidget>

#include <functional>
#include <optional>

class QProgressBar;
class QPushButton;
class QTimer;

namespace lightdesk::gui {

// A label that elides its text to its width (the whole text in the tooltip) instead of asking
// for the room it would need.
class ElidedLabel : public QLabel {
  Q_OBJECT

 public:
  explicit ElidedLabel(QWidget* parent = nullptr) : QLabel(parent) {}
  void setFullText(const QString& text);
  QString fullText() const { return full_text_; }
  QSize minimumSizeHint() const override;
  QSize sizeHint() const override;

 protected:
  void resizeEvent(QResizeEvent* event) override;

 private:
  void elide();
  QString full_text_;
};

// Numbers the way the rest of the window writes them: the locale's digit groups.
QString format_count(qint64 count);

class StatusPanel : public QWidget {
  Q_OBJECT

 public:
  // `memory_text` says what the memory figure shows; it is asked again every few seconds.
  explicit StatusPanel(std::function<QString()> memory_text, QWidget* parent = nullptr);

  // The message (the last event: "Model loaded …", "Stopped after …"); `timeout_ms` > 0 clears
  // it after that time.
  void showMessage(const QString& message, int timeout_ms = 0);
  void clearMessage();
  QString message() const;

  void showLoadProgress(qint64 bytes_done, qint64 bytes_total);
  // `seconds_left` < 0: not known yet.
  void showPrefillProgress(qint64 done, qint64 total, double tokens_per_second, double seconds_left);
  void showDocumentProgress(const QString& name, qint64 bytes_done, qint64 bytes_total);
  void hideProgress();

  // The figures of the last answer; `first_token_seconds` < 0 when no token was written.
  void showAnswerFigures(double tokens_per_second, double first_token_seconds);
  // The last answer's share of the router's probability mass on experts that were not resident
  // (none: every expert is); `too_much`: say so, and offer reloadWithAllExpertsRequested.
  void showExpertLoss(std::optional<double> share, bool too_much);
  // Clears the answer figures and the expert figure (another model, no answer yet).
  void clearAnswerFigures();
  void showContext(qint64 used, qint64 size);
  void clearContext();
  void refreshMemory();

 signals:
  void reloadWithAllExpertsRequested();

 private:
  std::function<QString()> memory_text_;
  QProgressBar* progress_bar_;
  ElidedLabel* message_label_;
  QTimer* message_timer_;
  QLabel* speed_label_;
  QLabel* first_token_label_;
  QLabel* context_label_;
  QLabel* experts_label_;
  QPushButton* all_experts_button_;
  ElidedLabel* memory_label_;
};

}  // namespace lightdesk::gui
