#include <QApplication>
#include <QLabel>

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QLabel label(QObject::tr("Lightdesk: the desktop application is not built yet; use lightdesk-cli."));
  label.show();
  return app.exec();
}
