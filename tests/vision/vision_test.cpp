// MiniMax-VL-01's image path against the references of tests/data/tiny-vl (made by
// tools/make_vl_fixture.py with Pillow, transformers' CLIPVisionModel and torch).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <regex>

#include "lightdesk/text.h"
#include "lightdesk/vision.h"
#include "src/model_config.h"
#include "lightdesk/safetensors.h"
#include "test_util.h"

namespace lightdesk {
namespace {

using vision::Image;

std::filesystem::path vl_dir() { return test::fixture_dir("tiny-vl"); }
std::filesystem::path image_path(const std::string& name) { return vl_dir() / "images" / name; }
// The float32 CPU tower, whatever devices the machine has (tests/cuda checks the CUDA tower).
ModelOptions cpu_options() { return {.backend = BackendKind::Cpu, .threads = 2}; }

const std::map<std::string, LoadedTensor>& references() {
  static const auto refs = read_safetensors(vl_dir() / "references.safetensors");
  return refs;
}

// The reference tiles: one PNG of the tiles stacked top to bottom, thumbnail first.
std::vector<Image> reference_tiles(const std::string& name) {
  const Image stacked = vision::decode_image_file(image_path(name + ".tiles.png"));
  EXPECT_EQ(stacked.channels, 3);
  std::vector<Image> tiles;
  const std::size_t tile_bytes = static_cast<std::size_t>(stacked.width) * stacked.width * 3;
  for (int t = 0; t < stacked.height / stacked.width; ++t)
    tiles.push_back({stacked.width, stacked.width, 3,
                     std::vector<std::uint8_t>(stacked.pixels.begin() + static_cast<std::ptrdiff_t>(t * tile_bytes),
                                               stacked.pixels.begin() + static_cast<std::ptrdiff_t>((t + 1) * tile_bytes))});
  return tiles;
}

const std::vector<std::string>& reference_images() {
  static const std::vector<std::string> names = {"gradient", "text_wide", "tall_gray", "alpha", "tiny", "rings", "receipt"};
  return names;
}

class VisionReference : public ::testing::TestWithParam<std::string> {};

TEST_P(VisionReference, PreprocessingMatchesPillowPipeline) {
  const std::string name = GetParam();
  const vision::VisionConfig config = vision::load_vision_config(vl_dir());
  const vision::PreparedImage prepared = vision::prepare_image(vision::decode_image_file(image_path(name + ".png")), config.anyres);
  const LoadedTensor& grid = references().at(name + ".grid");
  EXPECT_EQ(prepared.grid_rows, grid.i64.at(0));
  EXPECT_EQ(prepared.grid_columns, grid.i64.at(1));
  EXPECT_EQ(prepared.token_count, references().at(name + ".token_count").i64.at(0));

  const std::vector<Image> expected = reference_tiles(name);
  ASSERT_EQ(prepared.tiles.size(), expected.size());
  std::int64_t differing = 0, total = 0;
  int worst = 0;
  for (std::size_t t = 0; t < expected.size(); ++t) {
    ASSERT_EQ(prepared.tiles[t].pixels.size(), expected[t].pixels.size());
    for (std::size_t i = 0; i < expected[t].pixels.size(); ++i) {
      const int d = std::abs(int{prepared.tiles[t].pixels[i]} - int{expected[t].pixels[i]});
      differing += d != 0;
      worst = std::max(worst, d);
      ++total;
    }
  }
  EXPECT_LE(worst, 1) << name;
  EXPECT_LE(static_cast<double>(differing), 1e-3 * static_cast<double>(total)) << name;

  // The normalised values: those of the reference's pixels, within one level where they differ.
  const std::vector<float> from_reference = vision::normalize_tiles(expected, config.anyres);
  EXPECT_LE(test::max_abs_diff(prepared.pixel_values, from_reference), 1.0 / 255.0 / 0.26 + 1e-5);
}

TEST_P(VisionReference, FeaturesMatchReference) {
  const std::string name = GetParam();
  const auto model = vision::VisionModel::open(vl_dir(), cpu_options());
  const vision::VisionConfig& config = model->config();
  // Built from the reference tiles, so this checks the tower, projector and packing alone.
  const Image source = vision::decode_image_file(image_path(name + ".png"));
  vision::PreparedImage image;
  image.width = source.width;
  image.height = source.height;
  image.grid_rows = static_cast<int>(references().at(name + ".grid").i64.at(0));
  image.grid_columns = static_cast<int>(references().at(name + ".grid").i64.at(1));
  image.tiles = reference_tiles(name);
  image.pixel_values = vision::normalize_tiles(image.tiles, config.anyres);
  image.feature_grid = vision::unpadded_feature_grid(image.width, image.height, image.grid_rows, image.grid_columns,
                                                     config.patches_per_side());
  image.token_count = 576 + std::int64_t{image.feature_grid.rows} * (image.feature_grid.columns + 1);
  const LoadedTensor& expected = references().at(name + ".features");
  ASSERT_EQ(expected.shape, (std::vector<std::int64_t>{image.token_count, config.text_hidden_size}));
  const std::vector<float> features = model->image_embeddings(image);
  EXPECT_LT(test::max_abs_diff(features, expected.f32), 1e-4) << name;
}

INSTANTIATE_TEST_SUITE_P(Images, VisionReference, ::testing::ValuesIn(reference_images()));

TEST(VisionConfig, ReadsTheCheckpoint) {
  const vision::VisionConfig c = vision::load_vision_config(vl_dir());
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.patches_per_side(), 24);
  EXPECT_EQ(c.text_hidden_size, 64);
  EXPECT_EQ(c.image_token_id, 5);  // the tokenizer's "<image>"
  EXPECT_EQ(c.feature_layer, -1);
  EXPECT_EQ(c.anyres.pinpoints.size(), 28u);
}

TEST(Decode, FifoOrDeviceInPlaceOfAnImageIsRefused) {
  test::ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir.path() / "cat.png").c_str(), 0600), 0);
  std::filesystem::create_symlink("/dev/zero", dir.path() / "zero.png");
  for (const char* name : {"cat.png", "zero.png"}) {
    try {
      vision::decode_image_file(dir.path() / name);
      FAIL() << name << " was read";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(name) + ": a "), std::string::npos) << e.what();
    }
  }
}

