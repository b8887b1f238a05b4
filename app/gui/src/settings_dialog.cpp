#include "settings_dialog.h"

#include <QCheckBox>
#include <QComboBox>
#include <QGroupBox>
#include <QLocale>
#include <QDialogButtonBox>
#include <QFileDialog>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QVBoxLayout>

#include <limits>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QSettings>
#include <QSpinBox>
#include <QStyle>

#include "lightdesk/engine.h"
#include "store_session_repository.h"

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

QString backend_setting(const QSettings& settings) {
  return settings.value(QStringLiteral("engine/backend"), QStringLiteral("auto")).toString();
}

QString gpus_setting(const QSettings& settings) { return settings.value(QStringLiteral("engine/gpus")).toString(); }

std::int64_t context_setting(const QSettings& settings) {
  return settings.value(QStringLiteral("engine/context"), 0).toLongLong();
}

bool enter_sends_setting(const QSettings& settings) {
  return settings.value(QStringLiteral("input/enterSends"), true).toBool();
}

SamplingEditor::SamplingEditor(const SamplingSettings& sampling, QWidget* parent) : QWidget(parent) {
  temperature_ = new QDoubleSpinBox;
  temperature_->setObjectName(QStringLiteral("temperatureBox"));
  temperature_->setRange(0.0, 2.0);
  temperature_->setSingleStep(0.05);
  temperature_->setToolTip(tr("0 always picks the most likely token"));
  top_p_ = new QDoubleSpinBox;
  top_p_->setObjectName(QStringLiteral("topPBox"));
  top_p_->setRange(0.01, 1.0);
  top_p_->setSingleStep(0.01);
  top_k_ = new QSpinBox;
  top_k_->setObjectName(QStringLiteral("topKBox"));
  top_k_->setRange(0, 1000);
  top_k_->setSpecialValueText(tr("all"));
  max_new_tokens_ = new QSpinBox;
  max_new_tokens_->setObjectName(QStringLiteral("maxNewTokensBox"));
  max_new_tokens_->setRange(1, 1'000'000);
  max_new_tokens_->setGroupSeparatorShown(true);
  auto* form = new QFormLayout(this);
  form->setContentsMargins(0, 0, 0, 0);
  form->addRow(tr("Temperature"), temperature_);
  form->addRow(tr("Top-p"), top_p_);
  form->addRow(tr("Top-k"), top_k_);
  form->addRow(tr("Longest answer (tokens)"), max_new_tokens_);
  setSampling(sampling);
}

void SamplingEditor::setSampling(const SamplingSettings& sampling) {
  temperature_->setValue(sampling.temperature);
  top_p_->setValue(sampling.top_p);
  top_k_->setValue(sampling.top_k);
  max_new_tokens_->setValue(sampling.max_new_tokens);
}

SamplingSettings SamplingEditor::sampling() const {
  return {temperature_->value(), top_p_->value(), top_k_->value(), max_new_tokens_->value()};
}

