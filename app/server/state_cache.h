// States of a session kept between requests: one at the end of each request's prompt and one at
// the end of its answer. A prompt that extends a kept state's tokens restores that state and
// feeds only the rest, whatever request came between (a hybrid model's lightning state cannot
// be rolled back, so only a state saved at exactly that prefix serves). Bounded in bytes; the
// least recently used state goes first.
#pragma once

#include <cstddef>
#include <list>
#include <span>

#include "lightdesk/engine_state.h"

namespace lightdesk::server {

class StateCache {
 public:
  explicit StateCache(std::size_t limit_bytes) : limit_bytes_(limit_bytes) {}

  // The kept state with the most tokens that are a strict prefix of `prompt` (the last prompt
  // token must still be fed for its logits), or null; it becomes the most recently used.
  conversation::EngineStatePtr longest_prefix_of(std::span<const TokenId> prompt);
  // Keeps a copy of the session's state (unless one of the same tokens is kept), then evicts the
  // least recently used states over the limit. A state larger than the limit is not kept.
  void keep(const Session& session);

  std::size_t bytes() const { return bytes_; }
  std::size_t size() const { return states_.size(); }

 private:
  std::size_t limit_bytes_;
  std::size_t bytes_ = 0;
  std::list<conversation::EngineStatePtr> states_;  // most recently used first
};

}  // namespace lightdesk::server
