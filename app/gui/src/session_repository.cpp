#include "session_repository.h"

#include <algorithm>

namespace lightdesk::gui {

QList<ChatSession> InMemorySessionRepository::list() const {
  QList<ChatSession> result;
  for (const auto& [id, session] : sessions_) result.append({session.id, session.title, session.last_used, {}});
  std::stable_sort(result.begin(), result.end(),
                   [](const ChatSession& a, const ChatSession& b) { return a.last_used > b.last_used; });
  return result;
}

std::optional<ChatSession> InMemorySessionRepository::load(qint64 id) const {
  const auto found = sessions_.find(id);
  if (found == sessions_.end()) return std::nullopt;
  return found->second;
}

ChatSession InMemorySessionRepository::create(const QString& title) {
  ChatSession session;
  session.id = next_id_++;
  session.title = title;
  session.last_used = QDateTime::currentDateTimeUtc();
  sessions_[session.id] = session;
  return session;
}

void InMemorySessionRepository::insert(const ChatSession& session) {
  sessions_[session.id] = session;
  next_id_ = std::max(next_id_, session.id + 1);
}

void InMemorySessionRepository::rename(qint64 id, const QString& title) {
  if (const auto found = sessions_.find(id); found != sessions_.end()) found->second.title = title;
}

void InMemorySessionRepository::remove(qint64 id) {
  sessions_.erase(id);
  states_.erase(id);
}

void InMemorySessionRepository::branch(qint64 id, qsizetype keep) {
  const auto found = sessions_.find(id);
  if (found == sessions_.end() || keep >= found->second.entries.size()) return;
  found->second.entries.resize(keep);
  // A state after more entries belongs to the branch that is gone.
  auto& states = states_[id];
  states.erase(states.upper_bound(keep), states.end());
}

void InMemorySessionRepository::saveState(qint64 id, qsizetype entries, EngineStatePtr state) {
  if (sessions_.count(id) == 0) return;
  auto& states = states_[id];
  if (state->kv_first() > 0) {
    // A state holding only its turn's K/V continues the one kept at its kv_first position.
    const auto earlier = std::find_if(states.begin(), states.end(), [&state](const auto& kept) {
      return static_cast<std::int64_t>(kept.second->tokens().size()) == state->kv_first();
    });
    try {
      if (earlier == states.end()) throw Error("no state of its first " + std::to_string(state->kv_first()) + " tokens is kept");
      state = state->continuing(earlier->second);
    } catch (const Error& error) {
      emit writeFailed(tr("The conversation's state after this answer could not be kept: %1").arg(error.what()));
      return;
    }
  }
  states[entries] = std::move(state);
}

void InMemorySessionRepository::loadState(qint64 id, qsizetype entries, const ModelInfo& model, QObject* context,
                                          std::function<void(const StateLoad&)> done) {
  StateLoad load;
  if (const auto session = states_.find(id); session != states_.end()) {
    if (auto saved = session->second.upper_bound(entries); saved != session->second.begin()) {
      --saved;
      load.entries = saved->first;
      if (saved->second->model().fingerprint == model.fingerprint)
        load.state = saved->second;
      else
        load.refused = tr("it was made by another model");
    }
  }
  // Later, as the store's answer comes: the caller sees one behaviour.
  QMetaObject::invokeMethod(context, [done = std::move(done), load] { done(load); }, Qt::QueuedConnection);
}

void InMemorySessionRepository::append(qint64 id, const ChatEntry& entry) {
  const auto found = sessions_.find(id);
  if (found == sessions_.end()) return;
  found->second.entries.append(entry);
  found->second.last_used = QDateTime::currentDateTimeUtc();
}

QList<MessageHit> InMemorySessionRepository::matches(const QString& query) const {
  auto matches = [&query](const QString& text) { return text.contains(query, Qt::CaseInsensitive); };
  QList<MessageHit> found;
  for (const ChatSession& summary : list()) {
    const ChatSession& session = sessions_.at(summary.id);
    const qsizetype before = found.size();
    bool other_hit = matches(session.title);
    for (qsizetype i = 0; i < session.entries.size(); ++i) {
      const ChatEntry& entry = session.entries[i];
      if (matches(entry.text) || matches(entry.reasoning)) found.append({session.id, i, entry.text.left(80)});
      for (const Attachment& document : entry.documents) other_hit = other_hit || matches(document.path) || matches(document.text);
    }
    if (other_hit && found.size() == before) found.append({session.id, -1, session.title});
  }
  return found;
}

void InMemorySessionRepository::search(const QString& query, QObject* context,
                                       std::function<void(const QList<MessageHit>&)> done) {
  QMetaObject::invokeMethod(context, [done = std::move(done), hits = matches(query)] { done(hits); },
                            Qt::QueuedConnection);
}

}  // namespace lightdesk::gui
