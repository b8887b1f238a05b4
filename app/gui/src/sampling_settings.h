// The sampling of an answer: the model family's recommendation, the user's choice for the family
// (Settings), or a session's own (Session > Sampling for this session), kept in the session's
// settings JSON under "sampling".
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

}  // namespace lightdesk::gui
