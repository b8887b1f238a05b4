// Lightdesk vision: MiniMax-VL-01's image path. Decoding (OpenCV), the "anyres"
// preprocessing of the published VL-01 image processor, the CLIP vision tower, the projector and
// the packing of tile features with newline embeddings into the language model's input rows.
//
// Errors are lightdesk::Error with a message naming the file and the cause.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk::vision {

// An 8-bit image, row-major, `channels` interleaved values per pixel: 1 (gray), 3 (RGB) or
// 4 (RGBA, alpha not premultiplied).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;
};

struct DecodeLimits {
  // Images whose header announces more pixels than this are refused before decoding (PIL's
  // default bomb limit is 89.5 M pixels): 50 M pixels decode to 200 MB of RGBA.
  std::int64_t max_pixels = 50'000'000;
  std::int64_t max_file_bytes = std::int64_t{256} << 20;
};

// Decodes PNG, JPEG, WebP or TIFF (first page), applies the EXIF orientation, and returns gray,
// RGB or RGBA 8-bit pixels (palette images come back as RGB or RGBA, 16-bit samples are scaled to
// 8 bits). `source` names the data in error messages.
Image decode_image(std::span<const std::uint8_t> bytes, const std::string& source, const DecodeLimits& limits = {});
Image decode_image_file(const std::filesystem::path& path, const DecodeLimits& limits = {});

// Resizes with PIL's BICUBIC filter as Image.resize does it for 8-bit images, to the same
// values. RGBA is resized with premultiplied alpha, as PIL does.
Image resize_bicubic(const Image& image, int width, int height);

struct Resolution {
  int width = 0;
  int height = 0;
};

// The pinpoint that keeps the most of the image's resolution, then wastes the least area;
// the first in list order wins ties. Pinpoints are read as (width, height), as the original
// processor reads them.
Resolution select_best_resolution(int width, int height, std::span<const Resolution> pinpoints);

struct AnyresConfig {
  int tile_size = 336;
  int patch_size = 14;
  std::vector<Resolution> pinpoints;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
};

// The grid of feature positions an image keeps after unpadding (§6.5 of the model notes).
struct FeatureGrid {
  int rows = 0;     // h_num
  int columns = 0;  // w_num
};
FeatureGrid unpadded_feature_grid(int width, int height, int grid_rows, int grid_columns, int patches_per_tile);

struct PreparedImage {
  int width = 0;  // of the decoded image
  int height = 0;
  int grid_rows = 0;  // tiles of the best resolution
  int grid_columns = 0;
  // RGB 8-bit tiles of tile_size², the squashed thumbnail first, then the grid row-major.
  std::vector<Image> tiles;
  // The model input: [tiles, 3, tile_size, tile_size], (x / 255 - mean) / std per channel.
  std::vector<float> pixel_values;
  FeatureGrid feature_grid;
  // Language-model rows the image becomes: patches² + rows · (columns + 1).
  std::int64_t token_count = 0;
};

PreparedImage prepare_image(const Image& image, const AnyresConfig& config);

// The model input of RGB tiles: [tiles, 3, h, w], (x / 255 - mean) / std per channel in float32,
// as torchvision's ToTensor and Normalize compute it.
std::vector<float> normalize_tiles(std::span<const Image> tiles, const AnyresConfig& config);

struct VisionConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int patch_size = 0;
  int image_size = 0;
  float layer_norm_eps = 1e-5f;
  int feature_layer = -1;      // index into the hidden states (negative from the end)
  int text_hidden_size = 0;    // projector output
  TokenId image_token_id = 0;  // the "<image>" placeholder
  AnyresConfig anyres;

  int patches_per_side() const { return image_size / patch_size; }
};

// Reads config.json (model_type minimax_vl_01) and, if present, preprocessor_config.json.
VisionConfig load_vision_config(const std::filesystem::path& directory);

// The vision tower, projector and newline embedding of a VL-01 checkpoint.
class VisionModel {
 public:
  // Runs on the backend the options choose, as Model::open does for the language model: the CPU
  // in float32 (options.threads workers; 0 = all hardware threads), or the CUDA device in bf16,
  // or in float32 with options.cuda_float32 (for checking).
  static std::unique_ptr<VisionModel> open(const std::filesystem::path& directory, const ModelOptions& options = {});
  ~VisionModel();
  VisionModel(const VisionModel&) = delete;
  VisionModel& operator=(const VisionModel&) = delete;

  const VisionConfig& config() const;

  // Projected features of each tile: [tiles, patches², text_hidden_size], from pixel values
  // [tiles, 3, image_size, image_size].
  std::vector<float> tile_features(std::span<const float> pixel_values, std::int64_t tiles) const;

  // The language-model input rows of a prepared image: [token_count, text_hidden_size], the
  // thumbnail's features, then the unpadded grid row by row, each row ending in image_newline.
  std::vector<float> image_embeddings(const PreparedImage& image) const;

  struct Impl;

 private:
  explicit VisionModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A prompt ready for Session::feed: every image placeholder repeated to its image's token count,
// and FeedOptions::embedding_overrides pointing those positions at the image's rows.
struct MultimodalInput {
  std::vector<TokenId> tokens;
  std::vector<const float*> embedding_overrides;  // one per token; nullptr = the token's embedding
};

// `tokens` holds one `image_token` per image, in the order of `images` ([token_count, hidden]
// row-major each). The returned pointers point into `images`, which must outlive the feed.
MultimodalInput expand_image_placeholders(std::span<const TokenId> tokens, TokenId image_token,
                                          std::span<const std::vector<float>> images, int hidden_size);

}  // namespace lightdesk::vision
