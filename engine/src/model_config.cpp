#include "model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "lightdesk/input_files.h"

namespace lightdesk {
namespace {

using nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& root, std::string source) : root_(root), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(source_ + ": " + what); }

  bool has(const char* key) const { return root_.contains(key) && !root_.at(key).is_null(); }

  int positive_int(const char* key) const {
    if (!has(key)) fail(std::string("missing required field \"") + key + "\"");
    const json& v = root_.at(key);
    if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 || v.get<std::int64_t>() > (1LL << 30))
      fail(std::string("field \"") + key + "\" must be a positive integer, got " + v.dump());
    return v.get<int>();
  }

  int positive_int_or(const char* key, int fallback) const { return has(key) ? positive_int(key) : fallback; }

  double number_or(const char* key, double fallback) const { return number_in(root_, key, fallback); }

  double number_in(const json& obj, const char* key, double fallback) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_number()) fail(std::string("field \"") + key + "\" must be a number, got " + obj.at(key).dump());
    const double v = obj.at(key).get<double>();
    if (!std::isfinite(v)) fail(std::string("field \"") + key + "\" must be a finite number, got " + obj.at(key).dump());
    return v;
  }

  // A float32 factor within (0, limit]: what the forward multiplies activations by.
  float positive_factor_or(const char* key, double fallback, double limit) const {
    const double v = number_or(key, fallback);
    if (!(v > 0.0 && v <= limit))
      fail(std::string("field \"") + key + "\" must be greater than 0 and at most " + json(limit).dump() + ", got " +
           json(v).dump());
    return static_cast<float>(v);
  }

  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!root_.at(key).is_string()) fail(std::string("field \"") + key + "\" must be a string");
    return root_.at(key).get<std::string>();
  }

  const json& root() const { return root_; }

 private:
  const json& root_;
  std::string source_;
};

std::vector<LayerKind> read_layer_kinds(const ConfigReader& r, CheckpointLayout layout, int num_layers) {
  std::vector<LayerKind> kinds;
  const char* key = layout == CheckpointLayout::Original ? "attn_type_list" : "layer_types";
  if (!r.has(key)) r.fail(std::string("missing required field \"") + key + "\"");
  const json& list = r.root().at(key);
  if (!list.is_array()) r.fail(std::string("field \"") + key + "\" must be a list");
  for (const json& v : list) {
    if (layout == CheckpointLayout::Original && v.is_number_integer() && (v == 0 || v == 1)) {
      kinds.push_back(v == 0 ? LayerKind::Lightning : LayerKind::Softmax);
    } else if (layout == CheckpointLayout::Native && v == "linear_attention") {
      kinds.push_back(LayerKind::Lightning);
    } else if (layout == CheckpointLayout::Native && v == "full_attention") {
      kinds.push_back(LayerKind::Softmax);
    } else {
      r.fail(std::string("unsupported entry ") + v.dump() + " in \"" + key + "\"");
    }
  }
  if (static_cast<int>(kinds.size()) != num_layers)
    r.fail(std::string("\"") + key + "\" has " + std::to_string(kinds.size()) +
           " entries but num_hidden_layers is " + std::to_string(num_layers));
  return kinds;
}

ResidualFactors read_factors(const ConfigReader& r, CheckpointLayout layout, const char* original_name,
                             const char* native_name) {
  // The released models' factors are DeepNorm's, a few units; a factor of thousands already
  // overflows the residual stream within a few layers.
  constexpr double kMaxFactor = 1000.0;
  ResidualFactors f;
  if (layout == CheckpointLayout::Original) {
    f.alpha = r.positive_factor_or((std::string("layernorm_") + original_name + "_alpha").c_str(), 1.0, kMaxFactor);
    f.beta = r.positive_factor_or((std::string("layernorm_") + original_name + "_beta").c_str(), 1.0, kMaxFactor);
  } else {
    f.alpha = r.positive_factor_or((std::string(native_name) + "_alpha_factor").c_str(), 1.0, kMaxFactor);
    f.beta = r.positive_factor_or((std::string(native_name) + "_beta_factor").c_str(), 1.0, kMaxFactor);
  }
  return f;
}

ModelConfig parse_text_config(const json& root, const std::string& source, bool rope_full_head);
ModelConfig parse_any_config(const json& root, const std::string& source, bool rope_full_head);

TokenId token_id_in_vocabulary(const ConfigReader& r, const json& id, int vocab_size) {
  if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() >= vocab_size)
    r.fail("eos_token_id " + id.dump() + " is outside the vocabulary (0.." + std::to_string(vocab_size - 1) + ")");
  return id.get<TokenId>();
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source, bool rope_full_head) {
  check_json_depth(json_text, source);
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(source + ": malformed JSON: " + plain_error_text(e.what()));
  }
  if (!root.is_object()) throw Error(source + ": malformed config: the top level is not an object");
  try {
    return parse_any_config(root, source, rope_full_head);
  } catch (const json::exception& e) {
    throw Error(source + ": malformed config: " + plain_error_text(e.what()));
  }
}

