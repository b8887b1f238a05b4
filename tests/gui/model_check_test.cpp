// The model check's plan and choices (ModelCheckDialog) on the released MiniMax-Text-01 config
// (tests/data/real, no weights) against hypothetical GPUs; the choice remembered per model and
// loaded through apply_plan with the bundled models; the pruned mode's lost-mass figure; a state
// saved under int8 experts not restored under bf16. With LIGHTDESK_SCREENSHOTS=DIR the dialog's
// pictures of docs/walkthrough.md are saved there.
#include <QCheckBox>
#include <QComboBox>
#include <QDialogButtonBox>
#include <QFile>
#include <QLabel>
#include <QPushButton>
#include <QRadioButton>
#include <QSettings>
#include <QSignalSpy>
#include <QSpinBox>
#include <QTemporaryDir>
#include <QTest>

#include <filesystem>
#include <memory>

#include "main_window.h"
#include "model_check_dialog.h"
#include "session_repository.h"
#include "status_panel.h"
#include "store_session_repository.h"
#include "window_test_util.h"

using namespace lightdesk;
using namespace lightdesk::gui;

namespace {

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr std::int64_t k128K = 131072;
const QString kDemoDirectory = QStringLiteral(LIGHTDESK_SOURCE_DIR "/resources/models/lightdesk-demo");

// MiniMax-Text-01 on one GPU of `gib` GiB, as the engine thread would check it.
ModelCheck text01_on_one_gpu(std::uint64_t gib) {
  static const ModelInfo inspected = [] {
    ModelOptions cpu;
    cpu.backend = BackendKind::Cpu;
    return Model::inspect(std::filesystem::path(LIGHTDESK_TEST_DATA) / "real/MiniMax-Text-01", cpu);
  }();
  ModelInfo info = inspected;
  info.backend = BackendKind::Cuda;
  return memory_check(info, gib * kGiB, QStringLiteral("GPU 0 (%1 GiB)").arg(gib));
}

// A pattern ranking every layer's experts by id, the highest first.
ExpertPattern highest_ids_first(const ModelInfo& m, const std::string& task) {
  ExpertPattern pattern;
  pattern.task = task;
  pattern.layers.resize(static_cast<std::size_t>(m.num_layers));
  for (auto& layer : pattern.layers)
    for (int e = m.num_experts - 1; e >= 0; --e) layer.push_back({e, static_cast<double>(e)});
  return pattern;
}

template <typename T>
T* child(QWidget& parent, const char* name) {
  T* found = parent.findChild<T*>(QString::fromLatin1(name));
  if (!found) qFatal("no widget %s", name);
  return found;
}

void saveScreenshot(QWidget& widget, const QString& name) {
  const QString directory = qEnvironmentVariable("LIGHTDESK_SCREENSHOTS");
  if (directory.isEmpty()) return;
  widget.adjustSize();
  QVERIFY(widget.grab().save(directory + QLatin1Char('/') + name));
}

}  // namespace

class ModelCheckTest : public QObject {
  Q_OBJECT

 private slots:
  void init() {
    QVERIFY(directory_.isValid());
    settings_ = window_test::freshSettings(directory_, 4);
    // The quantized experts' cache in the test's own data directory.
    settings_->setValue(QStringLiteral("dataDirectory"), directory_.filePath(QStringLiteral("data")));
    // The demo model's 4M-token context would not fit every machine's memory.
    settings_->setValue(QStringLiteral("engine/context"), 4096);
  }

