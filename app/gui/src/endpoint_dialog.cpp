#include "endpoint_dialog.h"

#include <QDialogButtonBox>
#include <QFormLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>

namespace lightdesk::gui {

EndpointDialog::EndpointDialog(QWidget* parent) : QDialog(parent) {
  setWindowTitle(tr("Use a server"));
  auto* form = new QFormLayout(this);
  auto* note = new QLabel(tr("An OpenAI-compatible server answers instead of a local model. Conversations and "
                             "documents stay on this computer; documents are sent to the server as text; no "
                             "model state is kept here."));
  note->setWordWrap(true);
  form->addRow(note);
  endpoint_ = new QLineEdit;
  endpoint_->setObjectName(QStringLiteral("endpoint"));
  endpoint_->setPlaceholderText(QStringLiteral("http://127.0.0.1:8080/v1"));
  api_key_ = new QLineEdit;
  api_key_->setObjectName(QStringLiteral("apiKey"));
  api_key_->setEchoMode(QLineEdit::Password);
  model_ = new QLineEdit;
  model_->setObjectName(QStringLiteral("model"));
  model_->setPlaceholderText(tr("the first the server lists"));
  form->addRow(tr("&Address:"), endpoint_);
  form->addRow(tr("API &key:"), api_key_);
  form->addRow(tr("&Model:"), model_);
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
  buttons->button(QDialogButtonBox::Ok)->setText(tr("Connect"));
  buttons->button(QDialogButtonBox::Ok)->setEnabled(false);
  connect(endpoint_, &QLineEdit::textChanged, this, [buttons](const QString& text) {
    buttons->button(QDialogButtonBox::Ok)->setEnabled(!text.trimmed().isEmpty());
  });
  connect(buttons, &QDialogButtonBox::accepted, this, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
  form->addRow(buttons);
}

QString EndpointDialog::endpoint() const { return endpoint_->text().trimmed(); }
QString EndpointDialog::apiKey() const { return api_key_->text(); }
QString EndpointDialog::model() const { return model_->text().trimmed(); }

}  // namespace lightdesk::gui
