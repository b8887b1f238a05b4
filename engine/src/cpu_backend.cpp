// The CPU backend: the whole model in float32 on the host, through the CPU ops and the model's
// graph (models/minimax01.cpp).
#include <algorithm>
#include <cstring>

#include "backend.h"
#include "models/graph.h"
#include "ops.h"
#include "sampler.h"

namespace lightdesk {
namespace {

struct CpuSequence final : SequenceState {
  std::vector<std::vector<float>> lightning;  // per layer [heads, d, d]; empty for softmax layers
  std::vector<std::vector<float>> keys;       // per layer [positions, kv_heads, d] (after RoPE)
  std::vector<std::vector<float>> values;     // per layer [positions, kv_heads, d]
  std::vector<float> last_logits;             // [vocab]
};

class CpuBackend final : public ComputeBackend {
 public:
  CpuBackend(const ModelConfig& c, const WeightMap& map, const ModelOptions& options,
             const std::function<void(std::uint64_t)>& bytes_loaded)
      : config_(c), weights_(load_cpu_weights(c, map, bytes_loaded)), ops_(make_cpu_ops(options.threads)) {
    weight_bytes_ = map.parameter_count() * sizeof(float);
    tensors_ = graph_tensors();
  }

  BackendKind kind() const override { return BackendKind::Cpu; }
  // Progress every fraction of a second; longer passes gain nothing on the CPU.
  std::int64_t default_chunk_tokens() const override { return 512; }
  std::uint64_t weight_bytes() const override { return weight_bytes_; }

  std::unique_ptr<SequenceState> new_sequence() const override {
    auto s = std::make_unique<CpuSequence>();
    s->lightning.resize(config_.num_layers);
    s->keys.resize(config_.num_layers);
    s->values.resize(config_.num_layers);
    s->last_logits.resize(static_cast<std::size_t>(config_.vocab_size));
    for (int l = 0; l < config_.num_layers; ++l)
      if (config_.layer_kinds[l] == LayerKind::Lightning) s->lightning[l].assign(lightning_size(), 0.0f);
    return s;
  }

  void forward(SequenceState& state, const ForwardRequest& req) override;

  void read_logits(const SequenceState& state, float* out) const override {
    const auto& logits = static_cast<const CpuSequence&>(state).last_logits;
    std::copy(logits.begin(), logits.end(), out);
  }
  TokenId sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) override {
    return sample_token(static_cast<const CpuSequence&>(state).last_logits, params, rng);
  }

  void read_lightning_state(const SequenceState& state, int layer, float* out) const override {
    const auto& s = static_cast<const CpuSequence&>(state).lightning.at(layer);
    std::copy(s.begin(), s.end(), out);
  }
  void write_lightning_state(SequenceState& state, int layer, const float* in) const override {
    auto& s = static_cast<CpuSequence&>(state).lightning.at(layer);
    std::copy_n(in, s.size(), s.begin());
  }
  StateDType kv_dtype() const override { return StateDType::F32; }
  void read_kv(const SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
               void* out_bytes) const override {
    auto* out = static_cast<float*>(out_bytes);
    const auto& s = static_cast<const CpuSequence&>(state);
    const float* cache = (side == KvSide::Keys ? s.keys : s.values).at(layer).data();
    for_each_kv_row(first, count, [&](std::int64_t cache_offset, std::int64_t export_offset) {
      std::copy_n(cache + cache_offset, config_.head_dim, out + export_offset);
    });
  }
  void resize_kv(SequenceState& state, std::int64_t positions) const override {
    auto& s = static_cast<CpuSequence&>(state);
    for (int l = 0; l < config_.num_layers; ++l)
      if (config_.layer_kinds[l] == LayerKind::Softmax) {
        s.keys[l].resize(static_cast<std::size_t>(positions * kv_width()));
        s.values[l].resize(static_cast<std::size_t>(positions * kv_width()));
      }
  }
  void write_kv(SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
                const void* in_bytes) const override {
    const auto* in = static_cast<const float*>(in_bytes);
    auto& s = static_cast<CpuSequence&>(state);
    float* cache = (side == KvSide::Keys ? s.keys : s.values).at(layer).data();
    for_each_kv_row(first, count, [&](std::int64_t cache_offset, std::int64_t export_offset) {
      std::copy_n(in + export_offset, config_.head_dim, cache + cache_offset);
    });
  }

 private:
  std::size_t lightning_size() const {
    return static_cast<std::size_t>(config_.num_heads) * config_.head_dim * config_.head_dim;
  }
  std::int64_t kv_width() const { return std::int64_t{config_.num_kv_heads} * config_.head_dim; }

