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
  trees_[session.id];
  return session;
}

void InMemorySessionRepository::insert(const ChatSession& session, const QList<Message>& messages) {
  sessions_[session.id] = session;
  trees_[session.id].messages = messages;
  next_id_ = std::max(next_id_, session.id + 1);
  if (!messages.isEmpty()) showThrough(session.id, messages.size() - 1);
}

QList<qsizetype> InMemorySessionRepository::shownMessages(qint64 id) const {
  const auto tree = trees_.find(id);
  return tree == trees_.end() ? QList<qsizetype>{} : tree->second.shown;
}

void InMemorySessionRepository::showThrough(qint64 id, qsizetype message) {
  Tree& tree = trees_[id];
  QList<qsizetype> path;
  for (qsizetype m = message; m >= 0; m = tree.messages[m].parent) path.prepend(m);
  // Then down, each time to the newest child.
  for (bool deeper = true; deeper;) {
    deeper = false;
    for (qsizetype m = tree.messages.size() - 1; m > path.back(); --m) {
      if (tree.messages[m].parent != path.back()) continue;
      path.append(m);
      deeper = true;
      break;
    }
  }
  tree.shown = path;
  QList<ChatEntry>& entries = sessions_[id].entries;
  entries.clear();
  for (const qsizetype m : path) entries.append(tree.messages[m].entry);
}

SiblingPlace InMemorySessionRepository::siblings(qint64 id, qsizetype entry) const {
  const auto tree = trees_.find(id);
  if (tree == trees_.end() || entry < 0 || entry >= tree->second.shown.size()) return {};
  const qsizetype message = tree->second.shown[entry];
  const qsizetype parent = tree->second.messages[message].parent;
  SiblingPlace place{0, 0};
  for (qsizetype m = 0; m < tree->second.messages.size(); ++m) {
    if (tree->second.messages[m].parent != parent) continue;
    ++place.count;
    if (m <= message) ++place.index;
  }
  return place;
}

std::optional<ChatSession> InMemorySessionRepository::showSibling(qint64 id, qsizetype entry, int index) {
  const auto tree = trees_.find(id);
  if (tree == trees_.end() || entry < 0 || entry >= tree->second.shown.size()) return std::nullopt;
  const qsizetype parent = tree->second.messages[tree->second.shown[entry]].parent;
  int seen = 0;
  for (qsizetype m = 0; m < tree->second.messages.size(); ++m) {
    if (tree->second.messages[m].parent != parent || ++seen != index) continue;
    showThrough(id, m);
    return sessions_.at(id);
  }
  return std::nullopt;
}

std::optional<std::pair<ChatSession, qsizetype>> InMemorySessionRepository::showBranchOf(qint64 id, qsizetype message) {
  const auto tree = trees_.find(id);
  if (tree == trees_.end() || message < 0 || message >= tree->second.messages.size()) return std::nullopt;
  showThrough(id, message);
  return std::pair{sessions_.at(id), tree->second.shown.indexOf(message)};
}

void InMemorySessionRepository::rename(qint64 id, const QString& title) {
  if (const auto found = sessions_.find(id); found != sessions_.end()) found->second.title = title;
}

void InMemorySessionRepository::setSampling(qint64 id, const std::optional<SamplingSettings>& sampling) {
  if (const auto found = sessions_.find(id); found != sessions_.end()) found->second.sampling = sampling;
}

void InMemorySessionRepository::setSystemPrompt(qint64 id, const QString& prompt) {
  if (const auto found = sessions_.find(id); found != sessions_.end()) found->second.system_prompt = prompt;
}

void InMemorySessionRepository::remove(qint64 id) {
  sessions_.erase(id);
  trees_.erase(id);
  states_.erase(id);
}

void InMemorySessionRepository::branch(qint64 id, qsizetype keep) {
  const auto found = sessions_.find(id);
  if (found == sessions_.end() || keep >= found->second.entries.size()) return;
  found->second.entries.resize(keep);
  trees_[id].shown.resize(keep);  // the messages after it stay, on an earlier branch
}

void InMemorySessionRepository::saveState(qint64 id, qsizetype entries, EngineStatePtr state) {
  const auto tree = trees_.find(id);
  if (tree == trees_.end() || entries <= 0 || entries > tree->second.shown.size()) return;
  auto& states = states_[id];
  try {
    state = EngineState::materialized(std::move(state));  // kept in memory: this repository's copy
  } catch (const Error& error) {
    emit writeFailed(tr("The conversation's state after this answer could not be kept: %1").arg(error.what()));
    return;
  }
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
  states[tree->second.shown[entries - 1]] = std::move(state);
}

void InMemorySessionRepository::loadState(qint64 id, qsizetype entries, const ModelInfo& model, QObject* context,
                                          std::function<void(const StateLoad&)> done) {
  StateLoad load;
  const auto session = states_.find(id);
  const QList<qsizetype> shown = shownMessages(id);
  // The state after the deepest of the shown branch's first `entries` messages that has one.
  for (qsizetype i = std::min(entries, shown.size()); session != states_.end() && i > 0; --i) {
    const auto saved = session->second.find(shown[i - 1]);
    if (saved == session->second.end()) continue;
    load.entries = i;
    if (saved->second->model().fingerprint == model.fingerprint)
      load.state = saved->second;
    else
      load.refused = tr("it was made by another model");
    break;
  }
  // Later, as the store's answer comes: the caller sees one behaviour.
  QMetaObject::invokeMethod(context, [done = std::move(done), load] { done(load); }, Qt::QueuedConnection);
}

void InMemorySessionRepository::append(qint64 id, const ChatEntry& entry) {
  const auto found = sessions_.find(id);
  if (found == sessions_.end()) return;
  Tree& tree = trees_[id];
  tree.messages.append({entry, tree.shown.isEmpty() ? -1 : tree.shown.back()});
  tree.shown.append(tree.messages.size() - 1);
  found->second.entries.append(entry);
  found->second.last_used = QDateTime::currentDateTimeUtc();
}

QList<MessageHit> InMemorySessionRepository::matches(const QString& query) const {
  auto matches = [&query](const QString& text) { return text.contains(query, Qt::CaseInsensitive); };
  QList<MessageHit> found;
  for (const ChatSession& summary : list()) {
    const ChatSession& session = sessions_.at(summary.id);
    const Tree& tree = trees_.at(summary.id);
    const qsizetype before = found.size();
    bool other_hit = matches(session.title);
    for (qsizetype m = 0; m < tree.messages.size(); ++m) {
      const ChatEntry& entry = tree.messages[m].entry;
      if (matches(entry.text) || matches(entry.reasoning)) found.append({session.id, tree.shown.indexOf(m), entry.text.left(80), m});
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
