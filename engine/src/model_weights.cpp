#include "model_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include "communicator.h"
#include "lightdesk/thread_pool.h"

namespace lightdesk {


namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s.append(i ? ", " : "").append(std::to_string(shape[i]));
  return s + "]";
}

class Resolver {
 public:
  // `prefix` is prepended to every name; tensors outside it belong to another model part.
  Resolver(const Checkpoint& checkpoint, std::string prefix) : checkpoint_(checkpoint), prefix_(std::move(prefix)) {}

  const TensorView* find(const std::string& name) {
    const TensorView* t = checkpoint_.find(prefix_ + name);
    if (t) used_.insert(prefix_ + name);
    return t;
  }

  const TensorView& require(const std::string& name, const std::vector<std::int64_t>& shape) {
    const TensorView* t = find(name);
    if (!t) throw Error("checkpoint: missing tensor \"" + prefix_ + name + "\"");
    check_shape(*t, shape);
    return *t;
  }

  static void check_shape(const TensorView& t, const std::vector<std::int64_t>& shape) {
    if (t.shape != shape)
      throw Error(t.file + ": tensor \"" + t.name + "\" has shape " + shape_text(t.shape) + ", the config needs " +
                  shape_text(shape));
    if (!is_float_dtype(t.dtype))
      throw Error(t.file + ": tensor \"" + t.name + "\" is " + dtype_name(t.dtype) + ", expected F32, BF16 or F16");
  }

  void check_all_used() const {
    for (const auto& [name, t] : checkpoint_.tensors())
      if (!used_.count(name) && !is_model_buffer(name) && name.compare(0, prefix_.size(), prefix_) == 0)
        throw Error(t->file + ": unexpected tensor \"" + name + "\" (does config.json match this checkpoint?)");
  }

 private:
  const Checkpoint& checkpoint_;
  const std::string prefix_;
  std::set<std::string> used_;
};

}  // namespace

std::vector<std::int64_t> weight_shape(const ModelConfig& c, const std::string& name) {
  const std::int64_t H = c.hidden_size, V = c.vocab_size, A = std::int64_t{c.num_heads} * c.head_dim,
                     KV = std::int64_t{c.num_kv_heads} * c.head_dim, I = c.expert_width, E = c.num_experts;
  const std::map<std::string, std::vector<std::int64_t>> shapes = {
      {"embed", {V, H}},       {"lm_head", {V, H}},        {"final_norm", {H}},       {"input_norm", {H}},
      {"post_attn_norm", {H}}, {"qkv", {3 * A, H}},        {"output_gate", {A, H}},   {"output_norm", {A}},
      {"out_proj", {H, A}},    {"q_proj", {A, H}},         {"k_proj", {KV, H}},       {"v_proj", {KV, H}},
      {"o_proj", {H, A}},      {"router", {E, H}},         {"w1", {I, H}},            {"w3", {I, H}},
      {"w2", {H, I}}};
  const auto found = shapes.find(name.substr(name.rfind('.') + 1));
  if (found == shapes.end()) throw Error("no weight shape for " + name);
  return found->second;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c, bool fused_experts, bool own_lm_head) {
  const std::int64_t H = c.hidden_size, I = c.expert_width, E = c.num_experts;
  std::vector<ExpectedTensor> list;
  auto whole = [&](const std::string& key, const std::string& name) {
    std::vector<std::int64_t> shape = weight_shape(c, key);
    std::int64_t numel = 1;
    for (std::int64_t extent : shape) numel *= extent;
    list.push_back({name, std::move(shape), {{key, 0, numel}}});
  };

  whole("embed", "model.embed_tokens.weight");
  whole("final_norm", "model.norm.weight");
  if (own_lm_head) whole("lm_head", "lm_head.weight");
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string k = layer_weight_prefix(l);
    whole(k + "input_norm", p + "input_layernorm.weight");
    whole(k + "post_attn_norm", p + "post_attention_layernorm.weight");
    if (c.layer_kinds[l] == LayerKind::Lightning) {
      whole(k + "qkv", p + "self_attn.qkv_proj.weight");
      whole(k + "output_gate", p + "self_attn.output_gate.weight");
      whole(k + "output_norm", p + "self_attn.norm.weight");
      whole(k + "out_proj", p + "self_attn.out_proj.weight");
    } else {
      whole(k + "q_proj", p + "self_attn.q_proj.weight");
      whole(k + "k_proj", p + "self_attn.k_proj.weight");
      whole(k + "v_proj", p + "self_attn.v_proj.weight");
      whole(k + "o_proj", p + "self_attn.o_proj.weight");
    }
    if (fused_experts) {
      whole(k + "router", p + "mlp.gate.weight");
      ExpectedTensor gate_up{p + "mlp.experts.gate_up_proj", {E, 2 * I, H}, {}};
      ExpectedTensor down{p + "mlp.experts.down_proj", {E, H, I}, {}};
      for (int e = 0; e < c.num_experts; ++e) {
        const ExpertWeightNames names = expert_weight_names(l, e);
        gate_up.parts.push_back({names.w1, e * 2 * I * H, I * H});
        gate_up.parts.push_back({names.w3, e * 2 * I * H + I * H, I * H});
        down.parts.push_back({names.w2, e * H * I, H * I});
      }
      list.push_back(std::move(gate_up));
      list.push_back(std::move(down));
    } else {
      whole(k + "router", p + "block_sparse_moe.gate.weight");
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string pe = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        const ExpertWeightNames names = expert_weight_names(l, e);
        whole(names.w1, pe + "w1.weight");
        whole(names.w3, pe + "w3.weight");
        whole(names.w2, pe + "w2.weight");
      }
    }
  }
  return list;
}

