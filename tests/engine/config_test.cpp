// config.json in both layouts: fields, RoPE width rules, slopes, and refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "src/model_config.h"
#include "src/model_weights.h"
#include "test_util.h"

namespace lightdesk {
namespace {

using nlohmann::json;

json fixture_config(const std::string& fixture) {
  return json::parse(test::read_file(test::fixture_dir(fixture) / "config.json"));
}

ModelConfig parse(const json& j, bool rope_full_head = false) {
  return parse_model_config(j.dump(), "config.json", rope_full_head);
}

std::string error_of(const json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Config, BothLayoutsDescribeTheSameModel) {
  const ModelConfig hf = parse(fixture_config("tiny-a-hf"));
  const ModelConfig m1 = parse(fixture_config("tiny-a-m1-rd16"));
  EXPECT_EQ(hf.layout, CheckpointLayout::Native);
  EXPECT_EQ(m1.layout, CheckpointLayout::Original);
  EXPECT_EQ(hf.family, ModelFamily::MiniMaxNative);
  EXPECT_EQ(m1.family, ModelFamily::MiniMaxM1);
  for (const ModelConfig* c : {&hf, &m1}) {
    EXPECT_EQ(c->vocab_size, 512);
    EXPECT_EQ(c->hidden_size, 64);
    EXPECT_EQ(c->num_heads, 4);
    EXPECT_EQ(c->num_kv_heads, 2);
    EXPECT_EQ(c->head_dim, 16);
    EXPECT_EQ(c->rotary_dim, 16);
    EXPECT_EQ(c->layer_kinds, (std::vector<LayerKind>{LayerKind::Lightning, LayerKind::Lightning,
                                                      LayerKind::Lightning, LayerKind::Softmax}));
    EXPECT_FLOAT_EQ(c->linear_attention.alpha, 1.3f);
    EXPECT_FLOAT_EQ(c->linear_attention.beta, 1.1f);
    EXPECT_FLOAT_EQ(c->full_attention.alpha, 1.7f);
    EXPECT_FLOAT_EQ(c->full_attention.beta, 0.9f);
    EXPECT_FLOAT_EQ(c->mlp.alpha, 1.2f);
    EXPECT_FLOAT_EQ(c->mlp.beta, 0.8f);
    EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  }
}

TEST(Config, ModelTypesParseOnceIntoFamilies) {
  for (ModelFamily family : {ModelFamily::MiniMaxText01, ModelFamily::MiniMaxM1, ModelFamily::MiniMaxNative,
                             ModelFamily::MiniMaxVL01}) {
    EXPECT_EQ(parse_model_family(model_type_name(family)), family);
    EXPECT_NE(supported_model_types().find(model_type_name(family)), std::string::npos);
  }
  EXPECT_EQ(parse_model_family("llama"), std::nullopt);
  EXPECT_EQ(parse_model_family(""), std::nullopt);
  json j = fixture_config("tiny-a-m1-rd16");
  j["model_type"] = "minimax_vl_01";  // only around a text_config
  EXPECT_NE(error_of(j).find("text_config"), std::string::npos);
}

TEST(Config, RotaryWidthRules) {
  json j = fixture_config("tiny-a-m1-rd8");
  EXPECT_EQ(parse(j).rotary_dim, 8);
  EXPECT_EQ(parse(j, true).rotary_dim, 16);  // native transformers' whole-head compatibility
  j["rotary_dim"] = 0;
  EXPECT_EQ(parse(j).rotary_dim, 0);
  EXPECT_EQ(parse(j, true).rotary_dim, 0);
  j.erase("rotary_dim");
  EXPECT_EQ(parse(j).rotary_dim, 16);  // neither field: the whole head
  j["partial_rotary_factor"] = 0.5;
  EXPECT_EQ(parse(j).rotary_dim, 8);
  json hf = fixture_config("tiny-a-hf");
  hf["rope_parameters"]["partial_rotary_factor"] = 0.25;
  EXPECT_EQ(parse(hf).rotary_dim, 4);
  hf["rotary_dim"] = 8;  // an explicit rotary_dim wins, in either layout
  EXPECT_EQ(parse(hf).rotary_dim, 8);

  // Heads of odd width: a partial rotation of even width is fine, a whole-head one is refused.
  json odd = fixture_config("tiny-a-m1-rd8");
  odd["head_dim"] = 15;
  EXPECT_EQ(parse(odd).rotary_dim, 8);
  try {
    parse(odd, true);
    ADD_FAILURE() << "an odd head rotated whole was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 15 must be even"), std::string::npos) << e.what();
  }
}

