// The Lightdesk desktop application. Everything but the command line lives in lightdesk_gui.
#include <QApplication>
#include <QCommandLineParser>
#include <QSettings>

#include <memory>

#include "demo_script.h"
#include "main_window.h"
#include "session_repository.h"
#include "store_session_repository.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setOrganizationName(QStringLiteral("Lightdesk"));
  QApplication::setApplicationName(QStringLiteral("Lightdesk"));

  QCommandLineParser parser;
  parser.setApplicationDescription(QObject::tr("Chat with MiniMax models over long documents."));
  parser.addHelpOption();
  const QCommandLineOption model_option(QStringLiteral("model"), QObject::tr("Model directory to open."),
                                        QObject::tr("directory"));
  const QCommandLineOption demo_option(
      QStringLiteral("demo"), QObject::tr("Run a short conversation, save screenshots into <directory>, and quit."),
      QObject::tr("directory"));
  const QCommandLineOption attach_option(QStringLiteral("attach"), QObject::tr("Demo: document to attach."),
                                         QObject::tr("file"));
  const QCommandLineOption question_option(QStringLiteral("question"), QObject::tr("Demo: the question to ask."),
                                           QObject::tr("text"), QObject::tr("What is this document about?"));
  parser.addOptions({model_option, demo_option, attach_option, question_option});
  parser.process(app);

  QSettings settings;
  std::unique_ptr<lightdesk::gui::SessionRepository> sessions;
  const std::filesystem::path database = lightdesk::gui::session_database_path(settings);
  try {
    sessions = std::make_unique<lightdesk::gui::StoreSessionRepository>(database);
  } catch (const std::exception& error) {
    // The app stays usable without its database; only this run's sessions are then not kept.
    qWarning("Lightdesk: sessions will not be saved (%s: %s)", database.c_str(), error.what());
    sessions = std::make_unique<lightdesk::gui::InMemorySessionRepository>();
  }
  lightdesk::gui::MainWindow window(*sessions, settings);
  window.resize(1100, 700);
  window.show();

  if (parser.isSet(demo_option)) {
    auto* demo = new lightdesk::gui::DemoScript(
        window,
        {parser.value(model_option), parser.values(attach_option), parser.value(question_option),
         parser.value(demo_option)},
        &window);
    QObject::connect(demo, &lightdesk::gui::DemoScript::finished, &app, &QApplication::quit);
    demo->start();
  } else if (parser.isSet(model_option)) {
    window.openModelDirectory(parser.value(model_option));
  }
  return app.exec();
}