// Numbers from config.json checked in range before narrowing or dividing by them.
TEST(VisionConfig, RefusesOutOfRangeFields) {
  const std::string original = test::read_file(test::fixture_dir("tiny-vl") / "config.json");
  auto error_with = [&](const std::string& pointer, const nlohmann::json& value) {
    test::ScratchDir dir;
    auto config = nlohmann::json::parse(original);
    config[nlohmann::json::json_pointer(pointer)] = value;
    test::write_file(dir.path() / "config.json", config.dump());
    try {
      vision::load_vision_config(dir.path());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error_with("/vision_feature_layer", 4294967295LL).find("vision_feature_layer"), std::string::npos);
  EXPECT_NE(error_with("/image_grid_pinpoints", {{4294967632LL, 336}}).find("bad entry"), std::string::npos);
  EXPECT_NE(error_with("/image_grid_pinpoints", {{1000000, 1000000}}).find("bad entry"), std::string::npos);
  EXPECT_NE(error_with("/vision_config/layer_norm_eps", -1).find("layer_norm_eps must be greater than 0"),
            std::string::npos);
}

TEST(Anyres, TokenCountsOfTheModelNotes) {
  // A 336x336 image: one tile, 576 + 24 * 25 tokens.
  const std::vector<vision::Resolution> pinpoints = vision::load_vision_config(vl_dir()).anyres.pinpoints;
  const vision::Resolution best = vision::select_best_resolution(336, 336, pinpoints);
  EXPECT_EQ(best.width, 336);
  EXPECT_EQ(best.height, 336);
  const vision::FeatureGrid square = vision::unpadded_feature_grid(336, 336, 1, 1, 24);
  EXPECT_EQ(square.rows, 24);
  EXPECT_EQ(square.columns, 24);
  // A wide image keeps every column and crops the padding rows: 1000x300 in a 1x3 grid keeps
  // 300 * 72 / 1000 = 21 rows, padded to an odd count 72 - 2 * ((24 - 21) / 2) ... of 24.
  const vision::FeatureGrid wide = vision::unpadded_feature_grid(1000, 300, 1, 3, 24);
  EXPECT_EQ(wide.columns, 72);
  EXPECT_EQ(wide.rows, 24 - 2 * ((24 - 21) / 2));
  // 2016x2016 picks [1344, 1344] (the largest square): 16 tiles.
  const vision::Resolution big = vision::select_best_resolution(2016, 2016, pinpoints);
  EXPECT_EQ(big.width, 1344);
  EXPECT_EQ(big.height, 1344);
}

TEST(Resample, IdentityAndConstantImages) {
  Image flat{9, 7, 3, std::vector<std::uint8_t>(9 * 7 * 3, 77)};
  const Image same = vision::resize_bicubic(flat, 9, 7);
  EXPECT_EQ(same.pixels, flat.pixels);
  const Image up = vision::resize_bicubic(flat, 40, 3);
  EXPECT_EQ(up.pixels, std::vector<std::uint8_t>(40 * 3 * 3, 77));  // weights sum to one
  EXPECT_THROW(vision::resize_bicubic(flat, 0, 3), Error);
}

// --- Decoding ---------------------------------------------------------------------------------

Image rotate_clockwise(const Image& in) {
  Image out{in.height, in.width, in.channels, std::vector<std::uint8_t>(in.pixels.size())};
  for (int y = 0; y < in.height; ++y)
    for (int x = 0; x < in.width; ++x)
      for (int c = 0; c < in.channels; ++c)
        out.pixels[(static_cast<std::size_t>(x) * out.width + (in.height - 1 - y)) * in.channels + c] =
            in.pixels[(static_cast<std::size_t>(y) * in.width + x) * in.channels + c];
  return out;
}

double mean_abs_diff(const Image& a, const Image& b) {
  double sum = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i) sum += std::abs(int{a.pixels[i]} - int{b.pixels[i]});
  return sum / static_cast<double>(a.pixels.size());
}