TEST(Config, RefusesWhatItDoesNotSupport) {
  const json base = fixture_config("tiny-a-m1-rd8");
  auto with = [&](const char* key, json value) {
    json j = base;
    j[key] = std::move(value);
    return error_of(j);
  };
  EXPECT_NE(with("shared_intermediate_size", 128).find("shared_intermediate_size"), std::string::npos);
  EXPECT_NE(with("postnorm", false).find("postnorm"), std::string::npos);
  EXPECT_NE(with("model_type", "llama").find("unsupported model_type \"llama\""), std::string::npos);
  EXPECT_NE(with("hidden_act", "gelu").find("hidden_act"), std::string::npos);
  EXPECT_NE(with("attn_type_list", json::array({0, 1})).find("has 2 entries but num_hidden_layers is 4"),
            std::string::npos);
  EXPECT_NE(with("attn_type_list", json::array({0, 0, 2, 1})).find("attn_type_list"), std::string::npos);
  EXPECT_NE(with("rotary_dim", 17).find("rotary_dim"), std::string::npos);
  EXPECT_NE(with("num_key_value_heads", 3).find("num_key_value_heads"), std::string::npos);
  EXPECT_NE(with("hidden_size", "64").find("\"hidden_size\" must be a positive integer"), std::string::npos);
  json missing = base;
  missing.erase("vocab_size");
  EXPECT_NE(error_of(missing).find("missing required field \"vocab_size\""), std::string::npos);
  try {
    parse_model_config("{\"model_type\": \"minimax_m1\",", "dir/config.json", false);
    FAIL() << "malformed JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dir/config.json: malformed JSON"), std::string::npos) << e.what();
  }
}

// nlohmann reports a number too large for a double as out_of_range, not as a parse error.
TEST(Config, ANumberPastDoubleRangeIsMalformedJson) {
  try {
    parse_model_config("{\"model_type\": \"minimax_m1\", \"rms_norm_eps\": 1e505}", "dir/config.json", false);
    FAIL() << "a number out of range accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dir/config.json: malformed JSON"), std::string::npos) << e.what();
  }
}

// Numbers the forward multiplies or divides by, and integers narrowed to int: checked in range
// before use (2^32 + 8 passed as 8, a negative eps or an alpha of 1e39 gave all-NaN logits).
TEST(Config, OutOfRangeNumbersAreRefused) {
  const json base = fixture_config("tiny-a-m1-rd8");
  auto with = [&](const char* key, const json& value) {
    json j = base;
    j[key] = value;
    return error_of(j);
  };
  EXPECT_NE(with("rotary_dim", 4294967304LL).find("\"rotary_dim\" must be an integer from 0 to head_dim"),
            std::string::npos);
  EXPECT_NE(with("rms_norm_eps", -1e-5).find("\"rms_norm_eps\" must be greater than 0"), std::string::npos);
  EXPECT_NE(with("rms_norm_eps", 0).find("\"rms_norm_eps\" must be greater than 0"), std::string::npos);
  EXPECT_NE(with("layernorm_full_attention_alpha", 1e39).find("\"layernorm_full_attention_alpha\" must be"),
            std::string::npos);
  EXPECT_NE(with("layernorm_mlp_beta", -2).find("\"layernorm_mlp_beta\" must be"), std::string::npos);
  EXPECT_NE(with("rope_theta", 1e39).find("rope_theta must be greater than 1 and finite"), std::string::npos);
  EXPECT_NE(with("eos_token_id", 4294967297LL).find("eos_token_id 4294967297 is outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(with("eos_token_id", -1).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(with("vocab_size", 4294967808LL).find("\"vocab_size\" must be a positive integer"), std::string::npos);
  EXPECT_NE(with("max_position_embeddings", 1e300).find("max_position_embeddings"), std::string::npos);
  EXPECT_NE(with("num_hidden_layers", "3").find("\"num_hidden_layers\" must be a positive integer"),
            std::string::npos);
  // The released factors (DeepNorm's, a few units) still pass.
  json released = base;
  released["layernorm_full_attention_alpha"] = 3.5676;
  released["rms_norm_eps"] = 1e-6;
  EXPECT_EQ(error_of(released), "(no error)");
}