bool is_model_buffer(const std::string& name) {
  for (const char* suffix : {".slope_rate", ".query_decay", ".key_decay", ".diagonal_decay"}) {
    const std::size_t n = std::strlen(suffix);
    if (name.size() >= n && name.compare(name.size() - n, n, suffix) == 0) return true;
  }
  return false;
}

WeightMap::WeightMap(const ModelConfig& c, const Checkpoint& checkpoint) {
  Resolver r(checkpoint, c.weight_prefix);
  // The released per-expert tensors, or transformers 5's fused layout.
  const bool fused = r.find("model.layers.0.mlp.experts.gate_up_proj") != nullptr;
  const bool own_lm_head = r.find("lm_head.weight") || !c.tie_word_embeddings;
  for (const ExpectedTensor& expected : expected_tensors(c, fused, own_lm_head)) {
    const TensorView& view = r.require(expected.name, expected.shape);
    for (const ExpectedTensor::Part& part : expected.parts) {
      slices_[part.key] = TensorSlice{&view, part.offset, part.numel};
      parameter_count_ += static_cast<std::uint64_t>(part.numel);
      bytes_per_dtype_[dtype_name(view.dtype)] += static_cast<std::uint64_t>(part.numel) * dtype_size(view.dtype);
    }
  }
  if (!own_lm_head) slices_["lm_head"] = slices_.at("embed");
  r.check_all_used();
}

SyntheticFill synthetic_fill(const ModelConfig& c, const std::string& key, const std::vector<std::int64_t>& shape,
                             std::uint64_t seed) {
  // Each weight its own stream: the seed mixed with the weight's name.
  std::uint64_t stream = splitmix64(seed);
  for (unsigned char ch : key) stream = splitmix64(stream ^ ch);
  if (key.ends_with("norm")) return {stream, 0.5f, 1.5f};
  const float bound = key.ends_with("router") ? std::sqrt(3.0f / static_cast<float>(c.hidden_size))
                                              : 1.0f / std::sqrt(static_cast<float>(shape.back()));
  return {stream, -bound, bound};
}