TEST(Decode, FormatsGiveThePixelsOfThePng) {
  const Image base = vision::decode_image_file(image_path("decode-base.png"));
  ASSERT_EQ(base.width, 64);
  ASSERT_EQ(base.height, 48);
  ASSERT_EQ(base.channels, 3);
  EXPECT_EQ(vision::decode_image_file(image_path("decode-lossless.webp")).pixels, base.pixels);
  EXPECT_EQ(vision::decode_image_file(image_path("decode-plain.tiff")).pixels, base.pixels);
  const Image jpeg = vision::decode_image_file(image_path("decode-quality95.jpg"));
  ASSERT_EQ(jpeg.pixels.size(), base.pixels.size());
  EXPECT_LT(mean_abs_diff(jpeg, base), 4.0);
}

TEST(Decode, AppliesExifOrientation) {
  const Image expected = rotate_clockwise(vision::decode_image_file(image_path("decode-base.png")));
  for (const char* lossless : {"decode-orient6.png", "decode-orient6.tiff"}) {
    const Image turned = vision::decode_image_file(image_path(lossless));
    EXPECT_EQ(turned.width, 48) << lossless;
    EXPECT_EQ(turned.pixels, expected.pixels) << lossless;
  }
  const Image jpeg = vision::decode_image_file(image_path("decode-orient6.jpg"));
  ASSERT_EQ(jpeg.width, 48);
  ASSERT_EQ(jpeg.height, 64);
  EXPECT_LT(mean_abs_diff(jpeg, expected), 4.0);
}

TEST(Decode, GrayPaletteAndAlpha) {
  const Image palette = vision::decode_image_file(image_path("decode-palette.png"));
  EXPECT_EQ(palette.channels, 3);
  EXPECT_EQ(palette.pixels, vision::decode_image_file(image_path("decode-palette-rgb.png")).pixels);
  EXPECT_EQ(vision::decode_image_file(image_path("decode-gray.png")).channels, 1);
  const Image gray_alpha = vision::decode_image_file(image_path("decode-gray-alpha.png"));
  ASSERT_EQ(gray_alpha.channels, 4);
  EXPECT_EQ(gray_alpha.pixels[0], gray_alpha.pixels[1]);
  EXPECT_EQ(gray_alpha.pixels[1], gray_alpha.pixels[2]);
  EXPECT_EQ(vision::decode_image_file(image_path("alpha.png")).channels, 4);
}

