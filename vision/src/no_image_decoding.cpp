// Image decoding in builds without OpenCV (LIGHTDESK_WITH_IMAGE_DECODING=OFF): the vision tower
// and the preprocessing stay, images only fail to decode.
#include "lightdesk/vision.h"

namespace lightdesk::vision {
namespace {

[[noreturn]] void refuse(const std::string& source) {
  throw Error("cannot read " + source +
              ": this build of Lightdesk has no image decoding (built with LIGHTDESK_WITH_IMAGE_DECODING=OFF)");
}

}  // namespace

Image decode_image(std::span<const std::uint8_t>, const std::string& source, const DecodeLimits&) { refuse(source); }

Image decode_image_file(const std::filesystem::path& path, const DecodeLimits&) { refuse(path.string()); }

}  // namespace lightdesk::vision