SessionSettingsDialog::SessionSettingsDialog(const QString& session, const QString& system_prompt,
                                             const QString& family, const SamplingSettings& family_sampling,
                                             const std::optional<SamplingSettings>& own, QWidget* parent)
    : QDialog(parent), family_sampling_(family_sampling) {
  setWindowTitle(tr("Settings of “%1”").arg(session));
  auto* system_label = new QLabel(tr("&System prompt (what the model is told before the conversation; empty: none):"));
  system_label->setWordWrap(true);
  system_prompt_ = new QPlainTextEdit(system_prompt);
  system_prompt_->setObjectName(QStringLiteral("systemPromptEdit"));
  system_prompt_->setAccessibleName(tr("System prompt"));
  system_prompt_->setPlaceholderText(tr("For example: Answer in French, citing the page."));
  system_prompt_->setTabChangesFocus(true);
  system_label->setBuddy(system_prompt_);
  own_ = new QCheckBox(tr("This session samples in its own way (else as %1 models do, in Settings)").arg(family));
  own_->setObjectName(QStringLiteral("ownSamplingBox"));
  own_->setChecked(own.has_value());
  editor_ = new SamplingEditor(own.value_or(family_sampling));
  editor_->setEnabled(own.has_value());
  connect(own_, &QCheckBox::toggled, this, [this](bool checked) {
    editor_->setEnabled(checked);
    if (!checked) editor_->setSampling(family_sampling_);
  });
  // A session's sampling starts from its model family's: without a model there is none to show.
  own_->setVisible(!family.isEmpty());
  editor_->setVisible(!family.isEmpty());
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
  connect(buttons, &QDialogButtonBox::accepted, this, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
  auto* layout = new QVBoxLayout(this);
  layout->addWidget(system_label);
  layout->addWidget(system_prompt_);
  layout->addWidget(own_);
  layout->addWidget(editor_);
  layout->addWidget(buttons);
}

QString SessionSettingsDialog::systemPrompt() const { return system_prompt_->toPlainText().trimmed(); }

std::optional<SamplingSettings> SessionSettingsDialog::sampling() const {
  return own_->isChecked() ? std::optional(editor_->sampling()) : std::nullopt;
}

SettingsDialog::SettingsDialog(QSettings& settings, QString family, const SamplingSettings& defaults,
                               const std::vector<GpuDevice>& gpus, QWidget* parent)
    : QDialog(parent), settings_(settings), family_(std::move(family)) {
  setWindowTitle(tr("Settings"));
  backend_ = new QComboBox;
  backend_->setObjectName(QStringLiteral("backendBox"));
  backend_->addItem(tr("Automatic"), QStringLiteral("auto"));
  for (const BackendKind kind : available_backends())
    backend_->addItem(QString::fromLatin1(backend_name(kind)).toUpper(), QString::fromLatin1(backend_name(kind)));
  backend_->setCurrentIndex(std::max(0, backend_->findData(backend_setting(settings_))));
  backend_->setToolTip(tr("Used for the next model opened"));
  backend_->setAccessibleName(tr("Engine backend"));
  // One checkbox per GPU; none checked is the engine's default (GPU 0).
  QStringList chosen_gpus = gpus_setting(settings_).split(QLatin1Char(','), Qt::SkipEmptyParts);
  auto* gpu_column = new QVBoxLayout;
  for (const GpuDevice& gpu : gpus) {
    auto* box = new QCheckBox(tr("GPU %1: %2, %3")
                                  .arg(gpu.index)
                                  .arg(QString::fromStdString(gpu.name),
                                       QLocale().formattedDataSize(static_cast<qint64>(gpu.total_bytes), 1,
                                                                   QLocale::DataSizeTraditionalFormat)));
    box->setObjectName(QStringLiteral("gpuBox%1").arg(gpu.index));
    box->setProperty("gpu", gpu.index);
    box->setChecked(chosen_gpus.contains(QString::number(gpu.index)));
    box->setToolTip(tr("Run models on this GPU; applies from the next start. None checked: GPU 0."));
    gpu_column->addWidget(box);
    gpus_.append(box);
  }
  if (gpus.empty()) {
    auto* none = new QLabel(tr("No GPU found: models run on the CPU."));
    none->setObjectName(QStringLiteral("noGpuLabel"));
    gpu_column->addWidget(none);
  }
  context_ = new QSpinBox;
  context_->setObjectName(QStringLiteral("contextBox"));
  context_->setAccessibleName(tr("Context length"));
  context_->setRange(0, std::numeric_limits<int>::max());
  context_->setSingleStep(4096);
  context_->setGroupSeparatorShown(true);
  context_->setSpecialValueText(tr("the model's full context"));
  context_->setSuffix(tr(" tokens"));
  context_->setValue(static_cast<int>(std::min<std::int64_t>(context_setting(settings_), std::numeric_limits<int>::max())));
  context_->setToolTip(tr("The longest conversation, documents included, that a session may hold; a shorter one "
                          "needs less memory. Applies to the next model opened."));
  enter_sends_ = new QCheckBox(tr("Enter sends the question (Shift+Enter adds a line)"));
  enter_sends_->setObjectName(QStringLiteral("enterSendsBox"));
  enter_sends_->setChecked(enter_sends_setting(settings_));
  enter_sends_->setToolTip(tr("Off: Enter adds a line and Ctrl+Enter sends. Ctrl+Enter always sends."));
  data_directory_ = new QLineEdit(QString::fromStdString(data_directory(settings_).path().string()));
  data_directory_->setObjectName(QStringLiteral("dataDirectoryEdit"));
  data_directory_->setToolTip(
      tr("Where the session database and the models' cache live, shared with lightdesk-cli; applies from the next "
         "start"));
  // Wide enough to show the whole path, with room for a few more characters.
  data_directory_->setMinimumWidth(
      data_directory_->fontMetrics().horizontalAdvance(data_directory_->text() + QStringLiteral("MMMM")) +
      2 * data_directory_->style()->pixelMetric(QStyle::PM_DefaultFrameWidth));
  auto* browse = new QPushButton(tr("Browse…"));
  connect(browse, &QPushButton::clicked, this, [this] {
    const QString chosen = QFileDialog::getExistingDirectory(this, tr("Data directory"), data_directory_->text());
    if (!chosen.isEmpty()) data_directory_->setText(chosen);
  });
  auto* data_row = new QHBoxLayout;
  data_row->addWidget(data_directory_, 1);
  data_row->addWidget(browse);

  sampling_ = new SamplingEditor(load_sampling(settings_, family_, defaults));
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
  connect(buttons, &QDialogButtonBox::accepted, this, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
  auto* form = new QFormLayout(this);
  form->addRow(tr("Engine"), backend_);
  // Where the model lives: the GPUs and the context its memory is planned for. The memory
  // planner's other choices (expert format, experts kept in host memory) belong in this group.
  auto* placement = new QGroupBox(tr("Model placement"));
  placement->setObjectName(QStringLiteral("placementGroup"));
  auto* placement_form = new QFormLayout(placement);
  placement_form->addRow(tr("GPUs"), gpu_column);
  placement_form->addRow(tr("Context length"), context_);
  form->addRow(placement);
  form->addRow(enter_sends_);
  form->addRow(tr("Data directory"), data_row);
  if (family_.isEmpty()) {
    form->addRow(new QLabel(tr("Open a model to set its sampling.")));
  } else {
    form->addRow(new QLabel(tr("<b>Sampling of %1 models</b>").arg(family_.toHtmlEscaped())));
    form->addRow(sampling_);
  }
  form->addRow(buttons);
}

void SettingsDialog::accept() {
  settings_.setValue(QStringLiteral("engine/backend"), backend_->currentData().toString());
  if (!gpus_.isEmpty()) {
    QStringList checked;
    for (const QCheckBox* box : gpus_)
      if (box->isChecked()) checked.append(QString::number(box->property("gpu").toInt()));
    settings_.setValue(QStringLiteral("engine/gpus"), checked.join(QLatin1Char(',')));
  }
  settings_.setValue(QStringLiteral("engine/context"), context_->value());
  settings_.setValue(QStringLiteral("input/enterSends"), enter_sends_->isChecked());
  // The default is not saved as a choice: it follows $LIGHTDESK_DATA_DIR and $XDG_DATA_HOME.
  const QString chosen = data_directory_->text().trimmed();
  if (chosen.isEmpty() ||
      store::DataDirectory(std::filesystem::path(chosen.toStdString())).path() == store::DataDirectory().path())
    settings_.remove(QStringLiteral("dataDirectory"));
  else
    settings_.setValue(QStringLiteral("dataDirectory"), chosen);
  if (!family_.isEmpty())
    store_sampling(settings_, family_, sampling_->sampling());
  QDialog::accept();
}

}  // namespace lightdesk::gui
