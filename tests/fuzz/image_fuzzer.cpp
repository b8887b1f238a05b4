// Image decoding (PNG, JPEG, WebP, TIFF; the header read here, EXIF orientation) and the anyres
// preprocessing of what decodes, at a small tile size so that each run stays fast.
#include "fuzz_util.h"
#include "lightdesk/vision.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  vision::DecodeLimits limits;
  limits.max_pixels = 1 << 20;
  fuzz::expect_clear_error([&] {
    const vision::Image image = vision::decode_image({data, size}, "image", limits);
    fuzz::check(image.width > 0 && image.height > 0 &&
                    static_cast<std::int64_t>(image.width) * image.height <= limits.max_pixels,
                "a decoded image has pixels, at most the limit");
    fuzz::check(image.channels == 1 || image.channels == 3 || image.channels == 4, "gray, RGB or RGBA");
    fuzz::check(image.pixels.size() == static_cast<std::size_t>(image.width) * image.height * image.channels,
                "one value per pixel and channel");
    vision::AnyresConfig config;
    config.tile_size = 28;
    config.patch_size = 14;
    config.pinpoints = {{28, 28}, {28, 56}, {56, 28}, {56, 56}};
    const vision::PreparedImage prepared = vision::prepare_image(image, config);
    fuzz::check(prepared.pixel_values.size() == prepared.tiles.size() * 3 * 28 * 28, "tiles of 3 x 28 x 28 values");
    fuzz::check(prepared.tiles.size() ==
                    1 + static_cast<std::size_t>(prepared.grid_rows) * static_cast<std::size_t>(prepared.grid_columns),
                "the thumbnail and the grid's tiles");
  });
  return 0;
}
