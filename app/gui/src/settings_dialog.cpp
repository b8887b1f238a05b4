#include "settings_dialog.h"

#include <QDialogButtonBox>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QSettings>
#include <QSpinBox>

namespace lightdesk::gui {
namespace {

QString key(const QString& family, const char* name) {
  return QStringLiteral("sampling/%1/%2").arg(family, QLatin1String(name));
}

}  // namespace

SamplingSettings load_sampling(const QSettings& settings, const QString& family, const SamplingSettings& defaults) {
  SamplingSettings sampling;
  sampling.temperature = settings.value(key(family, "temperature"), defaults.temperature).toDouble();
  sampling.top_p = settings.value(key(family, "top_p"), defaults.top_p).toDouble();
  sampling.top_k = settings.value(key(family, "top_k"), defaults.top_k).toInt();
  sampling.max_new_tokens = settings.value(key(family, "max_new_tokens"), defaults.max_new_tokens).toInt();
  return sampling;
}

void store_sampling(QSettings& settings, const QString& family, const SamplingSettings& sampling) {
  settings.setValue(key(family, "temperature"), sampling.temperature);
  settings.setValue(key(family, "top_p"), sampling.top_p);
  settings.setValue(key(family, "top_k"), sampling.top_k);
  settings.setValue(key(family, "max_new_tokens"), sampling.max_new_tokens);
}

SettingsDialog::SettingsDialog(QSettings& settings, QString family, const SamplingSettings& defaults, QWidget* parent)
    : QDialog(parent), settings_(settings), family_(std::move(family)) {
  setWindowTitle(tr("Sampling settings (%1 models)").arg(family_));
  const SamplingSettings current = load_sampling(settings_, family_, defaults);
  temperature_ = new QDoubleSpinBox;
  temperature_->setRange(0.0, 2.0);
  temperature_->setSingleStep(0.05);
  temperature_->setValue(current.temperature);
  temperature_->setToolTip(tr("0 always picks the most likely token"));
  top_p_ = new QDoubleSpinBox;
  top_p_->setRange(0.01, 1.0);
  top_p_->setSingleStep(0.01);
  top_p_->setValue(current.top_p);
  top_k_ = new QSpinBox;
  top_k_->setRange(0, 1000);
  top_k_->setSpecialValueText(tr("all"));
  top_k_->setValue(current.top_k);
  max_new_tokens_ = new QSpinBox;
  max_new_tokens_->setRange(1, 1'000'000);
  max_new_tokens_->setValue(current.max_new_tokens);
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
  connect(buttons, &QDialogButtonBox::accepted, this, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
  auto* form = new QFormLayout(this);
  form->addRow(tr("Temperature"), temperature_);
  form->addRow(tr("Top-p"), top_p_);
  form->addRow(tr("Top-k"), top_k_);
  form->addRow(tr("Longest answer (tokens)"), max_new_tokens_);
  form->addRow(buttons);
}

void SettingsDialog::accept() {
  store_sampling(settings_, family_,
                 {temperature_->value(), top_p_->value(), top_k_->value(), max_new_tokens_->value()});
  QDialog::accept();
}

}  // namespace lightdesk::gui
