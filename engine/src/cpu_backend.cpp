// The CPU backend: the whole model in float32, exactly as minimax-model.md describes it.
#include <algorithm>
#include <cstring>

#include "backend.h"
#include "cpu_ops.h"
#include "sampler.h"
#include "thread_pool.h"

namespace lightdesk {
namespace {

// Rows per block of the lightning prefill; any value gives the same result (up to rounding).
constexpr int kLightningBlock = 256;

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
      : config_(c), weights_(load_cpu_weights(c, map, bytes_loaded)), pool_(options.threads) {
    weight_bytes_ = map.parameter_count() * sizeof(float);
    for (const auto& layer : weights_.layers) {
      std::vector<cpu::ExpertMatrices> m;
      for (const auto& e : layer.experts) m.push_back({e.w1.data(), e.w3.data(), e.w2.data()});
      expert_matrices_.push_back(std::move(m));
    }
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

  void lightning_layer(CpuSequence& s, int l, const float* a, std::int64_t rows, float* att);
  void softmax_layer(CpuSequence& s, int l, const float* a, std::int64_t rows, std::int64_t first_position,
                     float* att);
  void moe_layer(int l, const float* b, std::int64_t rows, float* out);

  const ModelConfig config_;
  ModelWeights weights_;
  std::vector<std::vector<cpu::ExpertMatrices>> expert_matrices_;
  ThreadPool pool_;
  std::uint64_t weight_bytes_ = 0;
};

void CpuBackend::forward(SequenceState& state, const ForwardRequest& req) {
  auto& s = static_cast<CpuSequence&>(state);
  const std::int64_t T = static_cast<std::int64_t>(req.tokens.size());
  const std::int64_t H = config_.hidden_size;
  const std::int64_t V = config_.vocab_size;
  if (T == 0) return;

  // Reserve everything first: past this point nothing allocates a large buffer.
  std::vector<float> x(static_cast<std::size_t>(T * H)), a(x.size()), att(x.size()), b(x.size()), moe(x.size());
  const std::int64_t new_positions = req.first_position + T;
  for (int l = 0; l < config_.num_layers; ++l)
    if (config_.layer_kinds[l] == LayerKind::Softmax) {
      s.keys[l].reserve(static_cast<std::size_t>(new_positions * kv_width()));
      s.values[l].reserve(static_cast<std::size_t>(new_positions * kv_width()));
    }
  const std::int64_t logit_rows = req.all_logits ? T : 1;
  std::vector<float> final_rows(static_cast<std::size_t>(logit_rows * H));

  auto report = [&](int index, const std::vector<float>& h) {
    if (req.hidden_states && *req.hidden_states) (*req.hidden_states)(index, h, T);
  };

  for (std::int64_t t = 0; t < T; ++t) {
    const float* row = req.embedding_overrides.empty() ? nullptr : req.embedding_overrides[static_cast<std::size_t>(t)];
    std::copy_n(row ? row : weights_.embed.data() + std::int64_t{req.tokens[t]} * H, H, x.data() + t * H);
  }
  report(0, x);

  for (int l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    const bool lightning = w.kind == LayerKind::Lightning;
    cpu::rms_norm(x.data(), T, H, w.input_norm.data(), config_.rms_norm_eps, a.data(), pool_);
    if (lightning)
      lightning_layer(s, l, a.data(), T, att.data());
    else
      softmax_layer(s, l, a.data(), T, req.first_position, att.data());
    // Post-norm residuals: the residual is the normed activation.
    const ResidualFactors attn = lightning ? config_.linear_attention : config_.full_attention;
    for (std::int64_t i = 0; i < T * H; ++i) att[i] = a[i] * attn.alpha + att[i] * attn.beta;
    cpu::rms_norm(att.data(), T, H, w.post_attn_norm.data(), config_.rms_norm_eps, b.data(), pool_);
    moe_layer(l, b.data(), T, moe.data());
    for (std::int64_t i = 0; i < T * H; ++i) x[i] = b[i] * config_.mlp.alpha + moe[i] * config_.mlp.beta;
    report(l + 1, x);
  }

  cpu::rms_norm(x.data(), T, H, weights_.final_norm.data(), config_.rms_norm_eps, x.data(), pool_);
  report(config_.num_layers + 1, x);
  std::copy_n(x.data() + (T - logit_rows) * H, logit_rows * H, final_rows.data());
  cpu::linear(final_rows.data(), logit_rows, H, weights_.lm_head.data(), V,
              req.all_logits ? req.all_logits : s.last_logits.data());
  if (req.all_logits) std::copy_n(req.all_logits + (logit_rows - 1) * V, V, s.last_logits.begin());
}

void CpuBackend::lightning_layer(CpuSequence& s, int l, const float* a, std::int64_t rows, float* att) {
  const LayerWeights& w = weights_.layers[l];
  const std::int64_t H = config_.hidden_size;
  const std::int64_t A = std::int64_t{config_.num_heads} * config_.head_dim;
  std::vector<float> qkv(static_cast<std::size_t>(rows * 3 * A)), o(static_cast<std::size_t>(rows * A)),
      gate(o.size());
  cpu::linear(a, rows, H, w.qkv.data(), 3 * A, qkv.data());
  pool_.parallel_for(rows, [&](std::int64_t r) {
    for (std::int64_t i = r * 3 * A; i < (r + 1) * 3 * A; ++i) qkv[i] = cpu::silu(qkv[i]);
  });
  float* state = s.lightning[l].data();
  if (rows == 1)
    cpu::lightning_decode(qkv.data(), config_.num_heads, config_.head_dim, w.slopes, state, o.data(), pool_);
  else
    cpu::lightning_prefill(qkv.data(), rows, config_.num_heads, config_.head_dim, w.slopes, kLightningBlock, state,
                           o.data(), pool_);
  cpu::rms_norm(o.data(), rows, A, w.output_norm.data(), ModelConfig::kLightningNormEps, o.data(), pool_);
  cpu::linear(a, rows, H, w.output_gate.data(), A, gate.data());
  for (std::int64_t i = 0; i < rows * A; ++i) o[i] *= cpu::sigmoid(gate[i]);
  cpu::linear(o.data(), rows, A, w.out_proj.data(), H, att);
}

void CpuBackend::softmax_layer(CpuSequence& s, int l, const float* a, std::int64_t rows, std::int64_t first_position,
                               float* att) {
  const LayerWeights& w = weights_.layers[l];
  const std::int64_t H = config_.hidden_size;
  const std::int64_t A = std::int64_t{config_.num_heads} * config_.head_dim;
  const std::int64_t KV = kv_width();
  std::vector<float> q(static_cast<std::size_t>(rows * A)), k(static_cast<std::size_t>(rows * KV)), v(k.size()),
      o(q.size());
  cpu::linear(a, rows, H, w.q_proj.data(), A, q.data());
  cpu::linear(a, rows, H, w.k_proj.data(), KV, k.data());
  cpu::linear(a, rows, H, w.v_proj.data(), KV, v.data());
  cpu::apply_rope(q.data(), rows, config_.num_heads, config_.head_dim, config_.rotary_dim, config_.rope_theta,
                  first_position);
  cpu::apply_rope(k.data(), rows, config_.num_kv_heads, config_.head_dim, config_.rotary_dim, config_.rope_theta,
                  first_position);
  s.keys[l].insert(s.keys[l].end(), k.begin(), k.end());
  s.values[l].insert(s.values[l].end(), v.begin(), v.end());
  cpu::softmax_attention(q.data(), rows, first_position, s.keys[l].data(), s.values[l].data(), config_.num_heads,
                         config_.num_kv_heads, config_.head_dim, o.data(), pool_);
  cpu::linear(o.data(), rows, A, w.o_proj.data(), H, att);
}

void CpuBackend::moe_layer(int l, const float* b, std::int64_t rows, float* out) {
  const LayerWeights& w = weights_.layers[l];
  const int E = config_.num_experts, k = config_.experts_per_token;
  std::vector<float> router(static_cast<std::size_t>(rows * E)), weights(static_cast<std::size_t>(rows * k));
  std::vector<int> ids(weights.size());
  cpu::linear(b, rows, config_.hidden_size, w.router.data(), E, router.data());
  cpu::route_top_k(router.data(), rows, E, k, ids.data(), weights.data());
  cpu::moe_experts(b, rows, config_.hidden_size, config_.expert_width, expert_matrices_[l], k, ids.data(),
                   weights.data(), out, pool_);
}

}  // namespace

std::unique_ptr<ComputeBackend> make_cpu_backend(const ModelConfig& config, const WeightMap& weights,
                                                 const ModelOptions& options,
                                                 const std::function<void(std::uint64_t)>& bytes_loaded) {
  return std::make_unique<CpuBackend>(config, weights, options, bytes_loaded);
}

}  // namespace lightdesk
