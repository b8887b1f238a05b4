#include "lightdesk/engine_state.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>

namespace lightdesk::conversation {

// The meeting point of a streamed state's reader (a store's thread) and its producer (the engine
// thread): the reader asks for the parts from a position on, the producer exports them into a
// queue of at most kQueueParts copies and the reader takes them out.
class StateHandoff {
 public:
  static constexpr std::size_t kQueueParts = 2;

  // Reader: streams the parts to `sink`. Throws Error when the producer failed or gave up.
  void pull(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens, std::int64_t kv_from) {
    std::unique_lock lock(mutex_);
    if (request_) throw Error("internal: a streamed state was read twice");
    request_.emplace(kv_chunk_tokens, kv_from);
    changed_.notify_all();
    for (;;) {
      changed_.wait(lock, [this] { return !queue_.empty() || finished_; });
      if (queue_.empty()) break;
      // The front stays queued while the sink writes it, so the producer fills only the other
      // slot meanwhile: at most kQueueParts parts exist.
      // (A deque's push_back leaves references to its elements valid.)
      const Part& front = queue_.front();
      lock.unlock();
      try {
        sink(front.view());
      } catch (...) {
        lock.lock();
        gone_ = true;
        changed_.notify_all();
        throw;
      }
      lock.lock();
      queue_.pop_front();
      changed_.notify_all();
    }
    if (!error_.empty()) throw Error("the engine could not export its state: " + error_);
  }
  // Reader: gone (its last reference dropped), asked or not.
  void abandon() {
    const std::lock_guard lock(mutex_);
    gone_ = true;
    changed_.notify_all();
  }

  // Producer: see StateProducer::serve.
  void serve(const Session& session, const std::function<bool()>& stop) {
    std::optional<std::pair<std::int64_t, std::int64_t>> request;
    {
      std::unique_lock lock(mutex_);
      while (!changed_.wait_for(lock, std::chrono::milliseconds(50), [this] { return request_.has_value() || gone_; }))
        if (stop && stop()) return;
      if (gone_) return;
      request = request_;
    }
    try {
      session.export_state([this](const StatePart& part) { push(part); }, request->first, request->second);
      finish({});
    } catch (const ReaderGone&) {
    } catch (const std::exception& e) {
      finish(e.what());
    }
  }
  // Producer: will not serve.
  void withdraw() { finish("it stopped before streaming the state"); }

  std::size_t peak_queued_bytes() const {
    const std::lock_guard lock(mutex_);
    return peak_bytes_;
  }

 private:
  struct ReaderGone {};
  struct Part {
    StatePart header;
    std::vector<std::byte> bytes;
    StatePart view() const {
      StatePart part = header;
      part.data = bytes;
      return part;
    }
  };

  void push(const StatePart& part) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] { return queue_.size() < kQueueParts || gone_; });
    if (gone_) throw ReaderGone{};
    Part& copy = queue_.emplace_back(Part{part, {part.data.begin(), part.data.end()}});
    copy.header.data = {};
    std::size_t queued = 0;
    for (const Part& p : queue_) queued += p.bytes.size();
    peak_bytes_ = std::max(peak_bytes_, queued);
    changed_.notify_all();
  }
  void finish(const std::string& error) {
    const std::lock_guard lock(mutex_);
    if (finished_) return;
    finished_ = true;
    error_ = error;
    changed_.notify_all();
  }

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<std::pair<std::int64_t, std::int64_t>> request_;  // kv_chunk_tokens, kv_from
  std::deque<Part> queue_;
  bool finished_ = false;  // the producer is done: all parts queued, or error_
  bool gone_ = false;      // the reader is gone
  std::string error_;
  std::size_t peak_bytes_ = 0;
};

StateProducer::StateProducer(std::shared_ptr<StateHandoff> handoff) : handoff_(std::move(handoff)) {}
StateProducer::~StateProducer() {
  if (handoff_) handoff_->withdraw();
}
StateProducer::StateProducer(StateProducer&&) noexcept = default;
void StateProducer::serve(const Session& session, const std::function<bool()>& stop) {
  handoff_->serve(session, stop);
}
std::size_t StateProducer::peak_queued_bytes() const { return handoff_->peak_queued_bytes(); }

