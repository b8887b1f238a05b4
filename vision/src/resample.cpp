// PIL's BICUBIC resize of 8-bit images, written from its documented behaviour so that the
// pixels match the reference processor's (OpenCV's INTER_CUBIC uses a different kernel width and
// rounding). The algorithm:
// - separable: a horizontal pass, then a vertical pass, each skipped when that size is unchanged;
//   the vertical pass goes first when the height shrinks by more than twice as many pixels as the
//   width (Pillow 13.0 does this for speed, 12.x and older always start horizontally; the rounding
//   between passes makes the order show, by up to a few levels). This follows 13.0, the newest
//   Pillow release (checked 2026-11-22: its direct resize equals the vertical-then-horizontal pair
//   of single-axis resizes exactly where this rule says so, the other order elsewhere, equality
//   of the two shrinks included); transformers' image processors run on whatever Pillow is
//   installed, so references made with Pillow 12.x can differ by those few levels;
// - each output sample is a convolution with the cubic kernel of a = -0.5 (support 2), stretched
//   by the downscale factor when shrinking so that it also low-pass filters;
// - the weights of each output sample are normalised to sum 1, then turned into fixed point with
//   22 fractional bits (rounded half away from zero); the accumulator starts at one half and the
//   result is shifted down and clamped to 0..255 after each pass;
// - images with alpha are resized premultiplied and un-premultiplied afterwards.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "lightdesk/vision.h"

namespace lightdesk::vision {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kCubicSupport = 2.0;

double cubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For each output sample: the first input sample it reads and its fixed-point weights.
struct Coefficients {
  std::vector<int> first;
  std::vector<int> count;
  int stride = 0;  // weights per output sample in `weights`
  std::vector<std::int32_t> weights;
};

Coefficients coefficients(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = kCubicSupport * filter_scale;
  Coefficients c;
  c.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<std::size_t>(out_size));
  c.count.resize(static_cast<std::size_t>(out_size));
  c.weights.assign(static_cast<std::size_t>(out_size) * c.stride, 0);
  std::vector<double> w(static_cast<std::size_t>(c.stride));
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    // Truncation towards zero, as in the reference.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = hi - lo;
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
      w[i] = cubic((i + lo - center + 0.5) / filter_scale);
      sum += w[i];
    }
    for (int i = 0; i < n; ++i) {
      const double normalised = sum != 0.0 ? w[i] / sum : w[i];
      c.weights[static_cast<std::size_t>(o) * c.stride + i] = static_cast<std::int32_t>(
          normalised * (1 << kPrecisionBits) + (normalised < 0.0 ? -0.5 : 0.5));
    }
    c.first[o] = lo;
    c.count[o] = n;
  }
  return c;
}

std::uint8_t clamp_fixed(std::int64_t sum) {
  return static_cast<std::uint8_t>(std::clamp<std::int64_t>(sum >> kPrecisionBits, 0, 255));
}

// Resamples along one axis. `step` is the distance between neighbouring input samples along the
// axis; the other axis is copied through.
Image resample_axis(const Image& in, int width, int height, bool horizontal) {
  const int in_size = horizontal ? in.width : in.height;
  const Coefficients c = coefficients(in_size, horizontal ? width : height);
  const int ch = in.channels;
  const std::int64_t step = horizontal ? ch : std::int64_t{in.width} * ch;
  Image out{width, height, ch, std::vector<std::uint8_t>(static_cast<std::size_t>(width) * height * ch)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const int o = horizontal ? x : y;
      const std::int32_t* k = c.weights.data() + static_cast<std::size_t>(o) * c.stride;
      const std::uint8_t* src = in.pixels.data() +
          (horizontal ? std::int64_t{y} * in.width * ch + std::int64_t{c.first[o]} * ch
                      : std::int64_t{c.first[o]} * in.width * ch + std::int64_t{x} * ch);
      std::uint8_t* dst = out.pixels.data() + (std::int64_t{y} * width + x) * ch;
      for (int channel = 0; channel < ch; ++channel) {
        std::int64_t sum = std::int64_t{1} << (kPrecisionBits - 1);
        for (int i = 0; i < c.count[o]; ++i) sum += std::int64_t{src[i * step + channel]} * k[i];
        dst[channel] = clamp_fixed(sum);
      }
    }
  return out;
}

// round(v * alpha / 255) in integers.
std::uint8_t premultiply(std::uint8_t v, std::uint8_t alpha) {
  const unsigned t = unsigned{v} * alpha + 128u;
  return static_cast<std::uint8_t>(((t >> 8) + t) >> 8);
}

std::uint8_t unpremultiply(std::uint8_t v, std::uint8_t alpha) {
  if (alpha == 0 || alpha == 255) return v;
  return static_cast<std::uint8_t>(std::min(255u, 255u * v / alpha));
}

}  // namespace

Image resize_bicubic(const Image& image, int width, int height) {
  if (width <= 0 || height <= 0) throw Error("resize: target size must be positive");
  if (image.width <= 0 || image.height <= 0) throw Error("resize: empty image");
  const bool alpha = image.channels == 4;
  Image work = image;
  if (alpha)
    for (std::size_t p = 0; p < work.pixels.size(); p += 4)
      for (int c = 0; c < 3; ++c) work.pixels[p + c] = premultiply(work.pixels[p + c], work.pixels[p + 3]);
  const int height_shrink = image.height - height, width_shrink = image.width - width;
  if (height_shrink > 0 && height_shrink > 2 * width_shrink) {
    work = resample_axis(work, work.width, height, false);
    if (width != work.width) work = resample_axis(work, width, height, true);
  } else {
    if (width != work.width) work = resample_axis(work, width, work.height, true);
    if (height != work.height) work = resample_axis(work, width, height, false);
  }
  if (alpha)
    for (std::size_t p = 0; p < work.pixels.size(); p += 4)
      for (int c = 0; c < 3; ++c) work.pixels[p + c] = unpremultiply(work.pixels[p + c], work.pixels[p + 3]);
  return work;
}

}  // namespace lightdesk::vision
