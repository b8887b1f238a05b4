#include "model_check_dialog.h"

#include <QCheckBox>
#include <QComboBox>
#include <QCryptographicHash>
#include <QDialogButtonBox>
#include <QFormLayout>
#include <QGroupBox>
#include <QLabel>
#include <QLocale>
#include <QPushButton>
#include <QRadioButton>
#include <QSettings>
#include <QSpinBox>
#include <QVBoxLayout>

#include <algorithm>

#include "status_panel.h"

namespace lightdesk::gui {
namespace {

constexpr ExpertFormat kFormats[] = {ExpertFormat::Bf16, ExpertFormat::Int8, ExpertFormat::Int4};

QString group_of(const QString& key) { return QStringLiteral("models/") + key + QLatin1Char('/'); }

QString format_bytes(std::uint64_t bytes) {
  return QLocale().formattedDataSize(static_cast<qint64>(bytes), 1, QLocale::DataSizeTraditionalFormat);
}

std::uint64_t most_on_one_device(const MemoryPlan& plan) {
  std::uint64_t most = 0;
  for (const RankMemory& rank : plan.ranks) most = std::max(most, rank.total_bytes());
  return most;
}

QString summary_of(const MemoryPlan& plan) { return QString::fromStdString(plan.summary()); }

}  // namespace

QString model_key(const ModelInfo& info) {
  if (!info.fingerprint.empty()) return QString::fromStdString(info.fingerprint);
  return QStringLiteral("directory-") +
         QString::fromLatin1(QCryptographicHash::hash(QByteArray::fromStdString(info.directory.string()),
                                                      QCryptographicHash::Sha1)
                                 .toHex());
}

LoadChoice load_choice(const QSettings& settings, const QString& key) {
  const QString group = group_of(key);
  LoadChoice choice;
  const QString experts = settings.value(group + QStringLiteral("experts")).toString();
  choice.remembered = !experts.isEmpty();
  try {
    if (choice.remembered && experts != QStringLiteral("auto")) choice.experts = parse_expert_format(experts.toStdString());
  } catch (const Error&) {  // a settings file edited by hand: the planner's choice
  }
  choice.experts_kept = std::max(0, settings.value(group + QStringLiteral("expertsKept"), 0).toInt());
  choice.pattern = settings.value(group + QStringLiteral("pattern")).toString();
  choice.host_expert_store = settings.value(group + QStringLiteral("hostExpertStore"), false).toBool();
  return choice;
}

void save_load_choice(QSettings& settings, const QString& key, const LoadChoice& choice) {
  const QString group = group_of(key);
  settings.setValue(group + QStringLiteral("experts"),
                    choice.experts ? QString::fromLatin1(expert_format_name(*choice.experts)) : QStringLiteral("auto"));
  settings.setValue(group + QStringLiteral("expertsKept"), choice.experts_kept);
  settings.setValue(group + QStringLiteral("pattern"), choice.pattern);
  settings.setValue(group + QStringLiteral("hostExpertStore"), choice.host_expert_store);
}

ModelCheck planned_check(const ModelCheck& full, std::int64_t context_limit, int experts_kept) {
  ModelInfo limited = full.model;
  if (context_limit > 0 && context_limit < limited.max_context) limited.max_context = context_limit;
  ModelCheck check =
      memory_check(limited, full.available_bytes, full.memory_place, experts_kept, full.request.host_memory_bytes);
  check.model = full.model;
  check.directory = full.directory;
  check.patterns = full.patterns;
  check.patterns_problem = full.patterns_problem;
  return check;
}

const ExpertPattern* chosen_pattern(const ModelCheck& check, const LoadChoice& choice) {
  if (choice.experts_kept <= 0 || check.patterns.empty()) return nullptr;
  for (const ExpertPattern& pattern : check.patterns)
    if (QString::fromStdString(pattern.task) == choice.pattern) return &pattern;
  return &check.patterns.front();
}

std::optional<std::size_t> chosen_plan(const ModelCheck& check, const LoadChoice& choice) {
  if (!choice.experts && choice.experts_kept == 0 && !choice.host_expert_store) return check.plan.chosen;
  if (choice.experts_kept > 0 && !chosen_pattern(check, choice)) return std::nullopt;
  // Plans come in the policy's order: the first of the mode is the planner's.
  for (std::size_t i = 0; i < check.plan.plans.size(); ++i) {
    const MemoryPlan& p = check.plan.plans[i];
    if (p.fits && p.runnable && p.candidate.experts_kept == choice.experts_kept &&
        p.candidate.host_expert_store == choice.host_expert_store && (!choice.experts || p.candidate.experts == *choice.experts))
      return i;
  }
  return std::nullopt;
}

bool quantized_to_fit(const ModelCheck& check) {
  return check.fits() && check.plan.plans[*check.plan.chosen].candidate.experts != ExpertFormat::Bf16;
}

QString plan_text(const ModelCheck& check) {
  if (check.fits()) return ModelCheckDialog::tr("Plan: %1.").arg(summary_of(check.plan.plans[*check.plan.chosen]));
  QString text = ModelCheckDialog::tr("Nothing this build runs fits in %1 at %2 tokens of context.")
                     .arg(check.memory_place, format_count(check.context_tokens));
  QStringList advice;
  for (const std::string& line : check.plan.advice) advice.append(QString::fromStdString(line));
  if (!advice.isEmpty()) text += QLatin1Char(' ') + ModelCheckDialog::tr("It would fit with: %1.").arg(advice.join(QStringLiteral("; ")));
  return text;
}

ModelCheckDialog::ModelCheckDialog(const ModelCheck& full, std::int64_t context_limit, const LoadChoice& choice,
                                   QWidget* parent)
    : QDialog(parent), full_(full), context_limit_(context_limit), check_(full) {
  setWindowTitle(tr("Load %1").arg(QString::fromStdString(full.model.directory.filename().string())));
  auto* layout = new QVBoxLayout(this);

  plan_label_ = new QLabel(this);
  plan_label_->setObjectName(QStringLiteral("planLabel"));
  plan_label_->setWordWrap(true);
  plan_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  layout->addWidget(plan_label_);
  quantize_label_ = new QLabel(this);
  quantize_label_->setObjectName(QStringLiteral("quantizeNote"));
  quantize_label_->setWordWrap(true);
  layout->addWidget(quantize_label_);

  auto* formats = new QGroupBox(tr("Expert format"), this);
  auto* format_layout = new QVBoxLayout(formats);
  for (std::size_t i = 0; i < std::size(kFormats); ++i) {
    format_buttons_[i] = new QRadioButton(formats);
    format_buttons_[i]->setObjectName(QStringLiteral("format_") + QString::fromLatin1(expert_format_name(kFormats[i])));
    format_layout->addWidget(format_buttons_[i]);
    // Only the user's click picks a format; until then the radio follows the planner.
    connect(format_buttons_[i], &QRadioButton::clicked, this, [this] {
      format_chosen_ = true;
      refresh();
    });
  }
  layout->addWidget(formats);

  auto* pruned = new QGroupBox(tr("Pruned experts"), this);
  auto* pruned_layout = new QFormLayout(pruned);
  pruned_box_ = new QCheckBox(tr("Keep only some experts per layer, those a task pattern ranks first"), pruned);
  pruned_box_->setObjectName(QStringLiteral("prunedBox"));
  pruned_layout->addRow(pruned_box_);
  kept_spin_ = new QSpinBox(pruned);
  kept_spin_->setObjectName(QStringLiteral("keptSpin"));
  kept_spin_->setAccessibleName(tr("Experts kept per layer"));
  kept_spin_->setRange(std::max(1, full.model.experts_per_token), std::max(1, full.model.num_experts - 1));
  kept_spin_->setValue(choice.experts_kept > 0 ? choice.experts_kept : std::max(1, full.model.num_experts / 2));
  pruned_layout->addRow(tr("Experts kept per layer:"), kept_spin_);
  pattern_combo_ = new QComboBox(pruned);
  pattern_combo_->setObjectName(QStringLiteral("patternCombo"));
  pattern_combo_->setAccessibleName(tr("Task pattern"));
  for (const ExpertPattern& pattern : full.patterns) pattern_combo_->addItem(QString::fromStdString(pattern.task));
  if (const int at = pattern_combo_->findText(choice.pattern); at >= 0) pattern_combo_->setCurrentIndex(at);
  pruned_layout->addRow(tr("Task pattern:"), pattern_combo_);
  pruned_warning_ = new QLabel(
      tr("Pruned experts are not exact: a question that needs an expert that is not kept gets a less accurate "
         "answer. The status bar shows, per answer, the share of the router's choice that was lost, and offers to "
         "reload with every expert."),
      pruned);
  pruned_warning_->setObjectName(QStringLiteral("prunedWarning"));
  pruned_warning_->setWordWrap(true);
  pruned_layout->addRow(pruned_warning_);
  if (full.patterns.empty()) {
    pruned_box_->setEnabled(false);
    pruned_box_->setToolTip(full.patterns_problem.isEmpty()
                                ? tr("The model ships no task pattern (lightdesk-cli experts calibrate makes one).")
                                : tr("The model's task patterns cannot be read: %1").arg(full.patterns_problem));
  }
  pruned_box_->setChecked(choice.experts_kept > 0 && !full.patterns.empty());
  layout->addWidget(pruned);

  host_store_box_ = new QCheckBox(tr("Keep every expert in host memory, cached on the GPU (exact answers, slower)"), this);
  host_store_box_->setObjectName(QStringLiteral("hostStoreBox"));
  host_store_box_->setChecked(choice.host_expert_store);
  host_store_box_->setVisible(offers_host_store());
  layout->addWidget(host_store_box_);

  buttons_ = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel, this);
  buttons_->button(QDialogButtonBox::Ok)->setText(tr("Load"));
  connect(buttons_, &QDialogButtonBox::accepted, this, &QDialog::accept);
  connect(buttons_, &QDialogButtonBox::rejected, this, &QDialog::reject);
  layout->addWidget(buttons_);

