#include "state_cache.h"

#include <algorithm>

namespace lightdesk::server {
namespace {

// The entry with the most tokens that are a strict prefix of `prompt`, moved to the front.
template <typename List, typename Tokens>
typename List::iterator use_longest_prefix(List& list, std::span<const TokenId> prompt, Tokens tokens_of) {
  auto best = list.end();
  for (auto it = list.begin(); it != list.end(); ++it) {
    const auto& tokens = tokens_of(*it);
    if (tokens.size() < prompt.size() && std::equal(tokens.begin(), tokens.end(), prompt.begin()) &&
        (best == list.end() || tokens.size() > tokens_of(*best).size()))
      best = it;
  }
  if (best == list.end()) return best;
  list.splice(list.begin(), list, best);
  return list.begin();
}

// Moves the entry holding `tokens` to the front; false if there is none.
template <typename List, typename Tokens>
bool use_same(List& list, const std::vector<TokenId>& tokens, Tokens tokens_of) {
  for (auto it = list.begin(); it != list.end(); ++it)
    if (tokens_of(*it) == tokens) {
      list.splice(list.begin(), list, it);
      return true;
    }
  return false;
}

}  // namespace

conversation::SavedStatePtr MemoryStateCache::longest_prefix_of(std::span<const TokenId> prompt) {
  const auto it = use_longest_prefix(states_, prompt, [](const auto& state) -> const auto& { return state->tokens(); });
  return it == states_.end() ? nullptr : *it;
}

void MemoryStateCache::keep(const Session& session) {
  if (session.position() == 0 || limit_bytes_ == 0) return;
  if (use_same(states_, session.tokens(), [](const auto& state) -> const auto& { return state->tokens(); })) return;
  auto state = conversation::EngineState::copy_of(session);
  if (state->bytes() > limit_bytes_) return;
  bytes_ += state->bytes();
  states_.push_front(std::move(state));
  while (bytes_ > limit_bytes_) {
    bytes_ -= states_.back()->bytes();
    states_.pop_back();
  }
}

StoredStateCache::StoredStateCache(const std::filesystem::path& database, const ModelInfo& model,
                                   std::size_t limit_bytes)
    : limit_bytes_(limit_bytes), store_(database) {
  const std::string name = "lightdesk-server " + model.state_identity();
  if (const auto found = store_.find_session(name))
    session_id_ = found->id;
  else
    session_id_ = store_.create_session("lightdesk-server states", store_.ensure_model(model), name);
  // Oldest first: each goes to the front.
  for (const auto& record : store_.checkpoints(session_id_)) {
    Entry entry{record.id, store_.checkpoint_tokens(record.id),
                static_cast<std::size_t>(store_.checkpoint_bytes(record.id))};
    bytes_ += entry.bytes;
    entries_.push_front(std::move(entry));
  }
}

conversation::SavedStatePtr StoredStateCache::longest_prefix_of(std::span<const TokenId> prompt) {
  const auto it = use_longest_prefix(entries_, prompt, [](const Entry& e) -> const auto& { return e.tokens; });
  if (it == entries_.end()) return nullptr;
  return std::make_shared<conversation::StoredCheckpoint>(store_.path(), it->checkpoint,
                                                          static_cast<std::int64_t>(it->tokens.size()));
}

void StoredStateCache::keep(const Session& session) {
  if (session.position() == 0 || limit_bytes_ == 0) return;
  if (use_same(entries_, session.tokens(), [](const Entry& e) -> const auto& { return e.tokens; })) return;
  const std::int64_t id = store_.save_checkpoint(session_id_, session);
  Entry entry{id, session.tokens(), static_cast<std::size_t>(store_.checkpoint_bytes(id))};
  bytes_ += entry.bytes;
  entries_.push_front(std::move(entry));
  while (bytes_ > limit_bytes_ && !entries_.empty()) {
    bytes_ -= entries_.back().bytes;
    store_.delete_checkpoint(entries_.back().checkpoint);
    entries_.pop_back();
  }
}

}  // namespace lightdesk::server
