// Engine states on their way between the thread that runs the engine and the one that stores
// sessions (the desktop app's engine and store threads; a server's workers).
//
// Saving: the engine thread streams a finished turn's state out of the engine (EngineState::
// stream_of) and the store thread writes it as it comes, so that neither thread touches the
// other's objects and no second copy of the whole state is ever in memory: the parts pass
// through a queue of at most two (StateProducer::serve), the engine thread waiting on the disk
// meanwhile. A repository without a store keeps a copy in memory (materialized), as a memory
// cache does (copy_of). A state after a turn that continues a saved one may hold only the K/V
// of the turn's own positions (from kv_first on): the store finds the earlier positions in the
// checkpoint it saved before; a repository without a store joins it to that earlier state
// (continuing).
//
// Restoring: the repository names a saved state (SavedState) and the engine thread imports it.
// A store checkpoint (StoredCheckpoint) is read there, through a connection of that thread's
// own, one part at a time: a restore never holds a second copy of the whole state.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/store.h"

namespace lightdesk::conversation {

class SavedState {
 public:
  virtual ~SavedState() = default;
  virtual std::int64_t token_count() const = 0;
  // Replaces the session's state with this one, for a conversation under `system_prompt`
  // (empty: none). On an error (a damaged checkpoint, another model's state, a state computed
  // with another system prompt, an unreadable database) the session keeps its state and the
  // exception names the cause.
  virtual void import_into(Session& session, const std::string& system_prompt) const = 0;
};

using SavedStatePtr = std::shared_ptr<const SavedState>;

class StateHandoff;

// The engine thread's end of a streamed EngineState.
class StateProducer {
 public:
  explicit StateProducer(std::shared_ptr<StateHandoff> handoff);
  // Without serve(), the state's reader learns that no parts will come.
  ~StateProducer();
  StateProducer(StateProducer&&) noexcept;
  StateProducer& operator=(StateProducer&&) = delete;
  StateProducer(const StateProducer&) = delete;
  StateProducer& operator=(const StateProducer&) = delete;

  // Waits until the state's reader asks for its parts, then exports them from `session` (the
  // session the state was made from, not changed since) through the queue, waiting for the
  // reader to take each; returns when the reader has them all or is gone (its last reference
  // dropped: nothing to stream), or when `stop` says so before the reader asked (a reader whose
  // thread waits for this one would never ask). An export failure is the reader's to report.
  // Call it after dropping one's own references to the state.
  void serve(const Session& session, const std::function<bool()>& stop = {});
  // The most bytes of parts the queue held at once (what streaming cost in memory).
  std::size_t peak_queued_bytes() const;

 private:
  std::shared_ptr<StateHandoff> handoff_;
};

class EngineState final : public SavedState {
 public:
  // Copies the session's state: its model's info, token ids, every lightning layer's state and
  // the K/V of positions kv_first and later. `system_prompt`: the one its conversation began
  // with (empty: none), recorded with it.
  static std::shared_ptr<const EngineState> copy_of(const Session& session, std::int64_t kv_first = 0,
                                                    std::string system_prompt = {});
  // The session's state without its parts: its source() asks the engine thread for them as the
  // store writes them, once. The engine thread hands the state over (a queued signal), drops
  // its reference and calls producer.serve(session).
  struct Streamed {
    std::shared_ptr<const EngineState> state;
    StateProducer producer;
  };
  static Streamed stream_of(const Session& session, std::int64_t kv_first = 0, std::string system_prompt = {});
  // A state with its parts in memory: `state` itself, or for a streamed one a copy read from
  // the engine thread (which must serve it). Throws lightdesk::Error when the engine failed.
  static std::shared_ptr<const EngineState> materialized(std::shared_ptr<const EngineState> state);
  bool streamed() const { return handoff_ != nullptr; }
  ~EngineState();

  const ModelInfo& model() const { return model_; }
  const std::vector<TokenId>& tokens() const { return tokens_; }
  const std::string& system_prompt() const { return system_prompt_; }
  // The first position whose K/V this state lacks none of (0: a whole state).
  std::int64_t kv_first() const { return kv_first_; }
  // This state with the K/V before its kv_first read from `earlier`, the state it continues
  // (whose tokens are this one's first kv_first tokens); throws lightdesk::Error otherwise.
  std::shared_ptr<const EngineState> continuing(std::shared_ptr<const EngineState> earlier) const;
  std::int64_t token_count() const override { return static_cast<std::int64_t>(tokens_.size()); }
  // The bytes of its own parts' values (not those of a state it continues; none when streamed).
  std::size_t bytes() const;
  // Throws lightdesk::Error for another model's shapes, another system prompt or a state that
  // lacks earlier K/V.
  void import_into(Session& session, const std::string& system_prompt) const override;
  // What Store::save_checkpoint writes this state from.
  store::StateSource source() const;

 private:
  struct Part {
    StatePart header;  // data empty; its bytes are in `bytes`
    std::vector<std::byte> bytes;
  };
  void add(const StatePart& part);
  // Every part: this state's own, then the K/V parts of the states it continues.
  void for_each_part(const std::function<void(const StatePart&)>& sink, bool with_lightning = true) const;

  ModelInfo model_;
  std::vector<TokenId> tokens_;
  std::string system_prompt_;
  std::int64_t kv_first_ = 0;  // the K/V of earlier positions is in neither parts_ nor earlier_
  StateDType kv_dtype_ = StateDType::F32;  // of its K/V parts: the exporting backend's cache type
  std::vector<Part> parts_;
  std::shared_ptr<const EngineState> earlier_;  // the K/V before kv_first_, if joined
  std::shared_ptr<StateHandoff> handoff_;        // a streamed state's parts come through it
};

using EngineStatePtr = std::shared_ptr<const EngineState>;

// A complete checkpoint of the session database at `database`.
class StoredCheckpoint final : public SavedState {
 public:
  StoredCheckpoint(std::filesystem::path database, std::int64_t checkpoint_id, std::int64_t position)
      : database_(std::move(database)), checkpoint_id_(checkpoint_id), position_(position) {}
  std::int64_t token_count() const override { return position_; }
  // Opens the database on the calling thread and streams the checkpoint into the session
  // (Store::load_checkpoint: checksums, model fingerprint, layout and system prompt verified;
  // store::StateRefused names what is wrong).
  void import_into(Session& session, const std::string& system_prompt) const override;

 private:
  std::filesystem::path database_;
  std::int64_t checkpoint_id_;
  std::int64_t position_;
};

}  // namespace lightdesk::conversation
