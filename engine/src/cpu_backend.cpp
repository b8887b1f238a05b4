// The CPU backend: the model in float32 on the host, through the CPU ops and the model's graph
// (models/); with tensor parallel, each rank's slices on a thread of its own, the
// ranks talking through the loopback communicator, as GPUs would through NCCL.
#include <algorithm>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include "backend.h"
#include "communicator.h"
#include "expert_offload.h"
#include "models/graph.h"
#include "ops.h"
#include "sampler.h"

namespace lightdesk {
namespace {

// A pass's activations of one rank. Kept with the sequence from pass to pass, so that decode
// steps allocate nothing: a buffer grows to the largest pass and stays.
struct RankBuffers {
  std::vector<float> x, a, att, b, moe, qkv, o, gate, norm_sums, gather, router;
};

// Per rank (one without tensor parallel): its slices of the state, laid out as its weights.
struct CpuSequence final : SequenceState {
  struct RankState {
    RankBuffers buffers;
    std::vector<std::vector<float>> lightning;  // per layer [heads, d, d]; empty for softmax layers
    std::vector<std::vector<float>> keys;       // per layer [positions, kv_heads, d] (after RoPE)
    std::vector<std::vector<float>> values;     // per layer [positions, kv_heads, d]
    std::vector<float> logits_part;             // tensor parallel: the last token's vocabulary rows first
  };
  std::vector<RankState> ranks;
  std::vector<float> last_logits;  // [vocab]
};

// A rank's weights: the whole ones as WeightTensors (views of a float32 checkpoint), its parts
// of the others as copies it owns.
struct CpuRank {
  RankLayout plan;
  std::deque<WeightTensor> whole;
  std::deque<std::vector<float>> owned;
  std::deque<QuantizedMatrix> owned_quantized;
  std::uint64_t weight_bytes = 0;
  ModelTensors tensors;
  std::unique_ptr<ModelOps> ops;
  std::unique_ptr<LoopbackCommunicator> comm;  // tensor parallel only
};

// Exact mode: every expert into a host store, a layer at a time: from the quantized layers
// (each freed once stored, so the experts are held about once while they move), or their float32
// values read from the map.
std::unique_ptr<ExpertOffload> store_experts(const ModelConfig& c, const WeightMap& map,
                                             std::vector<QuantizedLayerExperts>& quantized, int slots, ExpertDType dtype,
                                             LoadTally& tally) {
  const ExpertBytes layout{dtype, c.hidden_size, c.expert_width, sizeof(float)};
  auto offload = std::make_unique<ExpertOffload>(c.num_layers, c.num_experts, slots, layout);
  const std::int64_t H = c.hidden_size, I = c.expert_width;
  auto values = [&](const std::string& name) {
    const TensorSlice& s = map.at(name);
    tally.add(s.source_bytes());
    return s.view ? WeightTensor(*s.view, s.offset, s.numel) : WeightTensor(s.synthetic, s.numel);
  };
  for (int l = 0; l < c.num_layers; ++l) {
    for (int e = 0; e < c.num_experts; ++e) {
      std::byte* to = offload->store().expert(l, e);
      if (!quantized.empty()) {
        const QuantizedLayerExperts& q = quantized[static_cast<std::size_t>(l)];
        layout.write_quantized({q.gate_up.view().rows(e * 2 * I, 2 * I), q.down.view().rows(e * H, H)}, to);
      } else {
        const ExpertWeightNames names = expert_weight_names(l, e);
        layout.write_matrices(values(names.w1).data(), values(names.w3).data(), values(names.w2).data(), to);
      }
    }
    if (!quantized.empty()) quantized[static_cast<std::size_t>(l)] = {};
  }
  quantized.clear();
  return offload;
}

// Host memory as a float32 Tensor; the ops never write through a weight's.
Tensor host_tensor(const float* data) { return {const_cast<float*>(data), ElementType::F32}; }
Tensor host_tensor(const std::vector<float>& w) { return host_tensor(w.data()); }

class CpuBackend final : public ComputeBackend {
 public:
  CpuBackend(const ModelConfig& c, const WeightMap& map, const ModelOptions& options, const ExpertLoad& experts,
             const std::function<void(std::uint64_t)>& bytes_loaded, ExpertLoadResult* expert_result,
             const std::function<std::unique_ptr<ModelOps>(int)>& make_ops)
      : config_(c), plans_(tensor_parallel_layout(c, options.tensor_parallel, options.moe_parallel)),
        kept_(options.experts), purpose_(options.purpose) {
    if (options.experts.pruned() && options.tensor_parallel > 1)
      throw Error("pruned experts run on one rank for now (tensor_parallel " + std::to_string(options.tensor_parallel) +
                  ")");
    const int ranks = static_cast<int>(plans_.size());
    const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
    const int threads = std::max(1, (options.threads > 0 ? options.threads : static_cast<int>(hardware)) / ranks);
    auto communicators =
        ranks > 1 ? make_loopback_communicators(ranks) : std::vector<std::unique_ptr<LoopbackCommunicator>>{};
    for (int r = 0; r < ranks; ++r) {
      auto rank = std::make_unique<CpuRank>();
      rank->plan = plans_[r];
      const int rank_threads = ranks > 1 ? threads : options.threads;
      rank->ops = make_ops ? make_ops(rank_threads) : make_cpu_ops(rank_threads);
      if (ranks > 1) rank->comm = std::move(communicators[r]);
      ranks_.push_back(std::move(rank));
    }
    LoadTally tally(bytes_loaded);
    // Quantized experts load once, whole layers; the ranks view their experts or copy their slices.
    if (experts.dtype != ExpertDType::BF16 && purpose_ == ModelPurpose::Sessions) {
      quantized_.resize(static_cast<std::size_t>(c.num_layers));
      const ExpertLoadResult result = load_quantized_experts(
          c, map, experts, [&](int l, QuantizedLayerExperts&& q) { quantized_[static_cast<std::size_t>(l)] = std::move(q); },
          [&](std::uint64_t bytes) { tally.add(bytes); });
      if (expert_result) *expert_result = result;
    }
    // Exact mode: every expert into the host store (the ranks hold none).
    if (options.host_expert_store) {
      offload_ = store_experts(c, map, quantized_, options.cached_experts_per_layer, experts.dtype, tally);
      weight_bytes_ += offload_->slot_bytes();  // the slots; the store is counted apart (expert_store_bytes)
    }
    // Each rank reads its parts of the other weights, all ranks at once.
    tally.on_every_rank(ranks_.size(), [&](std::size_t r) { load_rank(map, *ranks_[r], tally); });
    for (const auto& rank : ranks_) weight_bytes_ += rank->weight_bytes;
    if (ranks > 1 && plans_.front().expert_width < c.expert_width) {
      quantized_.clear();  // every rank holds copies of its slices
    } else {
      for (const QuantizedLayerExperts& layer : quantized_)
        weight_bytes_ += static_cast<std::uint64_t>(layer.gate_up.layout().total_bytes() + layer.down.layout().total_bytes());
    }
  }