namespace {

ModelConfig parse_any_config(const json& root, const std::string& source, bool rope_full_head) {
  const json& type = root.value("model_type", json());
  if (!type.is_string() || parse_model_family(type.get<std::string>()) != ModelFamily::MiniMaxVL01)
    return parse_text_config(root, source, rope_full_head);

  // MiniMax-VL-01: the language model is the text_config (Text-01 fields), its weights under
  // "language_model.".
  if (!root.contains("text_config") || !root.at("text_config").is_object())
    throw Error(source + ": model_type minimax_vl_01 needs a \"text_config\" object");
  json text = root.at("text_config");
  if (!text.contains("model_type") || text.at("model_type").is_null()) text["model_type"] = "minimax_text_01";
  ModelConfig c = parse_text_config(text, source + " text_config", rope_full_head);
  if (c.family == ModelFamily::MiniMaxVL01) throw Error(source + ": a text_config cannot itself be minimax_vl_01");
  c.family = ModelFamily::MiniMaxVL01;
  c.model_type = model_type_name(c.family);
  const json& a = root.value("architectures", json::array());
  c.architecture = a.is_array() && !a.empty() && a.at(0).is_string() ? a.at(0).get<std::string>() : "";
  c.weight_prefix = "language_model.";
  if (c.torch_dtype.empty() && root.contains("torch_dtype") && root.at("torch_dtype").is_string())
    c.torch_dtype = root.at("torch_dtype").get<std::string>();
  if (!c.eos_token_id && root.contains("eos_token_id") && root.at("eos_token_id").is_number_integer())
    c.eos_token_id = token_id_in_vocabulary(ConfigReader(root, source), root.at("eos_token_id"), c.vocab_size);
  // The text_config's max_position_embeddings (8192 as released) only sizes the transformers
  // port's RoPE cache; a top-level max_position_embeddings, when present, is the model's context.
  if (root.contains("max_position_embeddings") && !root.at("max_position_embeddings").is_null())
    c.max_context = ConfigReader(root, source).positive_int("max_position_embeddings");
  return c;
}

ModelConfig parse_text_config(const json& root, const std::string& source, bool rope_full_head) {
  ConfigReader r(root, source);
  ModelConfig c;

  c.model_type = r.string_or("model_type", "");
  if (c.model_type.empty()) r.fail("missing required field \"model_type\"");
  const std::optional<ModelFamily> family = parse_model_family(c.model_type);
  // VL-01 only around a text_config (parse_model_config).
  if (!family || *family == ModelFamily::MiniMaxVL01)
    r.fail("unsupported model_type \"" + c.model_type + "\" (supported: " + supported_model_types() + ")");
  c.family = *family;
  c.layout = c.family == ModelFamily::MiniMaxNative ? CheckpointLayout::Native : CheckpointLayout::Original;
  if (r.has("architectures")) {
    const json& a = root.at("architectures");
    if (!a.is_array() || a.empty() || !a.at(0).is_string()) r.fail("field \"architectures\" must be a list of names");
    c.architecture = a.at(0).get<std::string>();
    static const char* kKnown[] = {"MiniMaxText01ForCausalLM", "MiniMaxM1ForCausalLM", "MiniMaxForCausalLM"};
    bool known = false;
    for (const char* k : kKnown) known = known || c.architecture == k;
    if (!known) r.fail("unsupported architecture \"" + c.architecture + "\"");
  }

  c.vocab_size = r.positive_int("vocab_size");
  c.hidden_size = r.positive_int("hidden_size");
  c.num_layers = r.positive_int("num_hidden_layers");
  c.num_heads = r.positive_int("num_attention_heads");
  c.num_kv_heads = r.positive_int_or("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_attention_heads (" + std::to_string(c.num_heads) + ") is not a multiple of num_key_value_heads (" +
           std::to_string(c.num_kv_heads) + ")");
  c.head_dim = r.positive_int_or("head_dim", c.hidden_size / c.num_heads);
  c.num_experts = r.has("num_local_experts") ? r.positive_int("num_local_experts") : r.positive_int("num_experts");
  c.experts_per_token = r.positive_int("num_experts_per_tok");
  if (c.experts_per_token > c.num_experts)
    r.fail("num_experts_per_tok (" + std::to_string(c.experts_per_token) + ") exceeds the number of experts (" +
           std::to_string(c.num_experts) + ")");
  c.expert_width = r.positive_int("intermediate_size");
  c.rms_norm_eps = r.positive_factor_or("rms_norm_eps", 1e-5, 1.0);
  c.max_context = r.positive_int_or("max_position_embeddings", 4096);
  c.layer_kinds = read_layer_kinds(r, c.layout, c.num_layers);
  c.linear_attention = read_factors(r, c.layout, "linear_attention", "linear_attn");
  c.full_attention = read_factors(r, c.layout, "full_attention", "full_attn");
  c.mlp = read_factors(r, c.layout, "mlp", "mlp");

  if (r.string_or("hidden_act", "silu") != "silu") r.fail("unsupported hidden_act \"" + r.string_or("hidden_act", "") + "\" (only silu)");
  if (r.has("postnorm") && root.at("postnorm") != true) r.fail("unsupported \"postnorm\": false (the released models use true)");
  if (r.number_or("shared_intermediate_size", 0) > 0) r.fail("unsupported \"shared_intermediate_size\" > 0 (shared experts)");
  if (r.has("sliding_window")) r.fail("unsupported \"sliding_window\" (only full causal attention)");
  if (r.has("tie_word_embeddings")) {
    if (!root.at("tie_word_embeddings").is_boolean()) r.fail("field \"tie_word_embeddings\" must be true or false");
    c.tie_word_embeddings = root.at("tie_word_embeddings").get<bool>();
  }
  c.torch_dtype = r.string_or("torch_dtype", "");

  // RoPE: theta and the rotated width, from either spelling.
  const json empty = json::object();
  const json& rope = r.has("rope_parameters") ? root.at("rope_parameters") : empty;
  if (!rope.is_object()) r.fail("field \"rope_parameters\" must be an object");
  if (rope.contains("rope_type") && rope.at("rope_type") != "default")
    r.fail("unsupported rope_type " + rope.at("rope_type").dump() + " (only default)");
  if (r.has("rope_scaling")) r.fail("unsupported \"rope_scaling\"");
  c.rope_theta = static_cast<float>(r.number_in(rope, "rope_theta", r.number_or("rope_theta", 10000.0)));
  if (!(c.rope_theta > 1.0f) || !std::isfinite(c.rope_theta)) r.fail("rope_theta must be greater than 1 and finite");
  double partial = r.number_in(rope, "partial_rotary_factor", r.number_or("partial_rotary_factor", -1.0));
  if (r.has("rotary_dim")) {
    const json& v = root.at("rotary_dim");
    // Checked as 64 bits before narrowing: 2^32 + 8 must not pass as 8.
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > c.head_dim)
      r.fail("field \"rotary_dim\" must be an integer from 0 to head_dim " + std::to_string(c.head_dim) + ", got " +
             v.dump());
    c.rotary_dim = v.get<int>();
  } else if (partial >= 0.0) {
    if (partial > 1.0) r.fail("partial_rotary_factor must be within [0, 1]");
    c.rotary_dim = static_cast<int>(partial * c.head_dim);
  } else {
    c.rotary_dim = c.head_dim;
  }
  if (c.rotary_dim > c.head_dim || c.rotary_dim % 2 != 0)
    r.fail("rotary_dim " + std::to_string(c.rotary_dim) + " must be even and at most head_dim " +
           std::to_string(c.head_dim));
  if (rope_full_head && c.rotary_dim > 0) {
    // Rotation works on pairs of channels, so the whole head must split into pairs.
    if (c.head_dim % 2 != 0)
      r.fail("head_dim " + std::to_string(c.head_dim) + " must be even to rotate the whole head");
    c.rotary_dim = c.head_dim;
  }

