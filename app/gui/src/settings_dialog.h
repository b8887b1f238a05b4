// The settings dialog: the application's (engine backend, the GPUs as checkboxes, the context
// length, the data directory, what Enter does) and the sampling of the loaded model's family, read from and written to the application's QSettings.
#pragma once

#include <QDialog>
#include <QString>

#include <optional>

#include "engine_worker.h"

class QCheckBox;
class QComboBox;
class QDoubleSpinBox;
class QLineEdit;
class QPlainTextEdit;
class QSettings;
class QSpinBox;

namespace lightdesk::gui {

// The stored sampling of `family` ("M1", "Text01"), `defaults` for what was never set.
SamplingSettings load_sampling(const QSettings& settings, const QString& family, const SamplingSettings& defaults);
void store_sampling(QSettings& settings, const QString& family, const SamplingSettings& sampling);
// The engine backend to load models on ("auto", "cpu", "cuda"; parse_backend_kind's names).
QString backend_setting(const QSettings& settings);
// The GPUs to use, as parse_devices reads them ("0,1"); empty: the engine's default.
// The engine worker gives them to every model it opens (ModelOptions::devices).
QString gpus_setting(const QSettings& settings);
// The context the user allows a session (tokens; 0: the model's full context).
std::int64_t context_setting(const QSettings& settings);
// Whether Enter alone sends the question (Shift+Enter adds a line); else Ctrl+Enter only.
bool enter_sends_setting(const QSettings& settings);

// The four sampling figures, as a form.
class SamplingEditor : public QWidget {
  Q_OBJECT

 public:
  explicit SamplingEditor(const SamplingSettings& sampling, QWidget* parent = nullptr);
  void setSampling(const SamplingSettings& sampling);
  SamplingSettings sampling() const;

 private:
  QDoubleSpinBox* temperature_;
  QDoubleSpinBox* top_p_;
  QSpinBox* top_k_;
  QSpinBox* max_new_tokens_;
};

// Session > Settings for this session: its system prompt and its own sampling, or its model
// family's.
class SessionSettingsDialog : public QDialog {
  Q_OBJECT

 public:
  // `family` empty (no model loaded): the sampling rows are left out.
  SessionSettingsDialog(const QString& session, const QString& system_prompt, const QString& family,
                        const SamplingSettings& family_sampling, const std::optional<SamplingSettings>& own,
                        QWidget* parent = nullptr);
  // The system prompt as typed, spaces around it trimmed (empty: none).
  QString systemPrompt() const;
  // The session's own sampling, none to follow the family's.
  std::optional<SamplingSettings> sampling() const;

 private:
  SamplingSettings family_sampling_;
  QPlainTextEdit* system_prompt_;
  QCheckBox* own_;
  SamplingEditor* editor_;
};

class SettingsDialog : public QDialog {
  Q_OBJECT

 public:
  // `family` empty (no model loaded): the sampling rows are left out. `gpus`: this machine's
  // (gpu_devices()), one checkbox each.
  SettingsDialog(QSettings& settings, QString family, const SamplingSettings& defaults,
                 const std::vector<GpuDevice>& gpus = {}, QWidget* parent = nullptr);
  void accept() override;

 private:
  QSettings& settings_;
  QString family_;
  QComboBox* backend_;
  QList<QCheckBox*> gpus_;  // one per GPU, its index as the "gpu" property
  QSpinBox* context_;
  QCheckBox* enter_sends_;
  QLineEdit* data_directory_;
  SamplingEditor* sampling_;
};

}  // namespace lightdesk::gui