  BackendKind kind() const override { return BackendKind::Cpu; }
  // Progress every fraction of a second; longer passes gain nothing on the CPU.
  std::int64_t default_chunk_tokens() const override { return 512; }
  std::uint64_t weight_bytes() const override { return weight_bytes_; }
  ExpertOffload* expert_offload() const override { return offload_.get(); }

  std::unique_ptr<SequenceState> new_sequence() const override {
    auto s = std::make_unique<CpuSequence>();
    s->last_logits.resize(static_cast<std::size_t>(config_.vocab_size));
    for (const auto& rank : ranks_) {
      CpuSequence::RankState state;
      state.lightning.resize(config_.num_layers);
      state.keys.resize(config_.num_layers);
      state.values.resize(config_.num_layers);
      for (int l = 0; l < config_.num_layers; ++l)
        if (config_.layer_kinds[l] == LayerKind::Lightning) state.lightning[l].assign(lightning_size(rank->plan), 0.0f);
      s->ranks.push_back(std::move(state));
    }
    return s;
  }

  void forward(SequenceState& state, const ForwardRequest& req) override;

  void read_logits(const SequenceState& state, float* out) const override {
    const auto& logits = static_cast<const CpuSequence&>(state).last_logits;
    std::copy(logits.begin(), logits.end(), out);
  }
  TokenId sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) override;

