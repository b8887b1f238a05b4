#include "conversation_export.h"

#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSaveFile>

#include "lightdesk/engine.h"

namespace lightdesk::gui {

QString conversation_markdown(const ChatSession& session) {
  QString markdown = QStringLiteral("# %1\n").arg(session.title);
  if (!session.system_prompt.isEmpty())
    markdown += QStringLiteral("\n") + QObject::tr("System prompt: %1").arg(session.system_prompt) + QLatin1Char('\n');
  for (const ChatEntry& entry : session.entries) {
    const bool from_user = entry.role == ChatEntry::Role::User;
    markdown += QStringLiteral("\n## %1\n\n").arg(from_user ? QObject::tr("You") : QObject::tr("Lightdesk"));
    if (!entry.documents.isEmpty()) {
      QStringList names;
      for (const Attachment& document : entry.documents) names.append(QFileInfo(document.path).fileName());
      markdown += QObject::tr("Documents: %1").arg(names.join(QStringLiteral(", "))) + QStringLiteral("\n\n");
    }
    if (!entry.reasoning.isEmpty())
      markdown += QStringLiteral("> ") + QString(entry.reasoning).replace(QLatin1Char('\n'), QStringLiteral("\n> ")) +
                  QStringLiteral("\n\n");
    markdown += entry.text + QLatin1Char('\n');
  }
  return markdown;
}

QByteArray conversation_json(const ChatSession& session) {
  QJsonArray messages;
  for (const ChatEntry& entry : session.entries) {
    QJsonObject message{{QStringLiteral("role"), entry.role == ChatEntry::Role::User ? QStringLiteral("user")
                                                                                      : QStringLiteral("assistant")},
                        {QStringLiteral("text"), entry.text}};
    if (!entry.reasoning.isEmpty()) message.insert(QStringLiteral("reasoning"), entry.reasoning);
    if (!entry.documents.isEmpty()) {
      QJsonArray documents;
      for (const Attachment& document : entry.documents) documents.append(document.path);
      message.insert(QStringLiteral("documents"), documents);
    }
    messages.append(message);
  }
  QJsonObject conversation{{QStringLiteral("title"), session.title}, {QStringLiteral("messages"), messages}};
  if (!session.system_prompt.isEmpty()) conversation.insert(QStringLiteral("system_prompt"), session.system_prompt);
  return QJsonDocument(conversation).toJson();
}

void export_conversation(const ChatSession& session, const QString& path) {
  const bool json = QFileInfo(path).suffix().compare(QStringLiteral("json"), Qt::CaseInsensitive) == 0;
  QSaveFile file(path);
  if (!file.open(QIODevice::WriteOnly) ||
      file.write(json ? conversation_json(session) : conversation_markdown(session).toUtf8()) < 0 || !file.commit())
    throw Error(path.toStdString() + ": cannot write (" + file.errorString().toStdString() + ")");
}

}  // namespace lightdesk::gui
