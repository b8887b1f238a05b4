#include "sampling_settings.h"

namespace lightdesk::gui {

QJsonObject to_json(const SamplingSettings& sampling) {
  return {{QStringLiteral("temperature"), sampling.temperature},
          {QStringLiteral("top_p"), sampling.top_p},
          {QStringLiteral("top_k"), sampling.top_k},
          {QStringLiteral("max_new_tokens"), sampling.max_new_tokens}};
}

std::optional<SamplingSettings> session_sampling(const QJsonObject& settings) {
  const QJsonValue value = settings.value(QStringLiteral("sampling"));
  if (!value.isObject()) return std::nullopt;
  const QJsonObject object = value.toObject();
  const SamplingSettings defaults;
  return SamplingSettings{object.value(QStringLiteral("temperature")).toDouble(defaults.temperature),
                          object.value(QStringLiteral("top_p")).toDouble(defaults.top_p),
                          object.value(QStringLiteral("top_k")).toInt(defaults.top_k),
                          object.value(QStringLiteral("max_new_tokens")).toInt(defaults.max_new_tokens)};
}

QJsonObject with_session_sampling(QJsonObject settings, const std::optional<SamplingSettings>& sampling) {
  if (sampling)
    settings.insert(QStringLiteral("sampling"), to_json(*sampling));
  else
    settings.remove(QStringLiteral("sampling"));
  return settings;
}

QString session_system_prompt(const QJsonObject& settings) {
  return settings.value(QStringLiteral("system_prompt")).toString();
}

QJsonObject with_session_system_prompt(QJsonObject settings, const QString& prompt) {
  if (prompt.isEmpty())
    settings.remove(QStringLiteral("system_prompt"));
  else
    settings.insert(QStringLiteral("system_prompt"), prompt);
  return settings;
}

}  // namespace lightdesk::gui