  void quantizeToFitIsExplainedAndThePlannersChoiceMarked() {
    // 500 GiB at 128K: bf16 experts need 859 GiB, int8 454 (the planner's), int4 264.
    const ModelCheck check = text01_on_one_gpu(500);
    ModelCheckDialog dialog(check, k128K, {});
    dialog.show();
    QVERIFY(quantized_to_fit(planned_check(check, k128K, 0)));
    auto* note = child<QLabel>(dialog, "quantizeNote");
    QVERIFY(note->isVisible());
    QVERIFY2(note->text().startsWith(QStringLiteral("Quantize experts to fit")), qPrintable(note->text()));
    QVERIFY2(child<QLabel>(dialog, "planLabel")->text().contains(QStringLiteral("Plan: int8 experts on 1 GPU")),
             qPrintable(child<QLabel>(dialog, "planLabel")->text()));
    auto* bf16 = child<QRadioButton>(dialog, "format_bf16");
    auto* int8 = child<QRadioButton>(dialog, "format_int8");
    auto* int4 = child<QRadioButton>(dialog, "format_int4");
    QVERIFY(!bf16->isEnabled());
    QVERIFY2(bf16->text().contains(QStringLiteral("does not fit")), qPrintable(bf16->text()));
    QVERIFY(int8->isChecked());
    QVERIFY2(int8->text().contains(QStringLiteral("the planner's choice")), qPrintable(int8->text()));
    QVERIFY(!int4->text().contains(QStringLiteral("the planner's choice")));
    // The planner's own format is remembered as "the planner's choice".
    QVERIFY(!dialog.choice().experts);
    QVERIFY(dialog.plan());
    QCOMPARE(dialog.check().plan.plans[*dialog.plan()].candidate.experts, ExpertFormat::Int8);
    saveScreenshot(dialog, QStringLiteral("quantize-to-fit.png"));
    // int4 instead: chosen by name, and said as what loads.
    int4->click();
    QVERIFY(dialog.choice().experts == std::optional(ExpertFormat::Int4));
    QCOMPARE(dialog.check().plan.plans[*dialog.plan()].candidate.experts, ExpertFormat::Int4);
    QVERIFY2(child<QLabel>(dialog, "planLabel")->text().contains(QStringLiteral("Loads: int4 experts on 1 GPU")),
             qPrintable(child<QLabel>(dialog, "planLabel")->text()));
    // No host expert store without host memory to plan it in, nor where the engine does not run one.
    QVERIFY(!child<QCheckBox>(dialog, "hostStoreBox")->isVisible());
  }

  void prunedExpertsAreOptInWithTheirWarning() {
    // 141 GiB at 128K: no format of all 32 experts fits; 8 per layer in int4 do (100.9 GiB).
    ModelCheck check = text01_on_one_gpu(141);
    QVERIFY(!planned_check(check, k128K, 0).fits());
    {
      ModelCheckDialog without(check, k128K, {});
      QVERIFY2(!child<QCheckBox>(without, "prunedBox")->isEnabled(), "no shipped pattern, no pruned mode");
      QVERIFY(!without.plan());
      auto* buttons = without.findChild<QDialogButtonBox*>();
      QVERIFY(!buttons->button(QDialogButtonBox::Ok)->isEnabled());
      // Nothing fits: the planner's advice, in words.
      const QString text = child<QLabel>(without, "planLabel")->text();
      QVERIFY2(text.contains(QStringLiteral("Nothing this build runs fits in GPU 0 (141 GiB)")), qPrintable(text));
      QVERIFY2(text.contains(QStringLiteral("It would fit with: ")), qPrintable(text));
    }
    check.patterns = {highest_ids_first(check.model, "code"), highest_ids_first(check.model, "contracts")};
    ModelCheckDialog dialog(check, k128K, {});
    dialog.show();
    auto* pruned = child<QCheckBox>(dialog, "prunedBox");
    QVERIFY(pruned->isEnabled());
    QVERIFY(!pruned->isChecked());
    QVERIFY(!child<QSpinBox>(dialog, "keptSpin")->isEnabled());
    QVERIFY(child<QLabel>(dialog, "prunedWarning")->text().contains(QStringLiteral("not exact")));
    pruned->setChecked(true);
    child<QSpinBox>(dialog, "keptSpin")->setValue(8);
    child<QComboBox>(dialog, "patternCombo")->setCurrentIndex(1);
    QVERIFY(dialog.plan());
    const MemoryPlan& plan = dialog.check().plan.plans[*dialog.plan()];
    QCOMPARE(plan.candidate.experts_kept, 8);
    QCOMPARE(plan.candidate.experts, ExpertFormat::Int4);
    QVERIFY(child<QRadioButton>(dialog, "format_int4")->text().contains(QStringLiteral("the planner's choice")));
    const LoadChoice choice = dialog.choice();
    QCOMPARE(choice.experts_kept, 8);
    QCOMPARE(choice.pattern, QStringLiteral("contracts"));
    QCOMPARE(chosen_pattern(dialog.check(), choice)->task, std::string("contracts"));
    // What loads: the pattern's best 8 per layer, through the engine's mapping.
    const ModelOptions options = apply_plan(plan, {}, chosen_pattern(dialog.check(), choice));
    QCOMPARE(options.experts.experts_kept(), 8);
    QCOMPARE(options.expert_dtype, ExpertFormat::Int4);
    saveScreenshot(dialog, QStringLiteral("pruned.png"));
  }

