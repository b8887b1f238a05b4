// VisionConfig from a VL-01 checkpoint's config.json and preprocessor_config.json.
#include <cmath>
#include <nlohmann/json.hpp>

#include "lightdesk/input_files.h"
#include "lightdesk/vision.h"

namespace lightdesk::vision {
namespace {

using nlohmann::json;

json read_json(const std::filesystem::path& path) {
  const std::string text = read_json_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path.string() + ": malformed JSON: " + plain_error_text(e.what()));
  }
  if (!j.is_object()) throw Error(path.string() + ": the top level is not an object");
  return j;
}

constexpr std::int64_t kMaxPinpointSide = 8192;

class Fields {
 public:
  Fields(const json& object, std::string where) : object_(object), where_(std::move(where)) {}
  [[noreturn]] void fail(const std::string& what) const { throw Error(where_ + ": " + what); }
  bool has(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }
  const json& at(const char* key) const {
    if (!has(key)) fail(std::string("missing required field \"") + key + "\"");
    return object_.at(key);
  }
  int positive_int(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 || v.get<std::int64_t>() > (1 << 24))
      fail(std::string("field \"") + key + "\" must be a positive integer, got " + v.dump());
    return v.get<int>();
  }
  int int_or(const char* key, int fallback) const {
    if (!has(key)) return fallback;
    // Range-checked as 64 bits: 2^32 - 1 must not pass as -1.
    const json& v = at(key);
    if (!v.is_number_integer() || v.get<std::int64_t>() < -(1 << 30) || v.get<std::int64_t>() > (1 << 30))
      fail(std::string("field \"") + key + "\" must be an integer of at most 2^30 in size, got " + v.dump());
    return v.get<int>();
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_number() || !std::isfinite(at(key).get<double>()))
      fail(std::string("field \"") + key + "\" must be a finite number");
    return at(key).get<double>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_string()) fail(std::string("field \"") + key + "\" must be a string");
    return at(key).get<std::string>();
  }
  Fields object(const char* key) const {
    if (!at(key).is_object()) fail(std::string("field \"") + key + "\" must be an object");
    return Fields(at(key), where_ + " " + key);
  }
  // Entries [a, b], read as (width, height) like the original processor.
  std::vector<Resolution> pinpoints(const char* key) const {
    std::vector<Resolution> list;
    if (!at(key).is_array()) fail(std::string("field \"") + key + "\" must be a list of [a, b] pairs");
    for (const json& e : at(key)) {
      // A side beyond kMaxPinpointSide would cut an image into thousands of tiles.
      if (!e.is_array() || e.size() != 2 || !e[0].is_number_integer() || !e[1].is_number_integer() ||
          e[0].get<std::int64_t>() <= 0 || e[1].get<std::int64_t>() <= 0 || e[0].get<std::int64_t>() > kMaxPinpointSide ||
          e[1].get<std::int64_t>() > kMaxPinpointSide)
        fail(std::string("bad entry ") + e.dump() + " in \"" + key + "\"");
      list.push_back({e[0].get<int>(), e[1].get<int>()});
    }
    if (list.empty()) fail(std::string("field \"") + key + "\" is empty");
    return list;
  }
  std::array<float, 3> triple(const char* key) const {
    const json& v = at(key);
    if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number())
      fail(std::string("field \"") + key + "\" must be a list of 3 numbers");
    const std::array<float, 3> values{v[0].get<float>(), v[1].get<float>(), v[2].get<float>()};
    for (float x : values)
      if (!std::isfinite(x) || std::fabs(x) > 1e6f) fail(std::string("field \"") + key + "\" holds " + v.dump());
    return values;
  }

 private:
  const json& object_;
  std::string where_;
};

// The 28 resolutions released with MiniMax-VL-01, used when no config lists them.
std::vector<Resolution> released_pinpoints() {
  std::vector<Resolution> list;
  for (int a = 336; a <= 2016; a += 336)
    for (int b = 336; b <= 2016; b += 336)
      if (std::min(a, b) <= 1008 || (a == 1344 && b == 1344)) list.push_back({a, b});
  return list;
}

}  // namespace

