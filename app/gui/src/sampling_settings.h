// A session's own settings, kept in its settings JSON: the sampling of its answers under
// "sampling" (else the model family's recommendation, or the user's choice for the family in
// Settings) and its system prompt under "system_prompt" (Session > Settings for this session).
#pragma once

#include <QJsonObject>

#include <optional>

namespace lightdesk::gui {

struct SamplingSettings {
  double temperature = 1.0;
  double top_p = 0.95;
  int top_k = 0;
  int max_new_tokens = 512;
  bool operator==(const SamplingSettings&) const = default;
};

QJsonObject to_json(const SamplingSettings& sampling);
// The sampling of a session's settings JSON ("sampling"), if it has its own.
std::optional<SamplingSettings> session_sampling(const QJsonObject& settings);
// `settings` with "sampling" set to `sampling`, or removed for none; the other keys kept.
QJsonObject with_session_sampling(QJsonObject settings, const std::optional<SamplingSettings>& sampling);
// The system prompt of a session's settings JSON (empty: none).
QString session_system_prompt(const QJsonObject& settings);
// `settings` with "system_prompt" set to `prompt`, or removed for an empty one; the other keys kept.
QJsonObject with_session_system_prompt(QJsonObject settings, const QString& prompt);

}  // namespace lightdesk::gui