  void aDamagedPatternFileIsNamed() {
    // The tiny model's files, with a pattern file that is not JSON: the pruned mode is not
    // offered, and its tooltip says why.
    const std::filesystem::path copy = std::filesystem::path(directory_.filePath(QStringLiteral("model")).toStdString());
    std::filesystem::copy(window_test::kModelDirectory.toStdString(), copy, std::filesystem::copy_options::recursive);
    {
      QFile file(QString::fromStdString((copy / "expert_patterns.json").string()));
      QVERIFY(file.open(QIODevice::WriteOnly));
      file.write("{\"patterns\": [");
    }
    EngineWorker worker;
    QSignalSpy checked(&worker, &EngineWorker::modelChecked);
    worker.checkModel(QString::fromStdString(copy.string()), QStringLiteral("cpu"));
    QCOMPARE(checked.size(), 1);
    const ModelCheck check = checked.front().front().value<ModelCheck>();
    QVERIFY(check.patterns.empty());
    QVERIFY2(check.patterns_problem.contains(QStringLiteral("expert_patterns.json")), qPrintable(check.patterns_problem));
    ModelCheckDialog dialog(check, 0, {});
    auto* pruned = child<QCheckBox>(dialog, "prunedBox");
    QVERIFY(!pruned->isEnabled());
    QVERIFY2(pruned->toolTip().contains(QStringLiteral("cannot be read")), qPrintable(pruned->toolTip()));
  }

  void theChoiceIsRememberedPerModel() {
    LoadChoice int4;
    int4.experts = ExpertFormat::Int4;
    save_load_choice(*settings_, QStringLiteral("fingerprint-a"), int4);
    LoadChoice pruned;
    pruned.experts_kept = 4;
    pruned.pattern = QStringLiteral("record");
    save_load_choice(*settings_, QStringLiteral("fingerprint-b"), pruned);
    QVERIFY(load_choice(*settings_, QStringLiteral("fingerprint-a")).experts == std::optional(ExpertFormat::Int4));
    QCOMPARE(load_choice(*settings_, QStringLiteral("fingerprint-a")).experts_kept, 0);
    const LoadChoice b = load_choice(*settings_, QStringLiteral("fingerprint-b"));
    QVERIFY(b.remembered);
    QVERIFY(!b.experts);
    QCOMPARE(b.experts_kept, 4);
    QCOMPARE(b.pattern, QStringLiteral("record"));
    QVERIFY(!load_choice(*settings_, QStringLiteral("never-seen")).remembered);
    // A remembered format that does not fit names no plan: the dialog asks again.
    LoadChoice bf16;
    bf16.experts = ExpertFormat::Bf16;
    QVERIFY(!chosen_plan(planned_check(text01_on_one_gpu(500), k128K, 0), bf16));
    QVERIFY(chosen_plan(planned_check(text01_on_one_gpu(500), k128K, 0), int4));
  }