  connect(pruned_box_, &QCheckBox::toggled, this, &ModelCheckDialog::refresh);
  connect(kept_spin_, &QSpinBox::valueChanged, this, &ModelCheckDialog::refresh);
  connect(pattern_combo_, &QComboBox::currentIndexChanged, this, &ModelCheckDialog::refresh);
  connect(host_store_box_, &QCheckBox::toggled, this, &ModelCheckDialog::refresh);

  format_chosen_ = choice.experts.has_value();
  for (std::size_t i = 0; i < std::size(kFormats); ++i)
    if (choice.experts == kFormats[i]) format_buttons_[i]->setChecked(true);
  refresh();
}

bool ModelCheckDialog::offers_host_store() const {
  return full_.request.capabilities.host_expert_store && full_.request.host_memory_bytes > 0;
}

LoadChoice ModelCheckDialog::choice() const {
  LoadChoice choice;
  choice.remembered = true;
  choice.experts_kept = pruned_box_->isChecked() ? kept_spin_->value() : 0;
  choice.pattern = pattern_combo_->currentText();
  choice.host_expert_store = offers_host_store() && host_store_box_->isChecked();
  for (std::size_t i = 0; i < std::size(kFormats); ++i)
    if (format_chosen_ && format_buttons_[i]->isChecked()) choice.experts = kFormats[i];
  // The planner's own format is kept as "the planner's choice": it follows the machine.
  LoadChoice planner = choice;
  planner.experts.reset();
  if (const auto planned = chosen_plan(check_, planner);
      planned && choice.experts == check_.plan.plans[*planned].candidate.experts)
    choice.experts.reset();
  return choice;
}