  if (r.has("eos_token_id")) {
    const json& e = root.at("eos_token_id");
    const json& first = e.is_array() && !e.empty() ? e.at(0) : e;
    if (first.is_number_integer()) c.eos_token_id = token_id_in_vocabulary(r, first, c.vocab_size);
  }
  return c;
}

}  // namespace

namespace {
constexpr ModelFamily kFamilies[] = {ModelFamily::MiniMaxText01, ModelFamily::MiniMaxM1, ModelFamily::MiniMaxNative,
                                     ModelFamily::MiniMaxVL01};
}  // namespace

std::optional<ModelFamily> parse_model_family(std::string_view model_type) {
  for (ModelFamily family : kFamilies)
    if (model_type == model_type_name(family)) return family;
  return std::nullopt;
}

const char* model_type_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::MiniMaxText01: return "minimax_text_01";
    case ModelFamily::MiniMaxM1: return "minimax_m1";
    case ModelFamily::MiniMaxNative: return "minimax";
    case ModelFamily::MiniMaxVL01: return "minimax_vl_01";
  }
  return "?";
}

std::string supported_model_types() {
  std::string names;
  for (ModelFamily family : kFamilies) names += (names.empty() ? "" : ", ") + std::string(model_type_name(family));
  return names;
}

ModelConfig load_model_config(const std::filesystem::path& directory, bool rope_full_head) {
  const std::filesystem::path path = directory / "config.json";
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": cannot open: no such file (is this a model directory?)");
  return parse_model_config(read_json_file(path), path.string(), rope_full_head);
}

ModelConfig first_layer_config(const ModelConfig& config) {
  ModelConfig first = config;
  first.num_layers = 1;
  first.layer_kinds.resize(1);
  return first;
}

}  // namespace lightdesk