  // Task 4: a state computed with int8 experts is not the state of the bf16 model.
  void stateSavedUnderInt8IsRecomputedUnderBf16_data() {
    QTest::addColumn<bool>("store");
    QTest::newRow("in memory") << false;
    QTest::newRow("session store") << true;
  }
  void stateSavedUnderInt8IsRecomputedUnderBf16() {
    QFETCH(bool, store);
    std::unique_ptr<SessionRepository> sessions;
    if (store)
      sessions = std::make_unique<StoreSessionRepository>(directory_.filePath(QStringLiteral("sessions.sqlite")).toStdString());
    else
      sessions = std::make_unique<InMemorySessionRepository>();
    MainWindow window(*sessions, *settings_);
    window.show();
    ModelOptions cpu;
    cpu.backend = BackendKind::Cpu;
    const QString key = model_key(Model::inspect(window_test::kModelDirectory.toStdString(), cpu));
    LoadChoice int8;
    int8.experts = ExpertFormat::Int8;
    save_load_choice(*settings_, key, int8);
    window_test::openModel(window);
    QVERIFY2(child<QLabel>(window, "modelLabel")->text().contains(QStringLiteral("Plan: int8 experts in host memory")),
             qPrintable(child<QLabel>(window, "modelLabel")->text()));
    window_test::ask(window, QStringLiteral("What is kept?"));

    LoadChoice bf16;
    bf16.experts = ExpertFormat::Bf16;
    save_load_choice(*settings_, key, bf16);
    QSignalSpy errors(&window, &MainWindow::errorShown);
    window_test::openModel(window);
    QVERIFY(child<QLabel>(window, "modelLabel")->text().contains(QStringLiteral("Plan: float32 weights in host memory")));
    QTRY_VERIFY_WITH_TIMEOUT(!errors.isEmpty(), window_test::kTimeoutMs);
    const QString refused = errors.front().front().toString();
    QVERIFY2(refused.contains(QStringLiteral("int8 experts")), qPrintable(refused));
    // Recomputed: the next question reads the whole conversation again.
    window_test::ask(window, QStringLiteral("And then?"));
    QVERIFY2(!window_test::statusText(window).contains(QStringLiteral("kept from the session state")),
             qPrintable(window_test::statusText(window)));
  }

  void stateMismatchNamesTheCause() {
    ModelInfo saved;
    saved.fingerprint = "abc";
    saved.expert_format = ExpertFormat::Int8;
    ModelInfo now = saved;
    QVERIFY(state_mismatch(saved, now).isEmpty());
    now.expert_format = ExpertFormat::Bf16;
    QCOMPARE(state_mismatch(saved, now), QStringLiteral("it was computed with int8 experts; the model now runs bf16 experts"));
    now = saved;
    now.experts.kept.assign(2, {0, 1});
    now.experts.pattern = "record";
    QVERIFY2(state_mismatch(saved, now).contains(QStringLiteral("pattern \"record\"")), qPrintable(state_mismatch(saved, now)));
    now = saved;
    now.fingerprint = "other";
    QCOMPARE(state_mismatch(saved, now), QStringLiteral("it was made by another model"));
  }

  void prunedTurnShowsTheMassLostAndOffersAllExperts() {
    const std::filesystem::path database = directory_.filePath(QStringLiteral("pruned.sqlite")).toStdString();
    auto sessions = std::make_unique<StoreSessionRepository>(database);
    auto window_owner = std::make_unique<MainWindow>(*sessions, *settings_);
    MainWindow& window = *window_owner;
    window.show();
    ModelOptions cpu;
    cpu.backend = BackendKind::Cpu;
    const QString key = model_key(Model::inspect(kDemoDirectory.toStdString(), cpu));
    LoadChoice pruned;
    pruned.experts_kept = 2;  // of 8: much of the router's choice is lost
    pruned.pattern = QStringLiteral("record");
    save_load_choice(*settings_, key, pruned);
    QSignalSpy ready(&window, &MainWindow::modelReady);
    window.openModelDirectory(kDemoDirectory);
    QVERIFY(ready.wait(window_test::kTimeoutMs));
    QVERIFY2(child<QLabel>(window, "modelLabel")->text().contains(QStringLiteral("2 experts per layer (pruned)")),
             qPrintable(child<QLabel>(window, "modelLabel")->text()));
    window_test::ask(window, QStringLiteral("Where is the passkey?"));
    const QString figure = child<QLabel>(window, "expertsLabel")->text();
    QVERIFY2(figure.contains(QStringLiteral("experts missed: ")), qPrintable(figure));
    // Two of eight experts hold well under all of the mass: over the warning, with the offer.
    auto* all = child<QPushButton>(window, "allExpertsButton");
    QVERIFY2(all->isVisible(), qPrintable(figure));
    QVERIFY2(window_test::statusText(window).contains(QStringLiteral("may be less accurate")),
             qPrintable(window_test::statusText(window)));
    all->click();
    QVERIFY(ready.wait(window_test::kTimeoutMs));
    QCOMPARE(load_choice(*settings_, key).experts_kept, 0);
    QVERIFY2(!child<QLabel>(window, "modelLabel")->text().contains(QStringLiteral("pruned")),
             qPrintable(child<QLabel>(window, "modelLabel")->text()));
    window_test::ask(window, QStringLiteral("Where is the passkey?"));
    QVERIFY(child<QLabel>(window, "expertsLabel")->text().isEmpty());
    QVERIFY(!all->isVisible());
    // Stored with each answer: the pruned one's share, none for the exact one.
    window_owner.reset();
    sessions.reset();
    StoreSessionRepository reopened(database);
    const QList<ChatSession> listed = reopened.list();
    QCOMPARE(listed.size(), 1);
    const QList<ChatEntry> entries = reopened.load(listed.front().id)->entries;
    QCOMPARE(entries.size(), 4);
    QVERIFY(entries[1].expert_lost_mass && *entries[1].expert_lost_mass > 0.1);
    QVERIFY(!entries[3].expert_lost_mass);
  }

