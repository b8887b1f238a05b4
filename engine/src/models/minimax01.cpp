// MiniMax-01 as minimax-model.md describes it: per layer an input RMSNorm, lightning (linear)
// or softmax attention, the DeepNorm post-norm residual, a second RMSNorm, the MoE, the second
// residual; then the final norm and the LM head.
//
// On a tensor-parallel rank (GraphPass::rank) the ops stay the same calls on the rank's
// slices, as vLLM's parallel layers: the qkv / q, k, v / output-gate projections by output
// rows (heads; qkv_proj is per head [q | k | v], so a rank's heads are one block of rows),
// out_proj and o_proj by input columns, each followed by an all-reduce; the lightning output
// norm over all heads from the all-reduced sums of squares; the experts by placement inside
// moe(), then an all-reduce; the embedding and the LM head by vocabulary rows. The hidden state
// is the same on every rank between the all-reduces.
#include "models/minimax01.h"

namespace lightdesk {
namespace {

class Minimax01Pass {
 public:
  Minimax01Pass(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass)
      : ops_(ops), c_(config), w_(weights), s_(sequence), act_(act), pass_(pass), rank_(pass.rank),
        heads_(rank_ ? rank_->plan().heads : config.num_heads),
        kv_heads_(rank_ ? rank_->plan().kv_heads : config.num_kv_heads) {}

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
      const bool last = l == pass_.last_router_layer;
      const Tensor moe_out = last ? Tensor{} : act_.moe;
      const Tensor router_logits = reports_router() ? act_.router_logits : Tensor{};
      if (layer.moe.is_quantized())
        ops_.quantized_moe(layer.moe, act_.b, rows, moe_out, router_logits);
      else
        ops_.moe(layer.moe, act_.b, rows, moe_out, router_logits);
      report_router(l);
      if (last) return;
      all_reduce(act_.moe, rows * H);
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
    if (rank_) {
      const RankLayout& plan = rank_->plan();
      ops_.embed_part(w_.embed, plan.first_vocab_row, plan.vocab_rows, act_.tokens, pass_.rows, H, act_.x);
      all_reduce(act_.x, pass_.rows * H);
    } else {
      ops_.embed(w_.embed, act_.tokens, pass_.rows, H, act_.x);
    }
    for (std::size_t r = 0; r < pass_.embedding_overrides.size(); ++r)
      if (const float* row = pass_.embedding_overrides[r])
        ops_.upload(row, H, act_.x.at(static_cast<std::int64_t>(r) * H));
  }

  void lightning_attention(int l) {
    const LayerGraphTensors& layer = w_.layers[l];
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, A = std::int64_t{heads_} * c_.head_dim;
    ops_.linear(act_.a, rows, H, layer.qkv, 3 * A, act_.qkv);
    ops_.silu(act_.qkv, rows * 3 * A);
    ops_.lightning_attention(act_.qkv, rows, heads_, c_.head_dim, layer.slopes, s_.lightning[l], act_.o);
    if (rank_) {
      // One norm over every head's channels: each rank's sums of squares, added.
      ops_.sum_squares(act_.o, rows, A, rank_->norm_sums);
      all_reduce(rank_->norm_sums, rows);
      ops_.rms_norm_by_sums(act_.o, rows, A, rank_->norm_sums, std::int64_t{c_.num_heads} * c_.head_dim,
                            layer.output_norm, ModelConfig::kLightningNormEps, act_.o);
    } else {
      ops_.rms_norm(act_.o, rows, A, layer.output_norm, ModelConfig::kLightningNormEps, act_.o);
    }
    ops_.linear(act_.a, rows, H, layer.output_gate, A, act_.gate);
    ops_.sigmoid_gate(act_.o, act_.gate, rows * A);
    ops_.linear(act_.o, rows, A, layer.out_proj, H, act_.att);
    all_reduce(act_.att, rows * H);
  }

