#include "status_panel.h"

#include <QHBoxLayout>
#include <QLocale>
#include <QProgressBar>
#include <QPushButton>
#include <QResizeEvent>
#include <QTimer>

#include <algorithm>

namespace lightdesk::gui {
namespace {

QString format_bytes(qint64 bytes) { return QLocale().formattedDataSize(bytes, 1, QLocale::DataSizeTraditionalFormat); }

}  // namespace

QString format_count(qint64 count) { return QLocale().toString(count); }

void ElidedLabel::setFullText(const QString& text) {
  full_text_ = text;
  setToolTip(text);
  elide();
  updateGeometry();
}

QSize ElidedLabel::minimumSizeHint() const { return {fontMetrics().averageCharWidth() * 8, QLabel::minimumSizeHint().height()}; }

QSize ElidedLabel::sizeHint() const {
  // A character's width of slack: elidedText() measures a little differently from horizontalAdvance().
  return {fontMetrics().horizontalAdvance(full_text_) + 2 * margin() + fontMetrics().averageCharWidth(),
          QLabel::sizeHint().height()};
}

void ElidedLabel::resizeEvent(QResizeEvent* event) {
  QLabel::resizeEvent(event);
  elide();
}

void ElidedLabel::elide() { setText(fontMetrics().elidedText(full_text_, Qt::ElideRight, contentsRect().width())); }

StatusPanel::StatusPanel(std::function<QString()> memory_text, QWidget* parent)
    : QWidget(parent), memory_text_(std::move(memory_text)) {
  progress_bar_ = new QProgressBar;
  progress_bar_->setObjectName(QStringLiteral("progressBar"));
  progress_bar_->setVisible(false);
  // Wide enough for the longest progress text on one line, whatever the font.
  progress_bar_->setMinimumWidth(
      fontMetrics().horizontalAdvance(tr("Reading: %1 of %2 tokens, %3 tokens/s, about %4 s left")
                                          .arg(format_count(4194304), format_count(4194304), format_count(10000),
                                               format_count(1000))) +
      fontMetrics().averageCharWidth() * 4);
  message_label_ = new ElidedLabel;
  message_label_->setObjectName(QStringLiteral("statusMessage"));
  message_timer_ = new QTimer(this);
  message_timer_->setSingleShot(true);
  connect(message_timer_, &QTimer::timeout, this, &StatusPanel::clearMessage);
  speed_label_ = new QLabel;
  speed_label_->setObjectName(QStringLiteral("speedLabel"));
  first_token_label_ = new QLabel;
  first_token_label_->setObjectName(QStringLiteral("firstTokenLabel"));
  context_label_ = new QLabel;
  context_label_->setObjectName(QStringLiteral("contextLabel"));
  experts_label_ = new QLabel;
  experts_label_->setObjectName(QStringLiteral("expertsLabel"));
  all_experts_button_ = new QPushButton(tr("Reload with all experts"));
  all_experts_button_->setObjectName(QStringLiteral("allExpertsButton"));
  all_experts_button_->setToolTip(tr("Load the model again with every expert: exact answers, more memory"));
  all_experts_button_->setVisible(false);
  connect(all_experts_button_, &QPushButton::clicked, this, &StatusPanel::reloadWithAllExpertsRequested);
  memory_label_ = new ElidedLabel;
  memory_label_->setObjectName(QStringLiteral("memoryLabel"));
  auto* layout = new QHBoxLayout(this);
  layout->setContentsMargins(0, 0, 0, 0);
  layout->addWidget(progress_bar_);
  layout->addWidget(message_label_, 1);
  for (QLabel* figure : {speed_label_, first_token_label_, experts_label_}) layout->addWidget(figure);
  layout->addWidget(all_experts_button_);
  layout->addWidget(context_label_);
  layout->addWidget(memory_label_);
  // The host's memory changes while the app runs (other programs, the model's own use).
  auto* memory_timer = new QTimer(this);
  memory_timer->setObjectName(QStringLiteral("memoryTimer"));
  memory_timer->setInterval(5000);
  connect(memory_timer, &QTimer::timeout, this, &StatusPanel::refreshMemory);
  memory_timer->start();
  refreshMemory();
}

void StatusPanel::showMessage(const QString& message, int timeout_ms) {
  message_label_->setFullText(message);
  if (timeout_ms > 0)
    message_timer_->start(timeout_ms);
  else
    message_timer_->stop();
}

void StatusPanel::clearMessage() { showMessage({}); }

QString StatusPanel::message() const { return message_label_->fullText(); }

void StatusPanel::showLoadProgress(qint64 bytes_done, qint64 bytes_total) {
  progress_bar_->setVisible(true);
  // Megabytes keep the range within int.
  progress_bar_->setRange(0, static_cast<int>(bytes_total >> 20));
  progress_bar_->setValue(static_cast<int>(bytes_done >> 20));
  progress_bar_->setFormat(tr("Loading weights: %1 of %2").arg(format_bytes(bytes_done), format_bytes(bytes_total)));
}

void StatusPanel::showPrefillProgress(qint64 done, qint64 total, double tokens_per_second, double seconds_left) {
  progress_bar_->setVisible(true);
  // Thousands of tokens keep the range within int for any context.
  const int scale = total > (1 << 30) ? 1024 : 1;
  progress_bar_->setRange(0, static_cast<int>(total / scale));
  progress_bar_->setValue(static_cast<int>(done / scale));
  QString text = tr("Reading: %1 of %2 tokens, %3 tokens/s")
                     .arg(format_count(done), format_count(total), format_count(qRound64(tokens_per_second)));
  if (seconds_left >= 0) text += QStringLiteral(", ") + tr("about %1 s left").arg(format_count(qRound64(seconds_left)));
  progress_bar_->setFormat(text);
  progress_bar_->setToolTip(text);
}

void StatusPanel::showDocumentProgress(const QString& name, qint64 bytes_done, qint64 bytes_total) {
  progress_bar_->setVisible(true);
  progress_bar_->setRange(0, static_cast<int>(bytes_total >> 10));
  progress_bar_->setValue(static_cast<int>(bytes_done >> 10));
  progress_bar_->setFormat(tr("Counting the tokens of %1: %2 of %3").arg(name, format_bytes(bytes_done), format_bytes(bytes_total)));
}

void StatusPanel::hideProgress() { progress_bar_->setVisible(false); }

void StatusPanel::showAnswerFigures(double tokens_per_second, double first_token_seconds) {
  if (first_token_seconds < 0) {
    clearAnswerFigures();
    return;
  }
  speed_label_->setText(tr("%1 tokens/s").arg(QLocale().toString(tokens_per_second, 'f', 1)));
  first_token_label_->setText(tr("first token: %1 s").arg(QLocale().toString(first_token_seconds, 'f', 2)));
}

void StatusPanel::showExpertLoss(std::optional<double> share, bool too_much) {
  experts_label_->clear();
  experts_label_->setToolTip({});
  all_experts_button_->setVisible(false);
  if (!share) return;
  const QString percent = QLocale().toString(100.0 * *share, 'f', 1);
  experts_label_->setText(too_much ? tr("⚠ experts missed: %1%").arg(percent) : tr("experts missed: %1%").arg(percent));
  experts_label_->setToolTip(
      too_much ? tr("This answer put %1% of the router's probability mass on experts that are not loaded (pruned "
                    "mode): it may be less accurate than with every expert.")
                     .arg(percent)
               : tr("The share of the router's probability mass this answer put on experts that are not loaded "
                    "(pruned mode)."));
  all_experts_button_->setVisible(too_much);
}

void StatusPanel::clearAnswerFigures() {
  speed_label_->clear();
  first_token_label_->clear();
  showExpertLoss(std::nullopt, false);
}

void StatusPanel::showContext(qint64 used, qint64 size) {
  context_label_->setText(tr("context: %1 / %2").arg(format_count(used), format_count(size)));
}

void StatusPanel::clearContext() { context_label_->clear(); }

void StatusPanel::refreshMemory() {
  if (!memory_text_) return;
  memory_label_->setFullText(memory_text_());
  // The memory figure gives way to the message only below its usual length.
  memory_label_->setMinimumWidth(std::min(memory_label_->sizeHint().width(), fontMetrics().averageCharWidth() * 48));
}

}  // namespace lightdesk::gui