void ModelCheckDialog::refresh() {
  const bool pruned = pruned_box_->isChecked();
  kept_spin_->setEnabled(pruned);
  pattern_combo_->setEnabled(pruned);
  check_ = planned_check(full_, context_limit_, pruned ? kept_spin_->value() : 0);
  LoadChoice mode = choice();
  mode.experts.reset();
  const std::optional<std::size_t> planner = chosen_plan(check_, mode);
  for (std::size_t i = 0; i < std::size(kFormats); ++i) {
    LoadChoice one = mode;
    one.experts = kFormats[i];
    // The format's plan in this mode, whether it fits or not.
    const MemoryPlan* plan = nullptr;
    for (const MemoryPlan& p : check_.plan.plans)
      if (p.candidate.experts == kFormats[i] && p.candidate.experts_kept == one.experts_kept &&
          p.candidate.host_expert_store == one.host_expert_store)
        plan = &p;
    // The checkpoint's values are float32 where the backend computes in float32 (the CPU).
    QString text = kFormats[i] == ExpertFormat::Bf16 && plan && plan->float32_values
                       ? tr("float32 (the checkpoint's values)")
                       : QString::fromLatin1(expert_format_name(kFormats[i]));
    if (plan && !plan->ranks.empty()) {
      const QString need = tr("needs %1 of %2").arg(format_bytes(most_on_one_device(*plan)),
                                                    format_bytes(plan->ranks.front().device.memory_bytes));
      text += QStringLiteral(": ") + need + QStringLiteral(", ") +
              (!plan->runnable ? tr("not in this build yet") : plan->fits ? tr("fits") : tr("does not fit"));
    }
    const bool planners = planner && check_.plan.plans[*planner].candidate.experts == kFormats[i];
    if (planners) text += tr(" (the planner's choice)");
    // Not picked by the user: the planner's format (bf16 where it has none) is the one shown.
    if (!format_chosen_ && (planners || (!planner && kFormats[i] == ExpertFormat::Bf16)))
      format_buttons_[i]->setChecked(true);
    format_buttons_[i]->setText(text);
    format_buttons_[i]->setEnabled(plan && plan->fits && plan->runnable);
  }
  quantize_label_->setText(
      tr("Quantize experts to fit: bf16 experts do not fit in %1, so the experts, nearly all of the model's weights, "
         "can be kept in 8 bits (int8, answers nearly identical) or 4 bits (int4, a little less accurate), a half or "
         "a quarter of their memory.")
          .arg(check_.memory_place));
  quantize_label_->setVisible(!check_.plan.plans.empty() && !check_.plan.plans.front().fits);

  const std::optional<std::size_t> loaded = plan();
  QString text = plan_text(check_);
  if (loaded && loaded != check_.plan.chosen)
    text += QLatin1Char('\n') + tr("Loads: %1.").arg(summary_of(check_.plan.plans[*loaded]));
  else if (!loaded && check_.fits())
    text += QLatin1Char('\n') + tr("The choice below does not fit; pick another.");
  plan_label_->setText(text);
  buttons_->button(QDialogButtonBox::Ok)->setEnabled(loaded.has_value());
}

}  // namespace lightdesk::gui
