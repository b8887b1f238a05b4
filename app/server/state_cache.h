// States of a session kept between requests: one at the end of each request's prompt and one at
// the end of its answer. A prompt that extends a kept state's tokens restores that state and
// feeds only the rest, whatever request came between (a hybrid model's lightning state cannot
// be rolled back, so only a state saved at exactly that prefix serves). Bounded in bytes; the
// least recently used state goes first. Kept in memory, or as checkpoints of a session database
// (surviving restarts; states that share a prefix share its stored K/V).
#pragma once

#include <cstddef>
#include <filesystem>
#include <list>
#include <memory>
#include <span>
#include <vector>

#include "lightdesk/engine_state.h"
#include "lightdesk/store.h"

namespace lightdesk::server {

class StateCache {
 public:
  virtual ~StateCache() = default;
  // The kept state with the most tokens that are a strict prefix of `prompt` (the last prompt
  // token must still be fed for its logits), or null; it becomes the most recently used.
  virtual conversation::SavedStatePtr longest_prefix_of(std::span<const TokenId> prompt) = 0;
  // Keeps the session's state (unless one of the same tokens is kept), then drops the least
  // recently used states over the limit. A state larger than the limit is not kept.
  virtual void keep(const Session& session) = 0;
  virtual std::size_t size() const = 0;
};

class MemoryStateCache final : public StateCache {
 public:
  explicit MemoryStateCache(std::size_t limit_bytes) : limit_bytes_(limit_bytes) {}
  conversation::SavedStatePtr longest_prefix_of(std::span<const TokenId> prompt) override;
  void keep(const Session& session) override;
  std::size_t size() const override { return states_.size(); }
  std::size_t bytes() const { return bytes_; }

 private:
  std::size_t limit_bytes_;
  std::size_t bytes_ = 0;
  std::list<conversation::EngineStatePtr> states_;  // most recently used first
};

class StoredStateCache final : public StateCache {
 public:
  // The states of `model` as checkpoints of one session of `database` (created if missing),
  // those saved by an earlier run included. `limit_bytes` bounds the sum of the checkpoints'
  // sizes (shared K/V counted in each, so the file stays below it).
  StoredStateCache(const std::filesystem::path& database, const ModelInfo& model, std::size_t limit_bytes);
  conversation::SavedStatePtr longest_prefix_of(std::span<const TokenId> prompt) override;
  void keep(const Session& session) override;
  std::size_t size() const override { return entries_.size(); }

 private:
  struct Entry {
    std::int64_t checkpoint = 0;
    std::vector<TokenId> tokens;
    std::size_t bytes = 0;
  };
  std::size_t limit_bytes_;
  std::size_t bytes_ = 0;
  store::Store store_;
  std::int64_t session_id_ = 0;
  std::list<Entry> entries_;  // most recently used first
};

}  // namespace lightdesk::server