  void softmax_attention(int l) {
    const LayerGraphTensors& layer = w_.layers[l];
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, A = std::int64_t{heads_} * c_.head_dim;
    const std::int64_t KV = std::int64_t{kv_heads_} * c_.head_dim;
    // q, then the new keys and values, in the qkv buffer (KV <= A), before they go to the cache.
    const Tensor q = act_.qkv, keys = q.at(rows * A), values = keys.at(rows * KV);
    ops_.linear(act_.a, rows, H, layer.q_proj, A, q);
    ops_.linear(act_.a, rows, H, layer.k_proj, KV, keys);
    ops_.linear(act_.a, rows, H, layer.v_proj, KV, values);
    ops_.rope(q, rows, heads_, c_.head_dim, c_.rotary_dim, c_.rope_theta, pass_.first_position);
    ops_.rope(keys, rows, kv_heads_, c_.head_dim, c_.rotary_dim, c_.rope_theta, pass_.first_position);
    ops_.write_kv(keys, values, rows, pass_.first_position, KV, s_.kv[l]);
    ops_.softmax_attention(q, rows, pass_.first_position, s_.kv[l], heads_, kv_heads_, c_.head_dim, act_.o);
    ops_.linear(act_.o, rows, A, layer.o_proj, H, act_.att);
    all_reduce(act_.att, rows * H);
  }

  void lm_head() {
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, V = c_.vocab_size;
    if (rank_) return lm_head_part();
    if (!pass_.all_logits.data) {
      ops_.linear(act_.x.at((rows - 1) * H), 1, H, w_.lm_head, V, pass_.logits);
      return;
    }
    ops_.linear(act_.x, rows, H, w_.lm_head, V, pass_.all_logits);
    ops_.copy(pass_.all_logits.at((rows - 1) * V), V, pass_.logits);
  }

  // The rank's vocabulary rows of the logits, then every rank's gathered into the whole rows
  // where they are asked for.
  void lm_head_part() {
    const std::int64_t rows = pass_.rows, H = c_.hidden_size, V = c_.vocab_size;
    const RankLayout& plan = rank_->plan();
    const std::int64_t out_rows = pass_.all_logits.data ? rows : 1;
    ops_.linear(act_.x.at((rows - out_rows) * H), out_rows, H, w_.lm_head, plan.vocab_rows, rank_->logits_part);
    if (pass_.all_logits.data || pass_.logits.data) {
      const std::int64_t widest = rank_->widest_vocab();
      rank_->comm->all_gather(rank_->logits_part, out_rows * widest, rank_->logits_gather);
      if (rank_->writes_logits) {
        const Tensor to = pass_.all_logits.data ? pass_.all_logits : pass_.logits;
        for (const RankLayout& p : rank_->plans)
          for (std::int64_t r = 0; r < out_rows; ++r)
            ops_.copy(rank_->logits_gather.at((p.rank * out_rows * widest) + r * p.vocab_rows), p.vocab_rows,
                      to.at(r * V + p.first_vocab_row));
        if (pass_.all_logits.data && pass_.logits.data) ops_.copy(pass_.all_logits.at((rows - 1) * V), V, pass_.logits);
      }
    }
    // The last token's part stays first in logits_part.
    if (out_rows > 1)
      ops_.copy(rank_->logits_part.at((out_rows - 1) * plan.vocab_rows), plan.vocab_rows, rank_->logits_part);
  }

  // The last token's part of the logits to the first row of logits_part.
  void keep_last_part(std::int64_t out_rows) {
    const std::int64_t vocab_rows = rank_->plan().vocab_rows;
    if (out_rows > 1) ops_.copy(rank_->logits_part.at((out_rows - 1) * vocab_rows), vocab_rows, rank_->logits_part);
  }

  void all_reduce(Tensor x, std::int64_t count) {
    if (rank_) rank_->comm->all_reduce_sum(x, count);
  }

  bool reports_router() const { return pass_.router_logits && *pass_.router_logits; }

  void report_router(int layer) {
    if (!reports_router()) return;
    const auto E = static_cast<std::int64_t>(w_.layers[layer].moe.expert_count());
    router_.resize(static_cast<std::size_t>(pass_.rows * E));
    ops_.download(act_.router_logits, pass_.rows * E, router_.data());
    (*pass_.router_logits)(layer, router_, pass_.rows);
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
  const RankPass* rank_;
  const int heads_, kv_heads_;  // the rank's (or all)
  std::vector<float> hidden_, router_;
};

}  // namespace

void minimax01_forward(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                       const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass) {
  if (pass.rows > 0) Minimax01Pass(ops, config, weights, sequence, act, pass).run();
}

}  // namespace lightdesk
