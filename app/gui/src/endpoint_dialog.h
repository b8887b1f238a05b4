// File > Use a server…: the OpenAI-compatible endpoint that answers instead of a local model
// (lightdesk-server, or vLLM or SGLang serving MiniMax-M1 on a cluster), its API key and model.
#pragma once

#include <QDialog>
#include <QString>

class QLineEdit;

namespace lightdesk::gui {

class EndpointDialog : public QDialog {
  Q_OBJECT

 public:
  explicit EndpointDialog(QWidget* parent = nullptr);
  QString endpoint() const;  // e.g. http://127.0.0.1:8080/v1
  QString apiKey() const;    // empty: none sent
  QString model() const;     // empty: the first the server lists

 private:
  QLineEdit* endpoint_;
  QLineEdit* api_key_;
  QLineEdit* model_;
};

}  // namespace lightdesk::gui
