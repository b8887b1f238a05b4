// The model check's choices: the plan the memory planner chose for a model, said before its
// weights load, and what else the plan offers (the experts' format, "quantize experts to fit";
// pruned experts; the host expert store where the engine runs it). The user's choice is
// remembered per model and loaded through the engine's apply_plan (LoadRequest).
#pragma once

#include <QDialog>

#include <optional>

#include "engine_worker.h"

class QCheckBox;
class QComboBox;
class QDialogButtonBox;
class QLabel;
class QRadioButton;
class QSettings;
class QSpinBox;

namespace lightdesk::gui {

// What the user chose for a model (QSettings, per model).
struct LoadChoice {
  std::optional<ExpertFormat> experts;  // none: the planner's choice
  int experts_kept = 0;                 // > 0: the pruned mode, this many experts per layer
  QString pattern;                      // the pruned mode's task pattern (empty: the first shipped)
  bool host_expert_store = false;
  bool remembered = false;              // read from the settings: the user chose before
};

// A model's settings key: its fingerprint (the same weights wherever they are), else its directory.
QString model_key(const ModelInfo& info);
LoadChoice load_choice(const QSettings& settings, const QString& key);
void save_load_choice(QSettings& settings, const QString& key, const LoadChoice& choice);

// The check planned again at `context_limit` tokens (0 or more than the model's: its own) and with
// the pruned plans of `experts_kept` per layer.
ModelCheck planned_check(const ModelCheck& full, std::int64_t context_limit, int experts_kept);
// The plan of `check` that `choice` names, if it fits and this build runs it: for the planner's
// format, its choice (in the pruned mode, the first pruned plan that fits and runs).
std::optional<std::size_t> chosen_plan(const ModelCheck& check, const LoadChoice& choice);
// The shipped pattern a pruned choice keeps the experts of (null without one).
const ExpertPattern* chosen_pattern(const ModelCheck& check, const LoadChoice& choice);
// True when the planner chose quantized experts because bf16 ones do not fit: a choice a person
// should see explained before the load.
bool quantized_to_fit(const ModelCheck& check);
// "Plan: …" or, when nothing fits, the planner's advice in words.
QString plan_text(const ModelCheck& check);

class ModelCheckDialog : public QDialog {
  Q_OBJECT

 public:
  // `full`: the engine thread's check (at the model's context); `context_limit` as planned_check.
  ModelCheckDialog(const ModelCheck& full, std::int64_t context_limit, const LoadChoice& choice,
                   QWidget* parent = nullptr);

  LoadChoice choice() const;
  // The check as planned for the choice (its pruned size), and the plan chosen in it (none when
  // nothing the choice allows fits; Load is then disabled).
  const ModelCheck& check() const { return check_; }
  std::optional<std::size_t> plan() const { return chosen_plan(check_, choice()); }

 private:
  void refresh();
  // The engine runs the host expert store here, and the check has host memory to plan it in.
  bool offers_host_store() const;

  ModelCheck full_;
  std::int64_t context_limit_;
  ModelCheck check_;
  bool format_chosen_ = false;  // the user picked a format (else it follows the planner)
  QLabel* plan_label_;
  QLabel* quantize_label_;
  QRadioButton* format_buttons_[3];
  QCheckBox* pruned_box_;
  QSpinBox* kept_spin_;
  QComboBox* pattern_combo_;
  QLabel* pruned_warning_;
  QCheckBox* host_store_box_;
  QDialogButtonBox* buttons_;
};

}  // namespace lightdesk::gui
