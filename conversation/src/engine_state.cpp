#include "lightdesk/engine_state.h"

#include <algorithm>
#include <string>

namespace lightdesk::conversation {

void EngineState::add(const StatePart& part) {
  Part copy{part, {part.data.begin(), part.data.end()}};
  copy.header.data = {};
  parts_.push_back(std::move(copy));
}

void EngineState::for_each_part(const std::function<void(const StatePart&)>& sink, bool with_lightning) const {
  for (const Part& part : parts_) {
    if (!with_lightning && part.header.kind == StatePartKind::LightningState) continue;
    StatePart view = part.header;
    view.data = part.bytes;
    sink(view);
  }
  // The earlier state's parts carry its own position: this state's is the newer one.
  if (earlier_) {
    earlier_->for_each_part(
        [this, &sink](const StatePart& part) {
          StatePart view = part;
          view.position = static_cast<std::int64_t>(tokens_.size());
          sink(view);
        },
        false);
  }
}

std::size_t EngineState::bytes() const {
  std::size_t total = 0;
  for (const Part& part : parts_) total += part.bytes.size();
  return total;
}

std::shared_ptr<const EngineState> EngineState::copy_of(const Session& session, std::int64_t kv_first) {
  auto state = std::make_shared<EngineState>();
  state->model_ = session.model().info();
  state->tokens_ = session.tokens();
  state->kv_first_ = kv_first;
  state->kv_dtype_ = session.kv_dtype();
  // Whole softmax layers per part: the store cuts them into rows of its own size.
  session.export_state([&state](const StatePart& part) { state->add(part); },
                       std::max<std::int64_t>(1, session.position() - kv_first), kv_first);
  return state;
}

std::shared_ptr<const EngineState> EngineState::continuing(std::shared_ptr<const EngineState> earlier) const {
  const auto earlier_tokens = static_cast<std::int64_t>(earlier->tokens().size());
  if (earlier_tokens != kv_first_ || !std::equal(earlier->tokens().begin(), earlier->tokens().end(), tokens_.begin()))
    throw Error("a state that lacks the K/V before position " + std::to_string(kv_first_) +
                " cannot continue a state of " + std::to_string(earlier_tokens) + " other tokens");
  auto joined = std::make_shared<EngineState>(*this);
  joined->earlier_ = std::move(earlier);
  joined->kv_first_ = 0;
  return joined;
}

void EngineState::import_into(Session& session) const {
  if (kv_first() > 0)
    throw Error("the saved state holds the K/V from position " + std::to_string(kv_first_) + " on only");
  Session::Import import = session.begin_import(static_cast<std::int64_t>(tokens_.size()));
  for_each_part([&import](const StatePart& part) { import.add(part); });
  import.commit(tokens_);
}

store::StateSource EngineState::source() const {
  // Whatever positions the store asks for, every part goes: it keeps what its spans lack.
  return {model_, tokens_,
          [this](const std::function<void(const StatePart&)>& sink, std::int64_t, std::int64_t) { for_each_part(sink); },
          kv_first(), kv_dtype_};
}

void StoredCheckpoint::import_into(Session& session) const {
  store::Store store(database_);
  store.load_checkpoint(checkpoint_id_, session);
}

}  // namespace lightdesk::conversation