  void read_lightning_state(const SequenceState& state, int layer, float* out) const override {
    const auto& s = static_cast<const CpuSequence&>(state);
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      const auto& part = s.ranks[r].lightning.at(layer);
      std::copy(part.begin(), part.end(), out + head_state_offset(ranks_[r]->plan.first_head));
    }
  }
  void write_lightning_state(SequenceState& state, int layer, const float* in) const override {
    auto& s = static_cast<CpuSequence&>(state);
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      auto& part = s.ranks[r].lightning.at(layer);
      std::copy_n(in + head_state_offset(ranks_[r]->plan.first_head), part.size(), part.begin());
    }
  }
  StateDType kv_dtype() const override { return StateDType::F32; }
  // K/V heads come from the first rank holding each; a replicated head goes to every rank holding it.
  void read_kv(const SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
               void* out_bytes) const override {
    auto* out = static_cast<float*>(out_bytes);
    const auto& s = static_cast<const CpuSequence&>(state);
    for_each_kv_row(first, count, [&](std::size_t rank, std::int64_t cache_offset, std::int64_t export_offset) {
      const float* cache = (side == KvSide::Keys ? s.ranks[rank].keys : s.ranks[rank].values).at(layer).data();
      std::copy_n(cache + cache_offset, config_.head_dim, out + export_offset);
      return true;
    });
  }
  void resize_kv(SequenceState& state, std::int64_t positions) const override {
    auto& s = static_cast<CpuSequence&>(state);
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      for (int l = 0; l < config_.num_layers; ++l)
        if (config_.layer_kinds[l] == LayerKind::Softmax) {
          s.ranks[r].keys[l].resize(static_cast<std::size_t>(positions * kv_width(ranks_[r]->plan)));
          s.ranks[r].values[l].resize(static_cast<std::size_t>(positions * kv_width(ranks_[r]->plan)));
        }
  }
  void write_kv(SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
                const void* in_bytes) const override {
    const auto* in = static_cast<const float*>(in_bytes);
    auto& s = static_cast<CpuSequence&>(state);
    for_each_kv_row(first, count, [&](std::size_t rank, std::int64_t cache_offset, std::int64_t export_offset) {
      float* cache = (side == KvSide::Keys ? s.ranks[rank].keys : s.ranks[rank].values).at(layer).data();
      std::copy_n(in + export_offset, config_.head_dim, cache + cache_offset);
      return false;
    });
  }

 private:
  std::size_t lightning_size(const RankLayout& plan) const {
    return static_cast<std::size_t>(plan.heads) * config_.head_dim * config_.head_dim;
  }
  std::int64_t head_state_offset(int head) const { return std::int64_t{head} * config_.head_dim * config_.head_dim; }
  std::int64_t kv_width(const RankLayout& plan) const { return std::int64_t{plan.kv_heads} * config_.head_dim; }

  // Pairs each rank's cache layout [position, its kv_head, d] with the export layout [kv_head,
  // count, d]: calls fn(rank, cache offset, export offset) for each row of d values of each
  // rank holding its head, in rank order, until fn returns true.
  template <typename Fn>
  void for_each_kv_row(std::int64_t first, std::int64_t count, Fn fn) const {
    const int d = config_.head_dim;
    for (int g = 0; g < config_.num_kv_heads; ++g)
      for (std::size_t r = 0; r < ranks_.size(); ++r) {
        const RankLayout& plan = ranks_[r]->plan;
        const int local = g - plan.first_kv_head;
        if (local < 0 || local >= plan.kv_heads) continue;
        bool done = false;
        for (std::int64_t t = 0; t < count; ++t)
          done = fn(r, ((first + t) * plan.kv_heads + local) * d, (std::int64_t{g} * count + t) * d);
        if (done) break;
      }
  }

  // The rank's tensors: its parts of the map's weights, read (whole ones viewed where the
  // checkpoint's float32 can be), and its quantized experts.
  void load_rank(const WeightMap& map, CpuRank& rank, LoadTally& tally) const;
  // A layer's quantized experts as the rank holds them (another rank's: null views).
  std::vector<QuantizedExpertTensors> quantized_experts(const QuantizedLayerExperts& q, CpuRank& rank,
                                                        bool slice) const;
  // Runs fn(rank index) on a thread per rank (inline for one), rethrowing the error of the first
  // rank that failed; the other ranks leave their collectives rather than wait for it.
  void on_every_rank(const std::function<void(std::size_t)>& fn) const;

  const ModelConfig config_;
  const std::vector<RankLayout> plans_;
  const ModelForward forward_ = model_forward(config_);
  std::vector<QuantizedLayerExperts> quantized_;  // the quantized experts the ranks view
  std::vector<std::unique_ptr<CpuRank>> ranks_;
  std::uint64_t weight_bytes_ = 0;
  const ExpertSelection kept_;
  const ModelPurpose purpose_;
  std::unique_ptr<ExpertOffload> offload_;  // exact mode
};