EngineState::~EngineState() {
  if (handoff_) handoff_->abandon();
}

void EngineState::add(const StatePart& part) {
  Part copy{part, {part.data.begin(), part.data.end()}};
  copy.header.data = {};
  parts_.push_back(std::move(copy));
}

void EngineState::for_each_part(const std::function<void(const StatePart&)>& sink, bool with_lightning) const {
  if (handoff_) throw Error("internal: the parts of a streamed state are read through its source() or materialized()");
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

std::shared_ptr<const EngineState> EngineState::copy_of(const Session& session, std::int64_t kv_first,
                                                        std::string system_prompt) {
  auto state = std::make_shared<EngineState>();
  state->model_ = session.model().info();
  state->tokens_ = session.tokens();
  state->system_prompt_ = std::move(system_prompt);
  state->kv_first_ = kv_first;
  state->kv_dtype_ = session.kv_dtype();
  // Whole softmax layers per part: the store cuts them into rows of its own size.
  session.export_state([&state](const StatePart& part) { state->add(part); },
                       std::max<std::int64_t>(1, session.position() - kv_first), kv_first);
  return state;
}

EngineState::Streamed EngineState::stream_of(const Session& session, std::int64_t kv_first,
                                             std::string system_prompt) {
  auto state = std::make_shared<EngineState>();
  state->model_ = session.model().info();
  state->tokens_ = session.tokens();
  state->system_prompt_ = std::move(system_prompt);
  state->kv_first_ = kv_first;
  state->kv_dtype_ = session.kv_dtype();
  state->handoff_ = std::make_shared<StateHandoff>();
  StateProducer producer(state->handoff_);
  return {std::move(state), std::move(producer)};
}

std::shared_ptr<const EngineState> EngineState::materialized(std::shared_ptr<const EngineState> state) {
  if (!state->handoff_) return state;
  auto copy = std::make_shared<EngineState>();
  copy->model_ = state->model_;
  copy->tokens_ = state->tokens_;
  copy->system_prompt_ = state->system_prompt_;
  copy->kv_first_ = state->kv_first_;
  copy->kv_dtype_ = state->kv_dtype_;
  // Whole softmax layers per part, as copy_of.
  state->handoff_->pull([&copy](const StatePart& part) { copy->add(part); },
                        std::max<std::int64_t>(1, state->token_count() - state->kv_first_), state->kv_first_);
  return copy;
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

void EngineState::import_into(Session& session, const std::string& system_prompt) const {
  if (const std::string mismatch = store::system_prompt_mismatch("the saved state", system_prompt_, system_prompt);
      !mismatch.empty())
    throw Error(mismatch);
  if (kv_first() > 0)
    throw Error("the saved state holds the K/V from position " + std::to_string(kv_first_) + " on only");
  Session::Import import = session.begin_import(static_cast<std::int64_t>(tokens_.size()));
  for_each_part([&import](const StatePart& part) { import.add(part); });
  import.commit(tokens_);
}

store::StateSource EngineState::source() const {
  // A streamed state exports only what the store asks for. Otherwise every part goes, whatever
  // positions the store asks for: it keeps what its spans lack.
  if (handoff_)
    return {model_, tokens_,
            [this](const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                   std::int64_t kv_from) { handoff_->pull(sink, kv_chunk_tokens, kv_from); },
            kv_first(), kv_dtype_, system_prompt_};
  return {model_, tokens_,
          [this](const std::function<void(const StatePart&)>& sink, std::int64_t, std::int64_t) { for_each_part(sink); },
          kv_first(), kv_dtype_, system_prompt_};
}

void StoredCheckpoint::import_into(Session& session, const std::string& system_prompt) const {
  store::Store store(database_);
  store.load_checkpoint(checkpoint_id_, session, system_prompt);
}

}  // namespace lightdesk::conversation
