// The Lightdesk desktop application. Everything but the command line lives in lightdesk_gui.
#include <QApplication>
#include <QCommandLineParser>
#include <QFileInfo>
#include <QSettings>

#include <memory>

#include "demo_script.h"
#include "lightdesk/installed_files.h"
#include "main_window.h"
#include "settings_dialog.h"
#include "session_repository.h"
#include "store_session_repository.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setOrganizationName(QStringLiteral("Lightdesk"));
  QApplication::setApplicationName(QStringLiteral("Lightdesk"));

  QCommandLineParser parser;
  parser.setApplicationDescription(QObject::tr("Chat with MiniMax models over long documents."));
  parser.addHelpOption();
  const QCommandLineOption model_option(
      QStringLiteral("model"), QObject::tr("Model directory to open (default: the last one opened; a first start offers the demo)."),
      QObject::tr("directory"));
  const QCommandLineOption document_option(
      QStringLiteral("document"), QObject::tr("Start a new session with this document attached (repeatable)."),
      QObject::tr("file"));
  const QCommandLineOption ask_option(
      QStringLiteral("ask"),
      QObject::tr("Start a new session and ask this question (after the documents); with --demo, a second one is "
                  "the follow-up."),
      QObject::tr("question"));
  const QCommandLineOption demo_option(
      QStringLiteral("demo"),
      QObject::tr("Hold a short conversation about the documents, save screenshots into <directory>, and quit."),
      QObject::tr("directory"));
  parser.addOptions({model_option, document_option, ask_option, demo_option});
  parser.process(app);

  QSettings settings;
  std::unique_ptr<lightdesk::gui::SessionRepository> sessions;
  try {
    sessions = std::make_unique<lightdesk::gui::StoreSessionRepository>(lightdesk::gui::session_database_path(settings));
  } catch (const std::exception& error) {
    // The app stays usable without its database; only this run's sessions are then not kept.
    // (The store's and the data directory's errors name the file.)
    qWarning("Lightdesk: sessions will not be saved (%s)", error.what());
    sessions = std::make_unique<lightdesk::gui::InMemorySessionRepository>();
  }
  lightdesk::gui::MainWindow window(*sessions, settings);
  // The bundled demo (installed packages): its model, its document and a question it answers.
  if (const auto demo = lightdesk::installed::demo_model_directory()) {
    const std::filesystem::path document = demo->parent_path().parent_path() / "demo" / "demo.txt";
    window.setDemo({QString::fromStdString(demo->string()), QString::fromStdString(document.string()),
                    QObject::tr("Where did Karl hide the letter?")});
  }
  window.show();

  if (parser.isSet(demo_option)) {
    // The first-launch picture shows "Try the demo" for the model and document of the run.
    window.setDemo({parser.value(model_option), parser.values(document_option).value(0), parser.values(ask_option).value(0)});
    auto* demo = new lightdesk::gui::DemoScript(
        window,
        {parser.value(model_option), parser.values(document_option),
         parser.isSet(ask_option) ? parser.values(ask_option) : QStringList{QObject::tr("What is this document about?")},
         parser.value(demo_option)},
        &window);
    QObject::connect(demo, &lightdesk::gui::DemoScript::finished, &app, &QApplication::quit);
    demo->start();
    return app.exec();
  }
  // Absolute paths: the model directory is remembered and the documents are stored with the
  // session, both for later runs started elsewhere.
  auto absolute = [](const QString& path) { return QFileInfo(path).absoluteFilePath(); };
  if (parser.isSet(document_option) || parser.isSet(ask_option)) {
    QStringList documents;
    for (const QString& document : parser.values(document_option)) documents.append(absolute(document));
    window.startSession(documents, parser.values(ask_option).value(0));
  }
  // A first start offers "Try the demo" (the model with its document) rather than opening a model.
  const QString model = parser.isSet(model_option) ? absolute(parser.value(model_option)) : window.lastModelDirectory();
  if (!model.isEmpty()) window.openModelDirectory(model);
  return app.exec();
}