std::vector<std::uint8_t> file_bytes(const std::string& name) {
  const std::string text = test::read_file(image_path(name));
  return {text.begin(), text.end()};
}

void expect_error(std::span<const std::uint8_t> bytes, const std::string& needle) {
  try {
    vision::decode_image(bytes, "bad-image");
    ADD_FAILURE() << "no error, expected one mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad-image"), std::string::npos) << e.what();
  }
}

// A PNG signature and IHDR announcing width x height; nothing else.
std::vector<std::uint8_t> png_header(std::uint32_t width, std::uint32_t height) {
  std::vector<std::uint8_t> b = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  for (std::uint32_t v : {width, height})
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
  b.insert(b.end(), {8, 2, 0, 0, 0, 0, 0, 0, 0});  // RGB 8-bit, then a CRC
  return b;
}

TEST(Decode, BadImagesGiveClearErrors) {
  expect_error({}, "empty");
  const std::vector<std::uint8_t> garbage = {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!'};
  expect_error(garbage, "not a PNG, JPEG, WebP or TIFF");
  expect_error(png_header(0, 100), "zero image size");
  // A decompression bomb: the header alone is refused, before any pixel memory.
  expect_error(png_header(100000, 100000), "exceeds the limit");
  for (const char* name : {"rings.png", "decode-quality95.jpg", "decode-lossless.webp", "decode-plain.tiff"}) {
    std::vector<std::uint8_t> bytes = file_bytes(name);
    bytes.resize(bytes.size() / 2);
    EXPECT_THROW(vision::decode_image(bytes, name), Error) << name << " truncated";
    bytes.resize(20);
    EXPECT_THROW(vision::decode_image(bytes, name), Error) << name << " cut in the header";
  }
  vision::DecodeLimits small;
  small.max_pixels = 1000;
  EXPECT_THROW(vision::decode_image_file(image_path("rings.png"), small), Error);
  EXPECT_THROW(vision::decode_image_file(image_path("missing.png")), Error);
}

// --- The language model side ------------------------------------------------------------------

TEST(VisionSession, VlDirectoryLoadsTheTextModel) {
  // tiny-vl's language model is tiny-a-m1-rd8's weights under "language_model.".
  const auto golden = test::load_golden("tiny-a-m1-rd8");
  const std::vector<TokenId> ids = test::ids_of(golden.at("prefill.input_ids"));
  auto model = Model::open(vl_dir(), ModelOptions{BackendKind::Cpu, 2, false});
  EXPECT_EQ(model->info().model_type, "minimax_vl_01");
  auto session = model->create_session();
  FeedOptions options;
  options.all_logits = true;
  session->feed(ids, options);
  EXPECT_LT(test::max_abs_diff(session->logits(), golden.at("prefill.logits").f32), 1e-4);
}

TEST(VisionSession, VlConfigNeedsTextConfig) {
  EXPECT_THROW(parse_model_config(R"({"model_type": "minimax_vl_01"})", "config.json", false), Error);
  const ModelConfig c = parse_model_config(test::read_file(vl_dir() / "config.json"), "config.json", false);
  EXPECT_EQ(c.weight_prefix, "language_model.");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.rotary_dim, 8);
}

TEST(VisionSession, EmbeddingOverridesReplaceTokenRows) {
  const std::map<std::string, LoadedTensor> text = read_safetensors(test::fixture_dir("tiny-a-m1-rd8") / "model.safetensors");
  const std::vector<float>& embed = text.at("model.embed_tokens.weight").f32;
  auto model = Model::open(vl_dir(), ModelOptions{BackendKind::Cpu, 2, false});
  const int H = model->info().hidden_size;
  const std::vector<TokenId> plain = {5, 17, 42, 99, 7, 300};
  FeedOptions all;
  all.all_logits = true;
  auto reference = model->create_session();
  reference->feed(plain, all);

  // The placeholder token with the embedding rows of the plain tokens gives the plain logits,
  // also when the feed is cut into chunks.
  const std::vector<TokenId> with_placeholders = {5, 500, 500, 99, 500, 300};
  std::vector<const float*> overrides(plain.size(), nullptr);
  for (std::size_t i : {1u, 2u, 4u}) overrides[i] = embed.data() + static_cast<std::ptrdiff_t>(plain[i]) * H;
  FeedOptions chunked = all;
  chunked.chunk_tokens = 4;
  chunked.embedding_overrides = overrides;
  auto session = model->create_session();
  session->feed(with_placeholders, chunked);
  EXPECT_LT(test::max_abs_diff(session->logits(), reference->logits()), 1e-5);

  // Without the overrides the placeholders' own rows give other logits.
  auto plain_placeholders = model->create_session();
  plain_placeholders->feed(with_placeholders, all);
  EXPECT_GT(test::max_abs_diff(plain_placeholders->logits(), reference->logits()), 1e-3);

  FeedOptions wrong = all;
  wrong.embedding_overrides = std::span(overrides).first(3);
  EXPECT_THROW(model->create_session()->feed(with_placeholders, wrong), Error);
}