// Fields of the wrong JSON type give one line naming the file, not the JSON library's text.
TEST(Config, WrongTypesGiveOneLineNamingTheFile) {
  json j = fixture_config("tiny-a-m1-rd8");
  j["rope_parameters"] = {{"rope_type", 5}};
  std::string e = error_of(j);
  EXPECT_EQ(e.find("[json.exception"), std::string::npos) << e;
  EXPECT_EQ(e.rfind("config.json: ", 0), 0u) << e;
  j = fixture_config("tiny-a-m1-rd8");
  j["architectures"] = {5};
  e = error_of(j);
  EXPECT_EQ(e.find("[json.exception"), std::string::npos) << e;
}

// VL-01: the text_config's max_position_embeddings only sizes a RoPE cache; a top-level one is
// the model's context.
TEST(Config, Vl01ContextIsTheTopLevelFieldWhenPresent) {
  json j = json::parse(test::read_file(test::fixture_dir("tiny-vl") / "config.json"));
  EXPECT_EQ(parse(j).max_context, j["text_config"]["max_position_embeddings"].get<std::int64_t>());
  j["max_position_embeddings"] = 1000000;
  EXPECT_EQ(parse(j).max_context, 1000000);
}

float from_hex(const char* text) { return std::strtof(text, nullptr); }

// 64 heads, 80 layers: values dumped from transformers 5.17 (minimax-model.md §5.3).
TEST(Slopes, NativeLayoutMatchesTransformersBitForBit) {
  ModelConfig c;
  c.layout = CheckpointLayout::Native;
  c.num_heads = 64;
  c.num_layers = 80;
  const auto l0 = lightning_slopes(c, 0);
  EXPECT_EQ(l0[0], from_hex("0x1.d582c2p-1"));
  EXPECT_EQ(l0[1], from_hex("0x1.ae8b14p-1"));
  EXPECT_EQ(l0[2], from_hex("0x1.8acf58p-1"));
  EXPECT_EQ(l0[63], from_hex("0x1.0000aep-8"));
  const auto l40 = lightning_slopes(c, 40);
  EXPECT_EQ(l40[0], from_hex("0x1.cf928ap-2"));
  EXPECT_EQ(l40[1], from_hex("0x1.a91908p-2"));
  EXPECT_EQ(l40[2], from_hex("0x1.85d0fep-2"));
  EXPECT_EQ(l40[63], from_hex("0x1.f9878cp-10"));
}

TEST(Slopes, OriginalLayoutInterpolatesAlibiForHeadCountsThatAreNotPowersOfTwo) {
  ModelConfig c;
  c.layout = CheckpointLayout::Original;
  c.num_heads = 6;
  c.num_layers = 3;
  // get_slopes(6) = slopes(4) + slopes(8)[0::2][:2]; layer 0 factor 1 + 1e-5.
  const double expected[] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  const auto s = lightning_slopes(c, 0);
  const float factor = static_cast<float>(1.0 + 1e-5);
  for (int h = 0; h < 6; ++h) EXPECT_EQ(s[h], static_cast<float>(expected[h]) * factor) << "head " << h;
  // Layer 1 of 3: factor 1 - 1/2 + 1e-5.
  EXPECT_EQ(lightning_slopes(c, 1)[0], 0.25f * static_cast<float>(0.5 + 1e-5));
  c.layout = CheckpointLayout::Native;  // native keeps base^(h+1) with base 2^(-8/6)
  EXPECT_NEAR(lightning_slopes(c, 0)[4], std::pow(2.0, -8.0 * 5 / 6) * (1 + 1e-5), 1e-7);
}

}  // namespace
}  // namespace lightdesk
