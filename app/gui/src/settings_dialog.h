// Sampling settings of one model family, read from and written to the application's QSettings.
#pragma once

#include <QDialog>
#include <QString>

#include "engine_worker.h"

class QDoubleSpinBox;
class QSettings;
class QSpinBox;

namespace lightdesk::gui {

// The stored sampling of `family` ("M1", "Text01"), `defaults` for what was never set.
SamplingSettings load_sampling(const QSettings& settings, const QString& family, const SamplingSettings& defaults);
void store_sampling(QSettings& settings, const QString& family, const SamplingSettings& sampling);

class SettingsDialog : public QDialog {
  Q_OBJECT

 public:
  SettingsDialog(QSettings& settings, QString family, const SamplingSettings& defaults, QWidget* parent = nullptr);
  void accept() override;

 private:
  QSettings& settings_;
  QString family_;
  QDoubleSpinBox* temperature_;
  QDoubleSpinBox* top_p_;
  QSpinBox* top_k_;
  QSpinBox* max_new_tokens_;
};

}  // namespace lightdesk::gui
