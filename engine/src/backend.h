// The interface every compute backend (CPU, CUDA) implements. Sessions and the public API
// talk only to this; a backend owns its weights and the memory of each sequence's state.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <span>

#include "lightdesk/engine.h"
#include "model_config.h"
#include "model_weights.h"
#include "ops.h"

namespace lightdesk {

// A sequence's model state on a backend: lightning states, softmax K/V, and the logits of the
// last token fed.
class SequenceState {
 public:
  virtual ~SequenceState() = default;
};

enum class KvSide { Keys, Values };

struct ForwardRequest {
  std::span<const TokenId> tokens;  // already checked to be inside the vocabulary
  std::int64_t first_position = 0;  // tokens the sequence holds before this call
  // nullptr, or host memory for every token's logits, float32 [tokens.size(), vocab]. The last
  // token's row stays in the sequence either way (read_logits, sample).
  float* all_logits = nullptr;
  const std::function<void(int, std::span<const float>, std::int64_t)>* hidden_states = nullptr;
  // Per layer the router's logits (FeedOptions::router_logits), when set.
  const std::function<void(int, std::span<const float>, std::int64_t)>* router_logits = nullptr;
  // >= 0: stop after this layer's router (GraphPass::last_router_layer); only on a sequence
  // thrown away afterwards.
  int last_router_layer = -1;
  // Empty, or per token a row of hidden_size floats to use instead of its embedding (nullptr:
  // the embedding). See FeedOptions::embedding_overrides.
  std::span<const float* const> embedding_overrides;
};

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;
  virtual BackendKind kind() const = 0;
  virtual std::uint64_t weight_bytes() const = 0;
  // Tokens per forward pass when a feed leaves the size to the backend (FeedOptions::chunk_tokens 0).
  virtual std::int64_t default_chunk_tokens() const = 0;
  virtual std::unique_ptr<SequenceState> new_sequence() const = 0;
  // Exact mode's store and slots (ModelOptions::host_expert_store), else null. The slots are the
  // model's, shared by its sessions: which experts they hold never changes a result.
  virtual ExpertOffload* expert_offload() const { return nullptr; }

  // Runs the tokens through the model, appending them to the sequence's state. Memory is
  // reserved before the state changes, so a failure leaves the state as it was. A backend may
  // return before the device has finished a one-token step; the reads below wait for it.
  virtual void forward(SequenceState& sequence, const ForwardRequest& request) = 0;

  // The last fed token's logits, float32 [vocab], into host memory.
  virtual void read_logits(const SequenceState& sequence, float* out) const = 0;
  // The next token, drawn from the last fed token's logits by the rules of SamplingParams where
  // those logits are (only the id comes back from a device). A draw that is not greedy takes
  // one number from `rng`.
  virtual TokenId sample(const SequenceState& sequence, const SamplingParams& params, std::mt19937_64& rng) = 0;

  // State transfer in the export layout (host buffers). Lightning: float32 [heads, d, d].
  // K/V: [kv_heads, count, d] for positions first..first+count-1, in kv_dtype(), the cache's
  // own type (no conversion on the way).
  virtual void read_lightning_state(const SequenceState& sequence, int layer, float* out) const = 0;
  virtual void write_lightning_state(SequenceState& sequence, int layer, const float* in) const = 0;
  virtual StateDType kv_dtype() const = 0;
  virtual void read_kv(const SequenceState& sequence, int layer, KvSide side, std::int64_t first,
                       std::int64_t count, void* out) const = 0;
  // Sizes every softmax layer's cache to `positions` before write_kv fills it.
  virtual void resize_kv(SequenceState& sequence, std::int64_t positions) const = 0;
  virtual void write_kv(SequenceState& sequence, int layer, KvSide side, std::int64_t first, std::int64_t count,
                        const void* in) const = 0;
};

// `experts` says how the experts load (quantized, from a cache); where they came from goes to
// `expert_result` when given. `make_ops` makes each rank's ops from its thread count
// (make_cpu_ops when empty; tests put a probe around them).
std::unique_ptr<ComputeBackend> make_cpu_backend(
    const ModelConfig& config, const WeightMap& weights, const ModelOptions& options, const ExpertLoad& experts,
    const std::function<void(std::uint64_t)>& bytes_loaded, ExpertLoadResult* expert_result = nullptr,
    const std::function<std::unique_ptr<ModelOps>(int threads)>& make_ops = {});

}  // namespace lightdesk