void CpuBackend::load_rank(const WeightMap& map, CpuRank& rank, LoadTally& tally) const {
  const RankLayout& p = rank.plan;
  auto weight = [&](const std::string& name, WeightPrecision = WeightPrecision::Float32) -> Tensor {
    const WeightPart part = rank_weight_part(config_, plans_, p.rank, name);
    const TensorSlice& s = map.at(name);
    rank.weight_bytes += static_cast<std::uint64_t>(part.numel()) * sizeof(float);
    if (part.whole()) {
      const WeightTensor& w = rank.whole.emplace_back(s.view ? WeightTensor(*s.view, s.offset, s.numel)
                                                             : WeightTensor(s.synthetic, s.numel));
      tally.add(s.source_bytes());
      return host_tensor(w.data());
    }
    std::vector<float>& w = rank.owned.emplace_back(static_cast<std::size_t>(part.numel()));
    tally.add(read_weight_part(map, name, part, w.data()));
    return host_tensor(w);
  };
  auto own = [&](std::vector<float> values) {
    rank.weight_bytes += values.size() * sizeof(float);
    return host_tensor(rank.owned.emplace_back(std::move(values)));
  };
  const std::int64_t H = config_.hidden_size;
  const bool sessions = purpose_ == ModelPurpose::Sessions;
  ModelTensors& t = rank.tensors;
  t.embed = weight("embed");
  if (sessions) {  // a router-only model stops before the LM head
    const TensorSlice &embed = map.at("embed"), &lm_head = map.at("lm_head");
    const bool tied = embed.view && lm_head.view == embed.view && lm_head.offset == embed.offset;
    t.lm_head = tied ? t.embed : weight("lm_head");
    t.final_norm = weight("final_norm");
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    LayerGraphTensors layer;
    load_layer_tensors(config_, l, layer, weight);
    if (layer.kind == LayerKind::Lightning) {
      const std::vector<float> slopes = lightning_slopes(config_, l);
      layer.slopes = own({slopes.begin() + p.first_head, slopes.begin() + p.first_head + p.heads});
    }
    layer.moe.router = layer.router;
    layer.moe.hidden = H;
    layer.moe.width = p.expert_width;
    layer.moe.top_k = config_.experts_per_token;
    if (kept_.pruned()) layer.moe.expert_mask = own(expert_mask(config_, kept_, l));
    if (offload_) {
      layer.moe.experts.resize(static_cast<std::size_t>(config_.num_experts));
      layer.moe.offload = offload_.get();
      layer.moe.offload_layer = l;
    } else if (!quantized_.empty()) {
      layer.moe.quantized = quantized_experts(quantized_[static_cast<std::size_t>(l)], rank, plans_.size() > 1);
    } else {
      // The rank's experts (pruned: the kept ones), each its slice of the width; none for a
      // router-only model.
      for (int e = 0; e < config_.num_experts; ++e) {
        if (!sessions || e < p.first_expert || e >= p.first_expert + p.experts || !expert_kept(kept_, l, e)) {
          layer.moe.experts.push_back({});
          continue;
        }
        const ExpertWeightNames names = expert_weight_names(l, e);
        layer.moe.experts.push_back({weight(names.w1), weight(names.w3), weight(names.w2)});
      }
    }
    t.layers.push_back(std::move(layer));
  }
}