VisionConfig load_vision_config(const std::filesystem::path& directory) {
  const std::filesystem::path path = directory / "config.json";
  const json root = read_json(path);
  const Fields top(root, path.string());
  if (parse_model_family(top.string_or("model_type", "")) != ModelFamily::MiniMaxVL01)
    top.fail("model_type is \"" + top.string_or("model_type", "") + "\", images need \"" +
             model_type_name(ModelFamily::MiniMaxVL01) + "\"");
  const Fields vision = top.object("vision_config");
  VisionConfig c;
  c.hidden_size = vision.positive_int("hidden_size");
  c.intermediate_size = vision.positive_int("intermediate_size");
  c.num_layers = vision.positive_int("num_hidden_layers");
  c.num_heads = vision.positive_int("num_attention_heads");
  c.patch_size = vision.positive_int("patch_size");
  c.image_size = vision.positive_int("image_size");
  c.layer_norm_eps = static_cast<float>(vision.number_or("layer_norm_eps", 1e-5));
  if (!(c.layer_norm_eps > 0.0f && c.layer_norm_eps <= 1.0f))
    vision.fail("layer_norm_eps must be greater than 0 and at most 1");
  if (c.hidden_size % c.num_heads != 0) vision.fail("hidden_size is not a multiple of num_attention_heads");
  if (c.image_size % c.patch_size != 0) vision.fail("image_size is not a multiple of patch_size");
  if (vision.int_or("num_channels", 3) != 3) vision.fail("num_channels must be 3");
  if (vision.string_or("hidden_act", "gelu") != "gelu")
    vision.fail("unsupported hidden_act \"" + vision.string_or("hidden_act", "") + "\" (only exact gelu)");
  if (top.string_or("projector_hidden_act", "gelu") != "gelu")
    top.fail("unsupported projector_hidden_act \"" + top.string_or("projector_hidden_act", "") + "\"");
  if (top.string_or("vision_feature_select_strategy", "default") != "default")
    top.fail("unsupported vision_feature_select_strategy (only \"default\": CLS dropped)");
  c.feature_layer = top.int_or("vision_feature_layer", -1);
  if (c.feature_layer < -(c.num_layers + 1) || c.feature_layer > c.num_layers)
    top.fail("vision_feature_layer " + std::to_string(c.feature_layer) + " is outside the " +
             std::to_string(c.num_layers) + " layers");
  c.text_hidden_size = top.object("text_config").positive_int("hidden_size");
  c.image_token_id = top.int_or("image_token_index", 200025);

  c.anyres.tile_size = c.image_size;
  c.anyres.patch_size = c.patch_size;
  c.anyres.pinpoints = top.has("image_grid_pinpoints") ? top.pinpoints("image_grid_pinpoints") : released_pinpoints();
  const std::filesystem::path pre_path = directory / "preprocessor_config.json";
  if (std::filesystem::exists(pre_path)) {
    const json pre_root = read_json(pre_path);
    const Fields pre(pre_root, pre_path.string());
    if (pre.string_or("process_image_mode", "anyres") != "anyres")
      pre.fail("unsupported process_image_mode \"" + pre.string_or("process_image_mode", "") + "\" (only anyres)");
    if (pre.has("image_grid_pinpoints")) c.anyres.pinpoints = pre.pinpoints("image_grid_pinpoints");
    if (pre.has("image_mean")) c.anyres.mean = pre.triple("image_mean");
    if (pre.has("image_std")) c.anyres.std = pre.triple("image_std");
    for (float s : c.anyres.std)
      if (!(s > 0.0f)) pre.fail("image_std must be greater than 0 (pixels are divided by it)");
  }
  return c;
}

}  // namespace lightdesk::vision
