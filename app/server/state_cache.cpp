#include "state_cache.h"

#include <algorithm>

namespace lightdesk::server {

conversation::EngineStatePtr StateCache::longest_prefix_of(std::span<const TokenId> prompt) {
  auto best = states_.end();
  for (auto it = states_.begin(); it != states_.end(); ++it) {
    const auto& tokens = (*it)->tokens();
    if (tokens.size() < prompt.size() && std::equal(tokens.begin(), tokens.end(), prompt.begin()) &&
        (best == states_.end() || tokens.size() > (*best)->tokens().size()))
      best = it;
  }
  if (best == states_.end()) return nullptr;
  states_.splice(states_.begin(), states_, best);
  return states_.front();
}

void StateCache::keep(const Session& session) {
  if (session.position() == 0 || limit_bytes_ == 0) return;
  for (auto it = states_.begin(); it != states_.end(); ++it)
    if ((*it)->tokens() == session.tokens()) {
      states_.splice(states_.begin(), states_, it);
      return;
    }
  auto state = conversation::EngineState::copy_of(session);
  if (state->bytes() > limit_bytes_) return;
  bytes_ += state->bytes();
  states_.push_front(std::move(state));
  while (bytes_ > limit_bytes_) {
    bytes_ -= states_.back()->bytes();
    states_.pop_back();
  }
}

}  // namespace lightdesk::server
