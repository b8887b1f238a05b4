// MiniMax-01 as minimax-model.md describes it: per layer an input RMSNorm, lightning (linear)
// or softmax attention, the DeepNorm post-norm residual, a second RMSNorm, the MoE, the second
// residual; then the final norm and the LM head.
//
// Where a tensor-parallel backend splits the work, the ops below stay the same calls on shards:
// the qkv / q, k, v / output-gate projections by output columns (heads), out_proj and o_proj by
// input rows followed by an all-reduce, the experts by placement inside moe().
#include "models/minimax01.h"

namespace lightdesk {
namespace {

class Minimax01Pass {
 public:
  Minimax01Pass(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass)
      : ops_(ops), c_(config), w_(weights), s_(sequence), act_(act), pass_(pass) {}

  void run() {
    const std::int64_t rows = pass_.rows, H = c_.hidden_size;
    embed();
    report(0);
    for (int l = 0; l < c_.num_layers; ++l) {
      const LayerGraphTensors& layer = w_.layers[l];
      const bool lightning = layer.kind == LayerKind::Lightning;
      ops_.rms_norm(act_.x, rows, H, layer.input_norm, c_.rms_norm_eps, act_.a);
      if (lightning)
        lightning_attention(l);
      else
        softmax_attention(l);
      // Post-norm residuals: the residual is the normed activation.
      const ResidualFactors attn = lightning ? c_.linear_attention : c_.full_attention;
      ops_.scaled_sum(act_.a, attn.alpha, act_.att, attn.beta, rows * H, act_.att);
      ops_.rms_norm(act_.att, rows, H, layer.post_attn_norm, c_.rms_norm_eps, act_.b);
      ops_.moe(layer.moe, act_.b, rows, act_.moe);
      ops_.scaled_sum(act_.b, c_.mlp.alpha, act_.moe, c_.mlp.beta, rows * H, act_.x);
      report(l + 1);
    }
    ops_.rms_norm(act_.x, rows, H, w_.final_norm, c_.rms_norm_eps, act_.x);
    report(c_.num_layers + 1);
    lm_head();
  }

 private:
  void embed() {
    const std::int64_t H = c_.hidden_size;
    ops_.embed(w_.embed, act_.tokens, pass_.rows, H, act_.x);
    for (std::size_t r = 0; r < pass_.embedding_overrides.size(); ++r)
      if (const float* row = pass_.embedding_overrides[r])
        ops_.upload(row, H, act_.x.at(static_cast<std::int64_t>(r) * H));
  }

  void lightning_attention(int l) {
    const LayerGraphTensors& layer = w_.layers[l];
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, A = std::int64_t{c_.num_heads} * c_.head_dim;
    ops_.linear(act_.a, rows, H, layer.qkv, 3 * A, act_.qkv);
    ops_.silu(act_.qkv, rows * 3 * A);
    ops_.lightning_attention(act_.qkv, rows, c_.num_heads, c_.head_dim, layer.slopes, s_.lightning[l], act_.o);
    ops_.rms_norm(act_.o, rows, A, layer.output_norm, ModelConfig::kLightningNormEps, act_.o);
    ops_.linear(act_.a, rows, H, layer.output_gate, A, act_.gate);
    ops_.sigmoid_gate(act_.o, act_.gate, rows * A);
    ops_.linear(act_.o, rows, A, layer.out_proj, H, act_.att);
  }

  void softmax_attention(int l) {
    const LayerGraphTensors& layer = w_.layers[l];
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, A = std::int64_t{c_.num_heads} * c_.head_dim;
    const std::int64_t KV = std::int64_t{c_.num_kv_heads} * c_.head_dim;
    // q, then the new keys and values, in the qkv buffer (KV <= A), before they go to the cache.
    const Tensor q = act_.qkv, keys = q.at(rows * A), values = keys.at(rows * KV);
    ops_.linear(act_.a, rows, H, layer.q_proj, A, q);
    ops_.linear(act_.a, rows, H, layer.k_proj, KV, keys);
    ops_.linear(act_.a, rows, H, layer.v_proj, KV, values);
    ops_.rope(q, rows, c_.num_heads, c_.head_dim, c_.rotary_dim, c_.rope_theta, pass_.first_position);
    ops_.rope(keys, rows, c_.num_kv_heads, c_.head_dim, c_.rotary_dim, c_.rope_theta, pass_.first_position);
    ops_.write_kv(keys, values, rows, pass_.first_position, KV, s_.kv[l]);
    ops_.softmax_attention(q, rows, pass_.first_position, s_.kv[l], c_.num_heads, c_.num_kv_heads, c_.head_dim,
                           act_.o);
    ops_.linear(act_.o, rows, A, layer.o_proj, H, act_.att);
  }

  void lm_head() {
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, V = c_.vocab_size;
    if (!pass_.all_logits.data) {
      ops_.linear(act_.x.at((rows - 1) * H), 1, H, w_.lm_head, V, pass_.logits);
      return;
    }
    ops_.linear(act_.x, rows, H, w_.lm_head, V, pass_.all_logits);
    ops_.copy(pass_.all_logits.at((rows - 1) * V), V, pass_.logits);
  }

  void report(int index) {
    if (!pass_.hidden_states || !*pass_.hidden_states) return;
    hidden_.resize(static_cast<std::size_t>(pass_.rows * c_.hidden_size));
    ops_.download(act_.x, pass_.rows * c_.hidden_size, hidden_.data());
    (*pass_.hidden_states)(index, hidden_, pass_.rows);
  }

  ModelOps& ops_;
  const ModelConfig& c_;
  const ModelTensors& w_;
  const SequenceTensors& s_;
  const ActivationTensors& act_;
  const GraphPass& pass_;
  std::vector<float> hidden_;
};

}  // namespace

void minimax01_forward(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                       const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass) {
  if (pass.rows > 0) Minimax01Pass(ops, config, weights, sequence, act, pass).run();
}

}  // namespace lightdesk