WeightMap WeightMap::synthetic(const ModelConfig& c, std::uint64_t seed) {
  WeightMap map;
  for (const ExpectedTensor& expected : expected_tensors(c, false, true))
    for (const ExpectedTensor::Part& part : expected.parts) {
      map.slices_[part.key] = TensorSlice{nullptr, 0, part.numel, synthetic_fill(c, part.key, expected.shape, seed)};
      map.parameter_count_ += static_cast<std::uint64_t>(part.numel);
    }
  return map;
}

std::string layer_weight_prefix(int layer) { return "layers." + std::to_string(layer) + "."; }

ExpertWeightNames expert_weight_names(int layer, int expert) {
  const std::string k = layer_weight_prefix(layer) + "experts." + std::to_string(expert) + ".";
  return {k + "w1", k + "w3", k + "w2"};
}

const TensorSlice& WeightMap::at(const std::string& name) const {
  auto it = slices_.find(name);
  if (it == slices_.end()) throw Error("internal: no weight \"" + name + "\"");
  return it->second;
}

std::vector<float> lightning_slopes(const ModelConfig& c, int layer) {
  const int n = c.num_heads;
  const double depth = c.num_layers > 1 ? static_cast<double>(layer) : 0.0;
  const double last = c.num_layers > 1 ? static_cast<double>(c.num_layers - 1) : 1.0;
  std::vector<float> slopes(static_cast<std::size_t>(n));
  if (c.layout == CheckpointLayout::Native) {
    // transformers: base ** arange(1, n+1) in float32 from a float32 base.
    const float base = static_cast<float>(1.0 / std::pow(2.0, 8.0 / n));
    const float factor = static_cast<float>(1.0 - depth / (last + 1e-5) + 1e-5);
    for (int h = 0; h < n; ++h)
      slopes[h] = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(h + 1))) * factor;
    return slopes;
  }
  // Original code: ALiBi slopes in double, interpolated for head counts that are not powers
  // of two, then rounded to float32.
  auto power_of_two = [](int count) {
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(count)) - 3.0)));
    std::vector<double> s(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) s[i] = start * std::pow(start, i);
    return s;
  };
  std::function<std::vector<double>(int)> get_slopes = [&](int count) {
    const double lg = std::log2(static_cast<double>(count));
    if (lg == std::floor(lg)) return power_of_two(count);
    const int closest = 1 << static_cast<int>(std::floor(lg));
    std::vector<double> s = power_of_two(closest);
    const std::vector<double> extra = get_slopes(2 * closest);
    for (int i = 0; i < count - closest; ++i) s.push_back(extra[2 * i]);
    return s;
  };
  const std::vector<double> base = get_slopes(n);
  const float factor = static_cast<float>(1.0 - depth / last + 1e-5);
  for (int h = 0; h < n; ++h) slopes[h] = static_cast<float>(base[h]) * factor;
  return slopes;
}

