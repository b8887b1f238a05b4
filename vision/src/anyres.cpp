// The "anyres" preprocessing of the original MiniMax-VL-01 image processor (model notes §6.4)
// and the token count of §6.5. The float arithmetic follows the reference's Python expressions
// (true division in double, int() truncation) so the chosen sizes agree exactly.
#include <limits>

#include "lightdesk/vision.h"

namespace lightdesk::vision {
namespace {

Image crop(const Image& image, int x0, int y0, int width, int height) {
  Image out{width, height, image.channels, {}};
  out.pixels.resize(static_cast<std::size_t>(width) * height * image.channels);
  const std::size_t row_bytes = static_cast<std::size_t>(width) * image.channels;
  for (int y = 0; y < height; ++y)
    std::copy_n(image.pixels.begin() + (static_cast<std::ptrdiff_t>(y0 + y) * image.width + x0) * image.channels,
                row_bytes, out.pixels.begin() + static_cast<std::ptrdiff_t>(y * row_bytes));
  return out;
}

// The reference converts to RGB after resizing: gray is replicated, alpha dropped.
Image to_rgb(const Image& image) {
  if (image.channels == 3) return image;
  Image out{image.width, image.height, 3, {}};
  const std::size_t pixels = static_cast<std::size_t>(image.width) * image.height;
  out.pixels.resize(pixels * 3);
  for (std::size_t p = 0; p < pixels; ++p)
    for (int c = 0; c < 3; ++c)
      out.pixels[p * 3 + c] = image.pixels[p * image.channels + (image.channels == 1 ? 0 : c)];
  return out;
}

// Keep-ratio resize to fit (width, height), pasted centred on black.
Image resize_and_pad(const Image& image, Resolution target) {
  const double aspect = static_cast<double>(image.width) / image.height;
  const double target_aspect = static_cast<double>(target.width) / target.height;
  Image canvas{target.width, target.height, 3,
               std::vector<std::uint8_t>(static_cast<std::size_t>(target.width) * target.height * 3, 0)};
  Image resized;
  int x0 = 0, y0 = 0;
  // An extreme aspect ratio would round a side to 0 pixels (the reference fails there): keep 1.
  if (aspect > target_aspect) {
    const int new_height = std::max(
        1, static_cast<int>(static_cast<double>(std::int64_t{target.width} * image.height) / image.width));
    resized = to_rgb(resize_bicubic(image, target.width, new_height));
    y0 = (target.height - new_height) / 2;
  } else {
    const int new_width = std::max(
        1, static_cast<int>(static_cast<double>(std::int64_t{target.height} * image.width) / image.height));
    resized = to_rgb(resize_bicubic(image, new_width, target.height));
    x0 = (target.width - new_width) / 2;
  }
  const std::size_t row_bytes = static_cast<std::size_t>(resized.width) * 3;
  for (int y = 0; y < resized.height; ++y)
    std::copy_n(resized.pixels.begin() + static_cast<std::ptrdiff_t>(y * row_bytes), row_bytes,
                canvas.pixels.begin() + (static_cast<std::ptrdiff_t>(y0 + y) * target.width + x0) * 3);
  return canvas;
}

}  // namespace

Resolution select_best_resolution(int width, int height, std::span<const Resolution> pinpoints) {
  if (pinpoints.empty()) throw Error("image_grid_pinpoints is empty");
  Resolution best{};
  std::int64_t best_effective = 0;
  std::int64_t best_waste = std::numeric_limits<std::int64_t>::max();
  for (const Resolution& p : pinpoints) {
    const double scale = std::min(static_cast<double>(p.width) / width, static_cast<double>(p.height) / height);
    const auto scaled_width = static_cast<std::int64_t>(width * scale);
    const auto scaled_height = static_cast<std::int64_t>(height * scale);
    const std::int64_t effective = std::min(scaled_width * scaled_height, std::int64_t{width} * height);
    const std::int64_t waste = std::int64_t{p.width} * p.height - effective;
    if (effective > best_effective || (effective == best_effective && waste < best_waste)) {
      best = p;
      best_effective = effective;
      best_waste = waste;
    }
  }
  return best;
}

FeatureGrid unpadded_feature_grid(int width, int height, int grid_rows, int grid_columns, int patches_per_tile) {
  const std::int64_t columns = std::int64_t{grid_columns} * patches_per_tile;
  const std::int64_t rows = std::int64_t{grid_rows} * patches_per_tile;
  FeatureGrid g{static_cast<int>(rows), static_cast<int>(columns)};
  if (static_cast<double>(width) / height > static_cast<double>(columns) / static_cast<double>(rows)) {
    const std::int64_t new_rows = height * columns / width;
    g.rows = static_cast<int>(rows - 2 * ((rows - new_rows) / 2));
  } else {
    const std::int64_t new_columns = width * rows / height;
    g.columns = static_cast<int>(columns - 2 * ((columns - new_columns) / 2));
  }
  return g;
}

std::vector<float> normalize_tiles(std::span<const Image> tiles, const AnyresConfig& config) {
  std::vector<float> values;
  for (const Image& t : tiles) {
    if (t.channels != 3) throw Error("normalize_tiles: tiles must be RGB");
    const std::size_t plane = static_cast<std::size_t>(t.width) * t.height;
    const std::size_t first = values.size();
    values.resize(first + 3 * plane);
    for (std::size_t c = 0; c < 3; ++c)
      for (std::size_t p = 0; p < plane; ++p)
        values[first + c * plane + p] =
            (static_cast<float>(t.pixels[p * 3 + c]) / 255.0f - config.mean[c]) / config.std[c];
  }
  return values;
}

PreparedImage prepare_image(const Image& image, const AnyresConfig& config) {
  if (image.width <= 0 || image.height <= 0) throw Error("prepare_image: empty image");
  if (config.tile_size <= 0 || config.patch_size <= 0 || config.tile_size % config.patch_size != 0)
    throw Error("prepare_image: tile size " + std::to_string(config.tile_size) + " is not a multiple of patch size " +
                std::to_string(config.patch_size));
  const int tile = config.tile_size;
  const Resolution best = select_best_resolution(image.width, image.height, config.pinpoints);
  if (best.width % tile != 0 || best.height % tile != 0)
    throw Error("image_grid_pinpoints entry [" + std::to_string(best.width) + ", " + std::to_string(best.height) +
                "] is not a multiple of the tile size " + std::to_string(tile));

  PreparedImage out;
  out.width = image.width;
  out.height = image.height;
  out.grid_rows = best.height / tile;
  out.grid_columns = best.width / tile;
  out.tiles.push_back(to_rgb(resize_bicubic(image, tile, tile)));
  const Image padded = resize_and_pad(image, best);
  for (int r = 0; r < out.grid_rows; ++r)
    for (int c = 0; c < out.grid_columns; ++c) out.tiles.push_back(crop(padded, c * tile, r * tile, tile, tile));

  out.pixel_values = normalize_tiles(out.tiles, config);
  const int patches = tile / config.patch_size;
  out.feature_grid = unpadded_feature_grid(image.width, image.height, out.grid_rows, out.grid_columns, patches);
  out.token_count = std::int64_t{patches} * patches +
                    std::int64_t{out.feature_grid.rows} * (out.feature_grid.columns + 1);
  return out;
}

}  // namespace lightdesk::vision