TEST(VisionSession, ImageFeaturesFeedThroughPlaceholders) {
  const auto vision_model = vision::VisionModel::open(vl_dir(), cpu_options());
  const vision::VisionConfig& c = vision_model->config();
  const vision::PreparedImage image =
      vision::prepare_image(vision::decode_image_file(image_path("tiny.png")), c.anyres);
  const std::vector<std::vector<float>> images = {vision_model->image_embeddings(image)};
  const std::vector<TokenId> prompt = {6, 17, c.image_token_id, 42};
  const vision::MultimodalInput input = vision::expand_image_placeholders(prompt, c.image_token_id, images, c.text_hidden_size);
  ASSERT_EQ(static_cast<std::int64_t>(input.tokens.size()), 3 + image.token_count);
  EXPECT_EQ(input.embedding_overrides[2], images[0].data());
  EXPECT_EQ(input.embedding_overrides.back(), nullptr);

  auto model = Model::open(vl_dir(), ModelOptions{BackendKind::Cpu, 2, false});
  FeedOptions options;
  options.embedding_overrides = input.embedding_overrides;
  auto session = model->create_session();
  session->feed(input.tokens, options);
  for (float v : session->logits()) ASSERT_TRUE(std::isfinite(v));

  EXPECT_THROW(vision::expand_image_placeholders(prompt, c.image_token_id, {}, c.text_hidden_size), Error);
  const std::vector<TokenId> two = {c.image_token_id, c.image_token_id};
  EXPECT_THROW(vision::expand_image_placeholders(two, c.image_token_id, images, c.text_hidden_size), Error);
}

// --- lightdesk-cli image-features (a contract) ------------------------------------------------

TEST(VisionCli, ImageFeaturesWritesTheContractTensors) {
  const test::ScratchDir scratch;
  const auto out = scratch.path() / "features.safetensors";
  const std::string command = std::string("'") + LIGHTDESK_CLI + "' image-features --model '" + vl_dir().string() +
                              "' --image '" + image_path("text_wide.png").string() + "' --out '" + out.string() +
                              "' --backend cpu 2>" + (scratch.path() / "err").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_file(scratch.path() / "err");
  const auto written = read_safetensors(out);
  const LoadedTensor& pixels = written.at("pixel_values");
  EXPECT_EQ(pixels.dtype, DType::F32);
  EXPECT_EQ(pixels.shape, (std::vector<std::int64_t>{4, 3, 336, 336}));
  EXPECT_EQ(written.at("grid").dtype, DType::I64);
  EXPECT_EQ(written.at("grid").i64, references().at("text_wide.grid").i64);
  const LoadedTensor& expected = references().at("text_wide.features");
  EXPECT_EQ(written.at("features").shape, expected.shape);
  EXPECT_LT(test::max_abs_diff(written.at("features").f32, expected.f32), 1e-4);

  const std::string bad = std::string("'") + LIGHTDESK_CLI + "' image-features --model '" + vl_dir().string() +
                          "' --image '" + (scratch.path() / "none.png").string() + "' --out '" + out.string() +
                          "' 2>/dev/null";
  const int bad_status = std::system(bad.c_str());
  EXPECT_TRUE(WIFEXITED(bad_status) && WEXITSTATUS(bad_status) == 1);
}

