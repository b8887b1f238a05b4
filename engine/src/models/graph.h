// What a model graph runs on: the backend's ops, views of its weights, the sequence's state and
// the pass's activations. A graph (one file per family in models/) owns the order of the ops.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "communicator.h"
#include "model_config.h"
#include "model_weights.h"
#include "ops.h"

namespace lightdesk {

// A layer's weights as a backend holds them (norms and router float32, matrices its weight type).
struct LayerGraphTensors : LayerTensors<Tensor> {
  Tensor slopes;  // lightning layers: float32 [heads]
  MoeTensors moe;
};

struct ModelTensors {
  Tensor embed;    // [vocab, hidden]
  Tensor lm_head;  // [vocab, hidden]
  Tensor final_norm;
  std::vector<LayerGraphTensors> layers;
};

// A sequence's state, per layer: the lightning state (lightning layers) or the K/V cache
// (softmax layers), sized for the positions the pass reaches.
struct SequenceTensors {
  std::vector<Tensor> lightning;
  std::vector<KvTensor> kv;
};

// The activations of one pass, each for `rows` tokens (a backend's scratch).
struct ActivationTensors {
  Tensor tokens;  // I32 [rows], the token ids on the backend
  Tensor x, a, att, b, moe;  // [rows, hidden]
  Tensor qkv;                // [rows, 3 * heads * head_dim]
  Tensor o, gate;            // [rows, heads * head_dim]
  Tensor router_logits;      // float32 [rows, experts], where the pass reports them
};

// A tensor-parallel rank's part of a pass: the model's weights and the sequence's state it is
// given are its slices of the layout `plans` (its own being plans[comm->rank()]), and the
// collectives go through `comm`.
struct RankPass {
  Communicator* comm = nullptr;
  std::span<const RankLayout> plans;
  Tensor norm_sums;      // float32 [rows]: the lightning output norm's sums of squares
  Tensor logits_part;    // float32 [rows, widest rank's vocabulary rows]: the rank's logits
  Tensor logits_gather;  // float32 [ranks, rows, widest rank's vocabulary rows]
  // Whether this rank writes the gathered logits to GraphPass::logits and all_logits (where
  // the ranks share them, as threads of the CPU backend do, one writes).
  bool writes_logits = true;

  const RankLayout& plan() const { return plans[static_cast<std::size_t>(comm->rank())]; }
  std::int64_t widest_vocab() const { return plans.front().vocab_rows; }
};

struct GraphPass {
  std::int64_t rows = 0;
  StepPosition first_position;
  // The last token's logits go to `logits` (float32 [vocab]); every token's to all_logits too
  // (float32 [rows, vocab]) where that is set.
  Tensor logits, all_logits;
  // Empty, or per token nullptr (its embedding) or hidden_size host floats in its place.
  std::span<const float* const> embedding_overrides;
  // Called with the hidden states (see FeedOptions::hidden_states) when set.
  const std::function<void(int, std::span<const float>, std::int64_t)>* hidden_states = nullptr;
  // Called with each layer's router logits (see FeedOptions::router_logits) when set; they go
  // through ActivationTensors::router_logits.
  const std::function<void(int, std::span<const float>, std::int64_t)>* router_logits = nullptr;
  // >= 0: the pass stops after this layer's router (its logits reported), before its experts:
  // a router statistic of the first layers without the rest of the model. The sequence's state
  // is then partial: a backend runs such a pass on a sequence it throws away.
  int last_router_layer = -1;
  // Set on a tensor-parallel rank; the logits then come from the ranks' parts, gathered. After
  // the pass the last token's part is the first row of rank->logits_part.
  const RankPass* rank = nullptr;
};

// A family's forward pass: runs the model over pass.rows tokens, appending them to the
// sequence's state and writing the logits. Queues ops only (no allocation, no wait) unless
// hidden states or embedding overrides are asked for, so that a backend can capture a decode
// step as a graph.
using ModelForward = void (*)(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                              const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass);

// The forward pass of the config's family.
ModelForward model_forward(const ModelConfig& config);

}  // namespace lightdesk
