// The interface every compute backend (CPU, CUDA) implements. Sessions and the public API
// talk only to this; a backend owns its weights and the memory of each sequence's state.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "lightdesk/engine.h"
#include "model_config.h"
#include "model_weights.h"

namespace lightdesk {

// A sequence's model state on a backend: lightning states and softmax K/V.
class SequenceState {
 public:
  virtual ~SequenceState() = default;
};

enum class KvSide { Keys, Values };

struct ForwardRequest {
  std::span<const TokenId> tokens;  // already checked to be inside the vocabulary
  std::int64_t first_position = 0;  // tokens the sequence holds before this call
  bool all_logits = false;
  float* logits = nullptr;  // [all_logits ? tokens.size() : 1, vocab] float32, host memory
  const std::function<void(int, std::span<const float>, std::int64_t)>* hidden_states = nullptr;
  // Empty, or per token a row of hidden_size floats to use instead of its embedding (nullptr:
  // the embedding). See FeedOptions::embedding_overrides.
  std::span<const float* const> embedding_overrides;
};

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;
  virtual BackendKind kind() const = 0;
  virtual std::uint64_t weight_bytes() const = 0;
  virtual std::unique_ptr<SequenceState> new_sequence() const = 0;

  // Runs the tokens through the model, appending them to the sequence's state. Memory is
  // reserved before the state changes, so a failure leaves the state as it was.
  virtual void forward(SequenceState& sequence, const ForwardRequest& request) = 0;

  // State transfer in the export layout (float32 host buffers). Lightning: [heads, d, d].
  // K/V: [kv_heads, count, d] for positions first..first+count-1.
  virtual void read_lightning_state(const SequenceState& sequence, int layer, float* out) const = 0;
  virtual void write_lightning_state(SequenceState& sequence, int layer, const float* in) const = 0;
  virtual void read_kv(const SequenceState& sequence, int layer, KvSide side, std::int64_t first,
                       std::int64_t count, float* out) const = 0;
  // Sizes every softmax layer's cache to `positions` before write_kv fills it.
  virtual void resize_kv(SequenceState& sequence, std::int64_t positions) const = 0;
  virtual void write_kv(SequenceState& sequence, int layer, KvSide side, std::int64_t first, std::int64_t count,
                        const float* in) const = 0;
};

std::unique_ptr<ComputeBackend> make_cpu_backend(const ModelConfig& config, const WeightMap& weights,
                                                 const ModelOptions& options,
                                                 const std::function<void(std::uint64_t)>& bytes_loaded);

}  // namespace lightdesk