// image-features --stats, a flag: last and in the middle.
TEST(VisionCli, ImageFeaturesTakesStatsLastOrInTheMiddle) {
  const test::ScratchDir scratch;
  const std::string image = "--image '" + image_path("tiny.png").string() + "'";
  const std::string out = "--out '" + (scratch.path() / "features.safetensors").string() + "'";
  for (const std::string& arguments : {"--stats " + image + " " + out, image + " " + out + " --stats"}) {
    const std::string command = std::string("'") + LIGHTDESK_CLI + "' image-features --backend cpu --model '" +
                                vl_dir().string() + "' " + arguments + " 2>'" + (scratch.path() / "err").string() + "'";
    const int status = std::system(command.c_str());
    const std::string err = test::read_file(scratch.path() / "err");
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << err;
    EXPECT_NE(err.find("tokens: prepared in"), std::string::npos) << err;
  }
}

// Runs lightdesk-cli with `arguments`; returns its exit code and what it wrote on standard error.
std::pair<int, std::string> run_cli(const std::string& arguments, const test::ScratchDir& scratch) {
  const auto err = scratch.path() / "err";
  const std::string command = std::string("'") + LIGHTDESK_CLI + "' " + arguments + " >/dev/null 2>'" + err.string() + "'";
  const int status = std::system(command.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(err)};
}

// ask --image: each image's placeholder in the user turn becomes its image's rows.
TEST(VisionCli, AskWithImagesFeedsTheirTokens) {
  const test::ScratchDir scratch;
  const auto [status, err] = run_cli("ask --model '" + vl_dir().string() + "' --image '" +
                                         image_path("tiny.png").string() + "' --image '" +
                                         image_path("text_wide.png").string() +
                                         "' --question 'What is shown?' --max-new-tokens 3 --greedy --stats",
                                     scratch);
  ASSERT_EQ(status, 0) << err;
  // The text of the turn as the chat format renders it, with one placeholder per image.
  const auto tokenizer = Tokenizer::open(vl_dir());
  const ChatFormat format = ChatFormat::for_model(vl_dir(), *tokenizer);
  ASSERT_EQ(format.image_token(), vision::load_vision_config(vl_dir()).image_token_id);
  Conversation conversation;
  conversation.messages.push_back({ChatMessage::Role::User,
                                   {{ChatPart::Kind::Image, {}, {}},
                                    {ChatPart::Kind::Image, {}, {}},
                                    {ChatPart::Kind::Text, "Question: What is shown?", {}}}});
  const auto text_ids = format.render(conversation).encode(*tokenizer);
  ASSERT_EQ(std::count(text_ids.begin(), text_ids.end(), *format.image_token()), 2);
  const std::int64_t image_tokens =
      references().at("tiny.token_count").i64[0] + references().at("text_wide.token_count").i64[0];
  const std::int64_t expected = static_cast<std::int64_t>(text_ids.size()) - 2 + image_tokens;
  std::smatch match;
  ASSERT_TRUE(std::regex_search(err, match, std::regex("tokenized (\\d+) prompt tokens"))) << err;
  EXPECT_EQ(std::stoll(match[1]), expected);
  EXPECT_NE(err.find("prefill " + std::to_string(expected) + "/" + std::to_string(expected) + " tokens"),
            std::string::npos)
      << err;
}

// A config whose image_token_index is not the tokenizer's "<image>" is refused by name: the
// placeholders would not line up with the features.
TEST(VisionCli, AskRefusesAnImageTokenTheTokenizerDoesNotHave) {
  const test::ScratchDir scratch;
  const auto model = scratch.path() / "model";
  std::filesystem::create_directories(model);
  for (const char* name : {"model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"})
    std::filesystem::create_symlink(vl_dir() / name, model / name);
  std::string config = test::read_file(vl_dir() / "config.json");
  const std::string index = "\"image_token_index\": 5,";
  ASSERT_NE(config.find(index), std::string::npos);
  config.replace(config.find(index), index.size(), "\"image_token_index\": 500,");
  test::write_file(model / "config.json", config);
  const auto [status, err] = run_cli("ask --model '" + model.string() + "' --image '" + image_path("tiny.png").string() +
                                         "' --question 'What is shown?' --max-new-tokens 1",
                                     scratch);
  EXPECT_EQ(status, 1);
  EXPECT_NE(err.find("image_token_index 500 is not the tokenizer's \"<image>\" (id 5)"), std::string::npos) << err;
}

}  // namespace
}  // namespace lightdesk
