#include "banner.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QToolButton>

namespace lightdesk::gui {

Banner::Banner(QWidget* parent) : QFrame(parent) {
  setObjectName(QStringLiteral("banner"));
  setFrameShape(QFrame::StyledPanel);
  setAutoFillBackground(true);
  label_ = new QLabel;
  label_->setObjectName(QStringLiteral("messageLabel"));
  label_->setWordWrap(true);
  label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  auto* close = new QToolButton;
  close->setObjectName(QStringLiteral("bannerClose"));
  close->setText(QStringLiteral("✕"));
  close->setToolTip(tr("Close"));
  close->setAccessibleName(tr("Close the message"));
  close->setAutoRaise(true);
  connect(close, &QToolButton::clicked, this, &QWidget::hide);
  auto* layout = new QHBoxLayout(this);
  layout->setContentsMargins(6, 4, 4, 4);
  layout->addWidget(label_, 1);
  layout->addWidget(close, 0, Qt::AlignTop);
  applyPalette();
  setVisible(false);
}

void Banner::showError(const QString& message) {
  label_->setText(message);
  applyPalette();
  setVisible(true);
}

QString Banner::text() const { return label_->text(); }

void Banner::applyPalette() {
  // A red tint of the theme's window colour with the theme's text colour: readable on both.
  QPalette colours = parentWidget() ? parentWidget()->palette() : palette();
  const bool dark = colours.color(QPalette::Window).lightness() < 128;
  const QColor tint = dark ? QColor(0x6e, 0x1a, 0x16) : QColor(0xfd, 0xe2, 0xe1);
  colours.setColor(QPalette::Window, tint);
  colours.setColor(QPalette::WindowText, dark ? QColor(0xff, 0xe5, 0xe3) : QColor(0x8a, 0x1c, 0x15));
  setPalette(colours);
}

}  // namespace lightdesk::gui
