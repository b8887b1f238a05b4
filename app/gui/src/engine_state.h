// A session's engine state copied out of the engine: what travels between the engine thread,
// which exports and imports it, and the store thread, which writes and reads it, so that
// neither thread touches the other's objects and the engine is busy only for the copy, never
// for the disk.
//
// A state after a turn that continues a saved one may hold only the K/V of the turn's own
// positions (from kv_first on): the store finds the earlier positions in the checkpoint it
// saved before; a repository without a store joins it to that earlier state (continuing).
#pragma once

#include <QMetaType>

#include <memory>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/store.h"

namespace lightdesk::gui {

class EngineState {
 public:
  // Copies the session's state: its model's info, token ids, every lightning layer's state and
  // the K/V of positions kv_first and later.
  static std::shared_ptr<const EngineState> copy_of(const Session& session, std::int64_t kv_first = 0);
  // Reads a stored checkpoint made by `model`. Throws store::StateRefused naming the cause for
  // a damaged checkpoint or one of another model.
  static std::shared_ptr<const EngineState> read(store::Store& store, std::int64_t checkpoint_id,
                                                 const ModelInfo& model);

  const ModelInfo& model() const { return model_; }
  const std::vector<TokenId>& tokens() const { return tokens_; }
  // The first position whose K/V this state lacks none of (0: a whole state).
  std::int64_t kv_first() const { return earlier_ ? 0 : kv_first_; }
  // This state with the K/V before its kv_first read from `earlier`, the state it continues
  // (whose tokens are this one's first kv_first tokens); throws lightdesk::Error otherwise.
  std::shared_ptr<const EngineState> continuing(std::shared_ptr<const EngineState> earlier) const;
  // Replaces the session's state with this one; on an error (another model's shapes, a state
  // that lacks earlier K/V) the session keeps its state and lightdesk::Error names the cause.
  void import_into(Session& session) const;
  // What Store::save_checkpoint writes this state from.
  store::StateSource source() const;

 private:
  struct Part {
    StatePart header;  // data empty; the floats are in `values`
    std::vector<float> values;
  };
  void add(const StatePart& part);
  // Every part: this state's own, then the K/V parts of the states it continues.
  void for_each_part(const std::function<void(const StatePart&)>& sink, bool with_lightning = true) const;

  ModelInfo model_;
  std::vector<TokenId> tokens_;
  std::int64_t kv_first_ = 0;  // parts_ hold the K/V of positions kv_first_ and later
  std::vector<Part> parts_;
  std::shared_ptr<const EngineState> earlier_;  // the K/V before kv_first_, if joined
};

using EngineStatePtr = std::shared_ptr<const EngineState>;

}  // namespace lightdesk::gui

Q_DECLARE_METATYPE(lightdesk::gui::EngineStatePtr)