void check_expert_selection(const ModelConfig& c, const ExpertSelection& experts) {
  if (!experts.pruned()) return;
  if (std::ssize(experts.kept) != c.num_layers)
    throw Error("the expert selection has " + std::to_string(experts.kept.size()) + " layers, the model " +
                std::to_string(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    const std::vector<int>& kept = experts.kept[static_cast<std::size_t>(l)];
    std::vector<bool> seen(static_cast<std::size_t>(c.num_experts));
    for (int e : kept) {
      if (e < 0 || e >= c.num_experts || seen[static_cast<std::size_t>(e)])
        throw Error("layer " + std::to_string(l) + " keeps expert " + std::to_string(e) +
                    " twice or outside the model's " + std::to_string(c.num_experts));
      seen[static_cast<std::size_t>(e)] = true;
    }
    if (std::ssize(kept) < c.experts_per_token || std::ssize(kept) != experts.experts_kept())
      throw Error("layer " + std::to_string(l) + " keeps " + std::to_string(kept.size()) +
                  " experts: every layer keeps the same number, at least the " +
                  std::to_string(c.experts_per_token) + " a token is routed to");
  }
}

bool expert_kept(const ExpertSelection& experts, int layer, int e) {
  if (!experts.pruned()) return true;
  const std::vector<int>& kept = experts.kept[static_cast<std::size_t>(layer)];
  return std::find(kept.begin(), kept.end(), e) != kept.end();
}

std::vector<float> expert_mask(const ModelConfig& c, const ExpertSelection& experts, int layer) {
  std::vector<float> mask(static_cast<std::size_t>(c.num_experts));
  for (int e = 0; e < c.num_experts; ++e)
    if (!expert_kept(experts, layer, e)) mask[static_cast<std::size_t>(e)] = -std::numeric_limits<float>::infinity();
  return mask;
}

ExpertDType expert_dtype(ExpertFormat format) {
  switch (format) {
    case ExpertFormat::Bf16: return ExpertDType::BF16;
    case ExpertFormat::Int8: return ExpertDType::Int8;
    case ExpertFormat::Int4: return ExpertDType::Int4;
  }
  return ExpertDType::BF16;
}

ExpertCacheKey expert_cache_key(const ModelConfig& c, const ExpertLoad& load) {
  return {load.fingerprint, load.dtype, kInt4Variant, c.num_layers, c.num_experts, c.hidden_size, c.expert_width};
}

namespace {

// Layer l's experts quantized from the map's weights, the rows spread over `pool`.
QuantizedLayerExperts quantize_layer_experts(const ModelConfig& c, const WeightMap& map, int l, ExpertDType dtype,
                                             ThreadPool& pool, const std::function<void(std::uint64_t)>& bytes_read) {
  const std::int64_t H = c.hidden_size, I = c.expert_width, E = c.num_experts;
  QuantizedLayerExperts q{QuantizedMatrix({dtype, E * 2 * I, H}), QuantizedMatrix({dtype, E * H, I})};
  auto quantize = [&](const std::string& name, std::int64_t rows, std::int64_t first_row, QuantizedMatrix& into) {
    const TensorSlice& s = map.at(name);
    if (!s.view) {
      const WeightTensor values(s.synthetic, s.numel);
      quantize_rows(reinterpret_cast<const std::byte*>(values.data()), DType::F32, rows, first_row, kInt4Variant, into,
                    &pool);
      bytes_read(static_cast<std::uint64_t>(s.numel) * sizeof(float));
      return;
    }
    const std::size_t size = dtype_size(s.view->dtype);
    try {
      quantize_rows(s.view->data + s.offset * static_cast<std::int64_t>(size), s.view->dtype, rows, first_row,
                    kInt4Variant, into, &pool);
    } catch (const Cancelled&) {
      throw;
    } catch (const Error& e) {
      throw Error(s.view->file + ": tensor \"" + s.view->name + "\" (" + name + "): " + e.what() +
                  ": the checkpoint is damaged");
    }
    bytes_read(static_cast<std::uint64_t>(s.numel) * size);
  };
  for (int e = 0; e < c.num_experts; ++e) {
    const ExpertWeightNames names = expert_weight_names(l, e);
    quantize(names.w1, I, e * 2 * I, q.gate_up);
    quantize(names.w3, I, e * 2 * I + I, q.gate_up);
    quantize(names.w2, H, e * H, q.down);
  }
  return q;
}

}  // namespace

ExpertLoadResult load_quantized_experts(const ModelConfig& c, const WeightMap& map, const ExpertLoad& load,
                                        const std::function<void(int, QuantizedLayerExperts&&)>& take,
                                        const std::function<void(std::uint64_t)>& bytes_read,
                                        const PlacedExpertQuantizer& quantize) {
  ExpertLoadResult result;
  const ExpertCacheKey key = expert_cache_key(c, load);
  std::filesystem::path file;
  if (!load.cache_directory.empty() && !load.fingerprint.empty()) {
    file = expert_cache_file(load.cache_directory, key);
    std::error_code missing;
    if (std::filesystem::exists(file, missing)) {
      try {
        const ExpertCacheReader reader(file, key);
        for (int l = 0; l < c.num_layers; ++l) {
          QuantizedLayerExperts layer = reader.layer(l);
          bytes_read(static_cast<std::uint64_t>(layer.gate_up.layout().total_bytes() + layer.down.layout().total_bytes()));
          take(l, std::move(layer));
        }
        result.cache_bytes_read = reader.data_bytes();
        result.cache_file = file;
        return result;
      } catch (const ExpertCacheRefused&) {
        // Stale or damaged: never used; made again below.
        std::filesystem::remove(file, missing);
      }
    }
  }
  std::optional<ThreadPool> pool;  // the host's quantizer's
  if (!quantize) pool.emplace(load.threads);
  std::optional<ExpertCacheWriter> writer;
  auto without_cache = [&] { writer.reset(); };
  if (!file.empty()) {
    try {
      writer.emplace(file, key);
    } catch (const Error&) {
      without_cache();
    }
  }
  auto write = [&](int l, const QuantizedLayerExperts& layer) {
    try {
      writer->add(l, layer);
    } catch (const Error&) {
      without_cache();
    }
  };
  for (int l = 0; l < c.num_layers; ++l) {
    if (quantize) {
      const std::optional<QuantizedLayerExperts> layer = quantize(l, writer.has_value());
      if (writer && layer) write(l, *layer);
      continue;
    }
    QuantizedLayerExperts layer = quantize_layer_experts(c, map, l, load.dtype, *pool, bytes_read);
    if (writer) write(l, layer);
    take(l, std::move(layer));
  }
  if (writer) {
    try {
      writer->finish();
      result.cache_file = file;
    } catch (const Error&) {
      without_cache();
    }
  }
  return result;
}

namespace {

[[noreturn]] void throw_non_finite(const TensorSlice& s, const std::string& name, const std::string& value,
                                   std::int64_t element) {
  throw Error((s.view ? s.view->file + ": tensor \"" + s.view->name : "synthetic weight \"" + name) +
              "\" holds a non-finite value (" + value + " at element " + std::to_string(element) +
              "): the checkpoint is damaged");
}

}  // namespace

WeightPart rank_weight_part(const ModelConfig& c, std::span<const RankLayout> plans, int rank, const std::string& name) {
  const std::vector<std::int64_t> shape = weight_shape(c, name);
  WeightPart part{shape.front(), 1, false, 0, shape.front()};
  for (std::size_t i = 1; i < shape.size(); ++i) part.width *= shape[i];
  if (plans.size() == 1) return part;
  const RankLayout& plan = plans[static_cast<std::size_t>(rank)];
  const std::string field = name.substr(name.rfind('.') + 1);
  const std::int64_t d = c.head_dim, h0 = plan.first_head * d, hn = plan.heads * d;
  auto take = [&](bool by_columns, std::int64_t first, std::int64_t count) {
    part.by_columns = by_columns;
    part.first = first;
    part.count = count;
    return part;
  };
  if (field == "embed" || field == "lm_head") return take(false, plan.first_vocab_row, plan.vocab_rows);
  if (field == "qkv") return take(false, 3 * h0, 3 * hn);  // per head [q | k | v]: one block of rows
  if (field == "output_gate" || field == "output_norm" || field == "q_proj") return take(false, h0, hn);
  if (field == "k_proj" || field == "v_proj") return take(false, plan.first_kv_head * d, plan.kv_heads * d);
  if (field == "out_proj" || field == "o_proj") return take(true, h0, hn);
  if (field == "w1" || field == "w3") return take(false, plan.first_expert_column, plan.expert_width);
  if (field == "w2") return take(true, plan.first_expert_column, plan.expert_width);
  return part;  // norms, routers: every rank's own copy
}

std::uint64_t read_weight_part(const WeightMap& map, const std::string& name, const WeightPart& part, float* out) {
  const TensorSlice& s = map.at(name);
  // Runs of consecutive elements: the block of rows is one, a block of columns one per row.
  const std::int64_t runs = part.by_columns ? part.rows : 1;
  const std::int64_t run = part.by_columns ? part.count : part.count * part.width;
  const std::int64_t first = part.by_columns ? part.first : part.first * part.width;
  const std::size_t size = s.view ? dtype_size(s.view->dtype) : sizeof(float);
  for (std::int64_t r = 0; r < runs; ++r) {
    const std::int64_t element = first + r * part.width;
    if (s.view)
      convert_to_f32(s.view->data + (s.offset + element) * static_cast<std::int64_t>(size), s.view->dtype, run,
                     out + r * run);
    else
      fill_synthetic(s.synthetic, out + r * run, run, element);
  }
  // As WeightTensor checks a whole weight: a value that is not finite makes every logit NaN.
  const std::int64_t numel = part.numel();
  const float* bad = std::find_if(out, out + numel, [](float v) { return !std::isfinite(v); });
  if (bad != out + numel) {
    const std::int64_t at = bad - out;
    throw_non_finite(s, name, std::to_string(*bad), s.offset + first + (at / run) * part.width + at % run);
  }
  return static_cast<std::uint64_t>(numel) * size;
}

void check_stored_values(const WeightMap& map, const std::string& name) {
  const TensorSlice& s = map.at(name);
  if (!s.view) return;  // synthetic values are finite
  const std::byte* data = s.view->data + s.offset * static_cast<std::int64_t>(dtype_size(s.view->dtype));
  // An exponent of all ones is an infinity or a NaN; looked for without an early exit, so that
  // the loop vectorizes (the mapped data may be unaligned: memcpy reads it).
  auto first_non_finite = [&](auto bits_type, auto exponent) -> std::int64_t {
    using Bits = decltype(bits_type);
    auto non_finite = [&](std::int64_t i) {
      Bits bits;
      std::memcpy(&bits, data + i * static_cast<std::int64_t>(sizeof(Bits)), sizeof bits);
      return (bits & exponent) == exponent;
    };
    unsigned found = 0;
    for (std::int64_t i = 0; i < s.numel; ++i) found |= non_finite(i);
    if (!found) return -1;
    std::int64_t i = 0;
    while (!non_finite(i)) ++i;
    return i;
  };
  std::int64_t bad = -1;
  switch (s.view->dtype) {
    case DType::F32: bad = first_non_finite(std::uint32_t{}, std::uint32_t{0x7F800000u}); break;
    case DType::BF16: bad = first_non_finite(std::uint16_t{}, std::uint16_t{0x7F80u}); break;
    case DType::F16: bad = first_non_finite(std::uint16_t{}, std::uint16_t{0x7C00u}); break;
    default: throw Error("internal: " + name + " is not a float tensor");
  }
  if (bad >= 0) throw_non_finite(s, name, "an infinity or NaN", s.offset + bad);
}

void LoadTally::add(std::uint64_t bytes) {
  if (failed_) throw RankAborted();
  const std::lock_guard lock(mutex_);
  if (failed_) throw RankAborted();  // a report that failed while this rank waited
  total_ += bytes;
  if (!report_) return;
  try {
    report_(total_);
  } catch (...) {
    failed_ = true;  // before the next rank's report: a cancelled load reports no further
    throw;
  }
}

std::uint64_t LoadTally::total() const {
  const std::lock_guard lock(mutex_);
  return total_;
}

void LoadTally::on_every_rank(std::size_t ranks, const std::function<void(std::size_t)>& load) {
  lightdesk::on_every_rank(ranks, load, [this](std::size_t) { failed_ = true; }, [] {});
}

}  // namespace lightdesk
