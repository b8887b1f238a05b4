// A session's engine state copied out of the engine: what travels between the engine thread,
// which exports and imports it, and the store thread, which writes and reads it, so that
// neither thread touches the other's objects and the engine is busy only for the copy, never
// for the disk.
#pragma once

#include <QMetaType>

#include <memory>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/store.h"

namespace lightdesk::gui {

class EngineState {
 public:
  // Copies the session's state (its model's info, token ids and every state part).
  static std::shared_ptr<const EngineState> copy_of(const Session& session);
  // Reads a stored checkpoint made by `model`. Throws store::StateRefused naming the cause for
  // a damaged checkpoint or one of another model.
  static std::shared_ptr<const EngineState> read(store::Store& store, std::int64_t checkpoint_id,
                                                 const ModelInfo& model);

  const ModelInfo& model() const { return model_; }
  const std::vector<TokenId>& tokens() const { return tokens_; }
  // Replaces the session's state with this one; on an error (another model's shapes) the
  // session keeps its state and lightdesk::Error names the cause.
  void import_into(Session& session) const;
  // What Store::save_checkpoint writes this state from.
  store::StateSource source() const;

 private:
  struct Part {
    StatePart header;  // data empty; the floats are in `values`
    std::vector<float> values;
  };
  void add(const StatePart& part);
  void for_each_part(const std::function<void(const StatePart&)>& sink) const;

  ModelInfo model_;
  std::vector<TokenId> tokens_;
  std::vector<Part> parts_;
};

using EngineStatePtr = std::shared_ptr<const EngineState>;

}  // namespace lightdesk::gui

Q_DECLARE_METATYPE(lightdesk::gui::EngineStatePtr)