std::vector<QuantizedExpertTensors> CpuBackend::quantized_experts(const QuantizedLayerExperts& q, CpuRank& rank,
                                                                 bool slice) const {
  const RankLayout& p = rank.plan;
  const std::int64_t H = config_.hidden_size, I = config_.expert_width, c0 = p.first_expert_column,
                     cn = p.expert_width;
  const QuantizedView gate_up = q.gate_up.view(), down = q.down.view();
  std::vector<QuantizedExpertTensors> experts(static_cast<std::size_t>(config_.num_experts));
  for (int e = p.first_expert; e < p.first_expert + p.experts; ++e) {
    QuantizedExpertTensors& t = experts[static_cast<std::size_t>(e)];
    if (!slice || cn == I) {
      // Whole experts: views of the loaded block (kept by the backend).
      t = {gate_up.rows(e * 2 * I, 2 * I), down.rows(e * H, H)};
      continue;
    }
    // A slice of the intermediate width: its w1 and w3 rows together, its columns of w2.
    const QuantizedView parts[] = {gate_up.rows(e * 2 * I + c0, cn), gate_up.rows(e * 2 * I + I + c0, cn)};
    t.gate_up = rank.owned_quantized.emplace_back(concat_rows(parts)).view();
    rank.weight_bytes += static_cast<std::uint64_t>(t.gate_up.layout.total_bytes());
    try {
      t.down = rank.owned_quantized.emplace_back(quantized_columns(down.rows(e * H, H), c0, cn)).view();
      rank.weight_bytes += static_cast<std::uint64_t>(t.down.layout.total_bytes());
    } catch (const Error& error) {
      throw Error(std::string("--moe-parallel tensor over ") + std::to_string(plans_.size()) + " ranks: " + error.what() +
                  " (use --moe-parallel expert, or a degree that splits the expert width at multiples of 128)");
    }
  }
  return experts;
}

void CpuBackend::on_every_rank(const std::function<void(std::size_t)>& fn) const {
  lightdesk::on_every_rank(
      ranks_.size(), fn, [&](std::size_t r) { ranks_[r]->comm->abort(); }, [&] { ranks_.front()->comm->recover(); });
}