  // Pairs the cache layout [position, kv_head, d] with the export layout [kv_head, count, d]:
  // calls fn(cache offset, export offset) for each row of d values.
  template <typename Fn>
  void for_each_kv_row(std::int64_t first, std::int64_t count, Fn fn) const {
    const int d = config_.head_dim;
    for (int g = 0; g < config_.num_kv_heads; ++g)
      for (std::int64_t t = 0; t < count; ++t)
        fn(((first + t) * config_.num_kv_heads + g) * d, (std::int64_t{g} * count + t) * d);
  }

  ModelTensors graph_tensors() const;

  const ModelConfig config_;
  ModelWeights weights_;
  ModelTensors tensors_;  // views of weights_
  const ModelForward forward_ = model_forward(config_);
  std::unique_ptr<ModelOps> ops_;
  std::uint64_t weight_bytes_ = 0;
};

// Host memory as a float32 Tensor; the ops never write through a weight's.
Tensor host_tensor(const WeightTensor& w) { return {const_cast<float*>(w.data()), ElementType::F32}; }
Tensor host_tensor(const std::vector<float>& w) { return {const_cast<float*>(w.data()), ElementType::F32}; }

ModelTensors CpuBackend::graph_tensors() const {
  ModelTensors t;
  t.embed = host_tensor(weights_.embed);
  t.lm_head = host_tensor(weights_.lm_head);
  t.final_norm = host_tensor(weights_.final_norm);
  for (const LayerWeights& w : weights_.layers) {
    LayerGraphTensors layer;
    layer.kind = w.kind;
    for (auto [to, from] : {std::pair{&layer.input_norm, &w.input_norm}, {&layer.post_attn_norm, &w.post_attn_norm},
                            {&layer.qkv, &w.qkv}, {&layer.output_gate, &w.output_gate},
                            {&layer.output_norm, &w.output_norm}, {&layer.out_proj, &w.out_proj},
                            {&layer.q_proj, &w.q_proj}, {&layer.k_proj, &w.k_proj}, {&layer.v_proj, &w.v_proj},
                            {&layer.o_proj, &w.o_proj}, {&layer.router, &w.router}})
      *to = host_tensor(*from);
    layer.slopes = host_tensor(w.slopes);
    layer.moe = {layer.router, {}, config_.hidden_size, config_.expert_width, config_.experts_per_token};
    for (const ExpertWeights& e : w.experts)
      layer.moe.experts.push_back({host_tensor(e.w1), host_tensor(e.w3), host_tensor(e.w2)});
    t.layers.push_back(std::move(layer));
  }
  return t;
}

void CpuBackend::forward(SequenceState& state, const ForwardRequest& req) {
  auto& s = static_cast<CpuSequence&>(state);
  const std::int64_t T = static_cast<std::int64_t>(req.tokens.size());
  const std::int64_t H = config_.hidden_size, A = std::int64_t{config_.num_heads} * config_.head_dim;
  if (T == 0) return;

  // Allocate everything first: past this point nothing allocates a large buffer.
  std::vector<float> x(static_cast<std::size_t>(T * H)), a(x.size()), att(x.size()), b(x.size()), moe(x.size());
  std::vector<float> qkv(static_cast<std::size_t>(T * 3 * A)), o(static_cast<std::size_t>(T * A)), gate(o.size());
  std::vector<std::int32_t> tokens(req.tokens.begin(), req.tokens.end());
  const std::int64_t new_positions = req.first_position + T;
  SequenceTensors sequence;
  sequence.lightning.resize(config_.num_layers);
  sequence.kv.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l)
    if (config_.layer_kinds[l] == LayerKind::Softmax) {
      s.keys[l].resize(static_cast<std::size_t>(new_positions * kv_width()));
      s.values[l].resize(static_cast<std::size_t>(new_positions * kv_width()));
      sequence.kv[l] = contiguous_kv(host_tensor(s.keys[l]), host_tensor(s.values[l]), kv_width());
    } else {
      sequence.lightning[l] = host_tensor(s.lightning[l]);
    }

  auto tensor = [](std::vector<float>& v) { return Tensor{v.data(), ElementType::F32}; };
  const ActivationTensors act{{tokens.data(), ElementType::I32}, tensor(x), tensor(a), tensor(att), tensor(b),
                              tensor(moe), tensor(qkv), tensor(o), tensor(gate)};
  GraphPass pass;
  pass.rows = T;
  pass.first_position = {req.first_position, nullptr};
  pass.logits = tensor(s.last_logits);
  pass.all_logits = {req.all_logits, ElementType::F32};
  pass.embedding_overrides = req.embedding_overrides;
  pass.hidden_states = req.hidden_states;
  forward_(*ops_, config_, tensors_, sequence, act, pass);
}

}  // namespace

std::unique_ptr<ComputeBackend> make_cpu_backend(const ModelConfig& config, const WeightMap& weights,
                                                 const ModelOptions& options,
                                                 const std::function<void(std::uint64_t)>& bytes_loaded) {
  return std::make_unique<CpuBackend>(config, weights, options, bytes_loaded);
}

}  // namespace lightdesk
