#include "engine_state.h"

namespace lightdesk::gui {

void EngineState::add(const StatePart& part) {
  Part copy{part, {part.data.begin(), part.data.end()}};
  copy.header.data = {};
  parts_.push_back(std::move(copy));
}

void EngineState::for_each_part(const std::function<void(const StatePart&)>& sink) const {
  for (const Part& part : parts_) {
    StatePart view = part.header;
    view.data = part.values;
    sink(view);
  }
}

std::shared_ptr<const EngineState> EngineState::copy_of(const Session& session) {
  auto state = std::make_shared<EngineState>();
  state->model_ = session.model().info();
  state->tokens_ = session.tokens();
  // Whole softmax layers per part: the store cuts them into rows of its own size.
  session.export_state([&state](const StatePart& part) { state->add(part); },
                       std::max<std::int64_t>(1, session.position()));
  return state;
}

std::shared_ptr<const EngineState> EngineState::read(store::Store& store, std::int64_t checkpoint_id,
                                                     const ModelInfo& model) {
  auto state = std::make_shared<EngineState>();
  state->model_ = model;
  state->tokens_ = store.read_checkpoint(checkpoint_id, model, [&state](const StatePart& part) { state->add(part); });
  return state;
}

void EngineState::import_into(Session& session) const {
  Session::Import import = session.begin_import(static_cast<std::int64_t>(tokens_.size()));
  for_each_part([&import](const StatePart& part) { import.add(part); });
  import.commit(tokens_);
}

store::StateSource EngineState::source() const {
  return {model_, tokens_,
          [this](const std::function<void(const StatePart&)>& sink, std::int64_t) { for_each_part(sink); }};
}

}  // namespace lightdesk::gui