void CpuBackend::forward(SequenceState& state, const ForwardRequest& req) {
  auto& s = static_cast<CpuSequence&>(state);
  const std::int64_t T = static_cast<std::int64_t>(req.tokens.size());
  const std::int64_t H = config_.hidden_size;
  if (T == 0) return;
  const bool parallel = ranks_.size() > 1;
  const std::int64_t logits_rows = req.all_logits ? T : 1, widest_vocab = plans_.front().vocab_rows;
  const std::vector<std::int32_t> tokens(req.tokens.begin(), req.tokens.end());
  const std::int64_t new_positions = req.first_position + T;

  // Allocate everything first: past this point nothing allocates a large buffer.
  for (std::size_t r = 0; r < ranks_.size(); ++r) {
    const RankLayout& plan = ranks_[r]->plan;
    const auto rows_hidden = static_cast<std::size_t>(T * H), A = static_cast<std::size_t>(T * plan.heads * config_.head_dim);
    RankBuffers& b = s.ranks[r].buffers;
    for (auto* v : {&b.x, &b.a, &b.att, &b.b, &b.moe}) v->resize(rows_hidden);
    b.qkv.resize(3 * A);
    if (req.router_logits) b.router.resize(static_cast<std::size_t>(T * config_.num_experts));
    b.o.resize(A);
    b.gate.resize(A);
    CpuSequence::RankState& rs = s.ranks[r];
    if (parallel) {
      b.norm_sums.resize(static_cast<std::size_t>(T));
      b.gather.resize(static_cast<std::size_t>(ranks_.size() * logits_rows * widest_vocab));
      rs.logits_part.resize(static_cast<std::size_t>(logits_rows * widest_vocab));
    }
    for (int l = 0; l < config_.num_layers; ++l)
      if (config_.layer_kinds[l] == LayerKind::Softmax) {
        rs.keys[l].resize(static_cast<std::size_t>(new_positions * kv_width(plan)));
        rs.values[l].resize(static_cast<std::size_t>(new_positions * kv_width(plan)));
      }
  }

  on_every_rank([&](std::size_t r) {
    CpuRank& rank = *ranks_[r];
    CpuSequence::RankState& rs = s.ranks[r];
    RankBuffers& b = rs.buffers;
    SequenceTensors sequence;
    sequence.lightning.resize(config_.num_layers);
    sequence.kv.resize(config_.num_layers);
    for (int l = 0; l < config_.num_layers; ++l)
      if (config_.layer_kinds[l] == LayerKind::Softmax)
        sequence.kv[l] = contiguous_kv(host_tensor(rs.keys[l]), host_tensor(rs.values[l]), kv_width(rank.plan));
      else
        sequence.lightning[l] = host_tensor(rs.lightning[l]);
    const ActivationTensors act{{const_cast<std::int32_t*>(tokens.data()), ElementType::I32},
                                host_tensor(b.x), host_tensor(b.a), host_tensor(b.att), host_tensor(b.b),
                                host_tensor(b.moe), host_tensor(b.qkv), host_tensor(b.o), host_tensor(b.gate),
                                host_tensor(b.router)};
    RankPass rank_pass{rank.comm.get(), plans_, host_tensor(b.norm_sums), host_tensor(rs.logits_part),
                       host_tensor(b.gather)};
    GraphPass pass;
    pass.rows = T;
    pass.first_position = {req.first_position, nullptr};
    pass.logits = host_tensor(s.last_logits);
    pass.all_logits = {req.all_logits, ElementType::F32};
    pass.embedding_overrides = req.embedding_overrides;
    // The hidden state is the same on every rank: one reports it.
    if (r == 0) {
      pass.hidden_states = req.hidden_states;
      pass.router_logits = req.router_logits;
    }
    pass.last_router_layer = req.last_router_layer;
    if (parallel) pass.rank = &rank_pass;
    // Every rank has the same gathered logits: one writes them.
    rank_pass.writes_logits = r == 0;
    forward_(*rank.ops, config_, rank.tensors, sequence, act, pass);
  });
}

TokenId CpuBackend::sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) {
  const auto& s = static_cast<const CpuSequence&>(state);
  if (ranks_.size() == 1 || !is_greedy(params)) return sample_token(s.last_logits, params, rng);
  // Greedy: each rank's best of its vocabulary rows, then the best of those.
  std::vector<TokenId> chosen(ranks_.size());
  on_every_rank([&](std::size_t r) {
    const RankLayout& plan = ranks_[r]->plan;
    const std::span<const float> part(s.ranks[r].logits_part.data(), static_cast<std::size_t>(plan.vocab_rows));
    const auto best = std::max_element(part.begin(), part.end());  // the first of equal maxima
    const float value = best == part.end() ? -std::numeric_limits<float>::infinity() : *best;
    const auto id = static_cast<TokenId>(plan.first_vocab_row + (best - part.begin()));
    std::vector<std::int32_t> scratch(2 * (ranks_.size() + 1));
    chosen[r] = distributed_argmax(*ranks_[r]->comm, *ranks_[r]->ops, {scratch.data(), ElementType::I32}, value, id);
  });
  return chosen.front();
}

}  // namespace

std::unique_ptr<ComputeBackend> make_cpu_backend(const ModelConfig& config, const WeightMap& weights,
                                                 const ModelOptions& options, const ExpertLoad& experts,
                                                 const std::function<void(std::uint64_t)>& bytes_loaded,
                                                 ExpertLoadResult* expert_result,
                                                 const std::function<std::unique_ptr<ModelOps>(int)>& make_ops) {
  return std::make_unique<CpuBackend>(config, weights, options, experts, bytes_loaded, expert_result, make_ops);
}

}  // namespace lightdesk
