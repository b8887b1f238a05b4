// The banner above the conversation: an error in plain words, until the user closes it or what it
// is about is gone (another session, the next question, a model loaded). Its colours come from
// the palette, so it reads in a dark theme as in a light one.
#pragma once

#include <QFrame>

class QLabel;

namespace lightdesk::gui {

class Banner : public QFrame {
  Q_OBJECT

 public:
  explicit Banner(QWidget* parent = nullptr);
  void showError(const QString& message);
  QString text() const;

 private:
  // Colours from the window's palette as it is when the banner is shown.
  void applyPalette();
  QLabel* label_;
};

}  // namespace lightdesk::gui
