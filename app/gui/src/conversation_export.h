// A conversation written out for people (Markdown) or programs (JSON).
#pragma once

#include <QByteArray>
#include <QString>

#include "session_repository.h"

namespace lightdesk::gui {

// "# title", then each message under "## You" / "## Lightdesk"; the documents a question was
// sent with are listed by name, M1 reasoning is quoted before its answer.
QString conversation_markdown(const ChatSession& session);
// {"title", "messages": [{"role": "user"|"assistant", "text", "reasoning"?, "documents"?: [paths]}]}
QByteArray conversation_json(const ChatSession& session);
// Writes Markdown or JSON by the file name's suffix (.json: JSON, else Markdown). Throws
// lightdesk::Error naming the file when it cannot be written.
void export_conversation(const ChatSession& session, const QString& path);

}  // namespace lightdesk::gui