  void statusFigureOfALowLoss() {
    StatusPanel panel([] { return QString(); });
    panel.show();
    QSignalSpy offered(&panel, &StatusPanel::reloadWithAllExpertsRequested);
    panel.showExpertLoss(0.034, false);
    QCOMPARE(child<QLabel>(panel, "expertsLabel")->text(), QStringLiteral("experts missed: 3.4%"));
    QVERIFY(!child<QPushButton>(panel, "allExpertsButton")->isVisible());
    panel.showExpertLoss(0.25, true);
    QVERIFY(child<QLabel>(panel, "expertsLabel")->text().contains(QStringLiteral("25.0%")));
    child<QPushButton>(panel, "allExpertsButton")->click();
    QCOMPARE(offered.size(), 1);
    panel.clearAnswerFigures();
    QVERIFY(child<QLabel>(panel, "expertsLabel")->text().isEmpty());
  }

  void loadOptionsOpenBeforeTheLoad() {
    // File > Load options… on the demo model: its shipped patterns offer the pruned mode; Load
    // loads what the dialog says and remembers it.
    InMemorySessionRepository sessions;
    MainWindow window(sessions, *settings_);
    window.show();
    QSignalSpy ready(&window, &MainWindow::modelReady);
    window.openModelDirectory(kDemoDirectory, true);
    QTRY_VERIFY_WITH_TIMEOUT(window.findChild<ModelCheckDialog*>() != nullptr, window_test::kTimeoutMs);
    auto* dialog = window.findChild<ModelCheckDialog*>();
    QVERIFY(ready.isEmpty());
    QVERIFY(!child<QLabel>(*dialog, "quantizeNote")->isVisible());
    const QString values = child<QRadioButton>(*dialog, "format_bf16")->text();
    QVERIFY2(values.startsWith(QStringLiteral("float32 (the checkpoint's values)")), qPrintable(values));
    QVERIFY2(values.contains(QStringLiteral("the planner's choice")), qPrintable(values));
    QCOMPARE(child<QComboBox>(*dialog, "patternCombo")->count(), 4);
    child<QRadioButton>(*dialog, "format_int8")->click();
    saveScreenshot(*dialog, QStringLiteral("demo.png"));
    dialog->accept();
    QVERIFY(ready.wait(window_test::kTimeoutMs));
    QVERIFY2(child<QLabel>(window, "modelLabel")->text().contains(QStringLiteral("Plan: int8 experts in host memory")),
             qPrintable(child<QLabel>(window, "modelLabel")->text()));
    ModelOptions cpu;
    cpu.backend = BackendKind::Cpu;
    QVERIFY(load_choice(*settings_, model_key(Model::inspect(kDemoDirectory.toStdString(), cpu))).experts ==
            std::optional(ExpertFormat::Int8));
  }

 private:
  QTemporaryDir directory_;
  std::unique_ptr<QSettings> settings_;
};

QTEST_MAIN(ModelCheckTest)
#include "model_check_test.moc"
