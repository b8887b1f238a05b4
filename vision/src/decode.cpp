// Image decoding with OpenCV. Before OpenCV sees the data, the container header is read here for
// the dimensions (so an oversized or bomb image is refused before any pixel memory is taken) and
// for the EXIF orientation, which OpenCV ignores when asked for the alpha channel.
#include <algorithm>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "lightdesk/input_files.h"
#include "lightdesk/vision.h"

namespace lightdesk::vision {
namespace {

struct HeaderInfo {
  std::int64_t width = 0;
  std::int64_t height = 0;
  int orientation = 1;  // EXIF: 1 = as stored
  // OpenCV's TIFF decoder (libtiff's RGBA reader) applies the orientation tag itself.
  bool decoder_orients = false;
};

class ByteReader {
 public:
  ByteReader(std::span<const std::uint8_t> bytes, const std::string& source) : bytes_(bytes), source_(source) {}
  [[noreturn]] void fail(const std::string& what) const { throw Error(source_ + ": " + what); }
  bool has(std::size_t offset, std::size_t count) const {
    return offset <= bytes_.size() && count <= bytes_.size() - offset;
  }
  std::uint32_t be(std::size_t offset, int count) const { return read(offset, count, true); }
  std::uint32_t le(std::size_t offset, int count) const { return read(offset, count, false); }
  bool starts_with(std::size_t offset, std::string_view text) const {
    if (!has(offset, text.size())) return false;
    return std::equal(text.begin(), text.end(), bytes_.begin() + static_cast<std::ptrdiff_t>(offset),
                      [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; });
  }
  std::span<const std::uint8_t> sub(std::size_t offset, std::size_t count) const {
    if (!has(offset, count)) fail("truncated header");
    return bytes_.subspan(offset, count);
  }
  std::size_t size() const { return bytes_.size(); }
  std::uint8_t at(std::size_t offset) const { return static_cast<std::uint8_t>(read(offset, 1, true)); }
  const std::string& source() const { return source_; }

 private:
  std::uint32_t read(std::size_t offset, int count, bool big_endian) const {
    if (!has(offset, static_cast<std::size_t>(count))) fail("truncated header");
    std::uint32_t v = 0;
    for (int i = 0; i < count; ++i) {
      const std::uint32_t b = bytes_[offset + static_cast<std::size_t>(big_endian ? i : count - 1 - i)];
      v = (v << 8) | b;
    }
    return v;
  }
  std::span<const std::uint8_t> bytes_;
  const std::string& source_;
};

// IFD0 of a TIFF structure (a TIFF file, or the EXIF block of the other formats): width, height
// and orientation where present.
HeaderInfo read_tiff_ifd0(std::span<const std::uint8_t> data, const std::string& source) {
  const ByteReader r(data, source);
  HeaderInfo info;
  bool big;
  if (r.starts_with(0, "II*")) {
    big = false;
  } else if (r.starts_with(0, "MM")) {
    big = true;
  } else {
    r.fail("malformed TIFF/EXIF header");
  }
  auto u = [&](std::size_t offset, int count) { return big ? r.be(offset, count) : r.le(offset, count); };
  if (u(2, 2) != 42) r.fail("malformed TIFF/EXIF header");
  const std::size_t ifd = u(4, 4);
  const std::uint32_t entries = u(ifd, 2);
  for (std::uint32_t e = 0; e < entries; ++e) {
    const std::size_t entry = ifd + 2 + std::size_t{e} * 12;
    const std::uint32_t tag = u(entry, 2), type = u(entry + 2, 2);
    if (type != 3 && type != 4) continue;  // SHORT or LONG
    const std::uint32_t value = type == 3 ? u(entry + 8, 2) : u(entry + 8, 4);
    if (tag == 256) info.width = value;
    if (tag == 257) info.height = value;
    if (tag == 274 && value >= 1 && value <= 8) info.orientation = static_cast<int>(value);
  }
  return info;
}

int exif_orientation(std::span<const std::uint8_t> exif, const std::string& source) {
  const ByteReader r(exif, source);
  const std::size_t skip = r.starts_with(0, std::string_view("Exif\0\0", 6)) ? 6 : 0;
  return read_tiff_ifd0(exif.subspan(std::min(skip, exif.size())), source + " (EXIF)").orientation;
}

HeaderInfo read_png(const ByteReader& r) {
  HeaderInfo info;
  if (!r.starts_with(12, "IHDR")) r.fail("malformed PNG: no IHDR chunk");
  info.width = r.be(16, 4);
  info.height = r.be(20, 4);
  for (std::size_t chunk = 8; r.has(chunk, 8);) {
    const std::size_t length = r.be(chunk, 4);
    if (r.starts_with(chunk + 4, "IDAT")) break;
    if (r.starts_with(chunk + 4, "eXIf")) info.orientation = exif_orientation(r.sub(chunk + 8, length), r.source());
    chunk += 12 + length;
  }
  return info;
}

HeaderInfo read_jpeg(const ByteReader& r) {
  HeaderInfo info;
  bool have_size = false;
  std::size_t pos = 2;
  while (true) {
    if (!r.has(pos, 4)) r.fail("truncated JPEG: no start of scan");
    if (r.at(pos) != 0xFF) r.fail("malformed JPEG: bad marker");
    const std::uint8_t marker = r.at(pos + 1);
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
      pos += 2;
      continue;
    }
    const std::size_t length = r.be(pos + 2, 2);
    if (marker == 0xDA) break;  // start of scan
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (frame && !have_size) {
      info.height = r.be(pos + 5, 2);
      info.width = r.be(pos + 7, 2);
      have_size = true;
    }
    if (marker == 0xE1 && length >= 8 && r.starts_with(pos + 4, std::string_view("Exif\0\0", 6)))
      info.orientation = exif_orientation(r.sub(pos + 4, length - 2), r.source());
    pos += 2 + length;
  }
  if (!have_size) r.fail("malformed JPEG: no frame header");
  // libjpeg fills a truncated scan with grey and only warns: insist on the end-of-image marker.
  bool has_end = false;
  for (std::size_t i = r.size(); i >= pos + 2 && !has_end; --i) has_end = r.at(i - 2) == 0xFF && r.at(i - 1) == 0xD9;
  if (!has_end) r.fail("truncated JPEG: no end-of-image marker");
  return info;
}

HeaderInfo read_webp(const ByteReader& r) {
  HeaderInfo info;
  const std::size_t riff_end = std::size_t{r.le(4, 4)} + 8;
  if (riff_end > r.size()) r.fail("truncated WebP: the RIFF header announces " + std::to_string(riff_end) +
                                  " bytes, the data has " + std::to_string(r.size()));
  for (std::size_t chunk = 12; r.has(chunk, 8) && chunk < riff_end;) {
    const std::size_t length = r.le(chunk + 4, 4);
    const std::size_t data = chunk + 8;
    if (r.starts_with(chunk, "VP8X")) {
      info.width = std::int64_t{r.le(data + 4, 3)} + 1;
      info.height = std::int64_t{r.le(data + 7, 3)} + 1;
    } else if (r.starts_with(chunk, "VP8 ") && info.width == 0) {
      info.width = r.le(data + 6, 2) & 0x3FFF;
      info.height = r.le(data + 8, 2) & 0x3FFF;
    } else if (r.starts_with(chunk, "VP8L") && info.width == 0) {
      const std::uint32_t bits = r.le(data + 1, 4);
      info.width = std::int64_t{bits & 0x3FFF} + 1;
      info.height = std::int64_t{(bits >> 14) & 0x3FFF} + 1;
    } else if (r.starts_with(chunk, "EXIF")) {
      info.orientation = exif_orientation(r.sub(data, length), r.source());
    }
    chunk = data + length + (length & 1);
  }
  return info;
}

HeaderInfo read_header(const ByteReader& r) {
  if (r.starts_with(0, "\x89PNG\r\n\x1a\n")) return read_png(r);
  if (r.has(0, 3) && r.at(0) == 0xFF && r.at(1) == 0xD8 && r.at(2) == 0xFF) return read_jpeg(r);
  if (r.starts_with(0, "RIFF") && r.starts_with(8, "WEBP")) return read_webp(r);
  if (r.starts_with(0, "II*") || r.starts_with(0, "MM")) {
    HeaderInfo info = read_tiff_ifd0(r.sub(0, r.size()), r.source());
    info.decoder_orients = true;
    return info;
  }
  r.fail("not a PNG, JPEG, WebP or TIFF image");
}

// Applies the EXIF orientation: the stored pixels are turned the way the camera meant them.
cv::Mat orient(const cv::Mat& in, int orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2: cv::flip(in, out, 1); break;
    case 3: cv::rotate(in, out, cv::ROTATE_180); break;
    case 4: cv::flip(in, out, 0); break;
    case 5: cv::transpose(in, out); break;
    case 6: cv::rotate(in, out, cv::ROTATE_90_CLOCKWISE); break;
    case 7: cv::transpose(in, out); cv::flip(out, out, -1); break;
    case 8: cv::rotate(in, out, cv::ROTATE_90_COUNTERCLOCKWISE); break;
    default: out = in; break;
  }
  return out;
}

}  // namespace

Image decode_image(std::span<const std::uint8_t> bytes, const std::string& source, const DecodeLimits& limits) {
  if (bytes.empty()) throw Error(source + ": empty file");
  if (static_cast<std::int64_t>(bytes.size()) > limits.max_file_bytes)
    throw Error(source + ": file of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                std::to_string(limits.max_file_bytes));
  const ByteReader reader(bytes, source);
  const HeaderInfo header = read_header(reader);
  if (header.width <= 0 || header.height <= 0)
    throw Error(source + ": zero image size " + std::to_string(header.width) + "x" + std::to_string(header.height));
  if (header.width > limits.max_pixels / header.height)
    throw Error(source + ": image of " + std::to_string(header.width) + "x" + std::to_string(header.height) +
                " pixels exceeds the limit of " + std::to_string(limits.max_pixels) + " pixels");

  cv::Mat decoded;
  try {
    const cv::Mat data(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<std::uint8_t*>(bytes.data()));
    decoded = cv::imdecode(data, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw Error(source + ": cannot decode: " + e.what());
  }
  if (decoded.empty()) throw Error(source + ": cannot decode (corrupt or truncated image)");
  const bool transposed = header.decoder_orients && header.orientation >= 5;
  if (decoded.cols != (transposed ? header.height : header.width) ||
      decoded.rows != (transposed ? header.width : header.height))
    throw Error(source + ": decoded size " + std::to_string(decoded.cols) + "x" + std::to_string(decoded.rows) +
                " differs from the header's " + std::to_string(header.width) + "x" + std::to_string(header.height));

  if (decoded.depth() == CV_16U) {
    cv::Mat eight;
    decoded.convertTo(eight, CV_8U, 1.0 / 257.0);
    decoded = eight;
  } else if (decoded.depth() != CV_8U) {
    throw Error(source + ": unsupported sample type (only 8- and 16-bit integer images)");
  }
  cv::Mat converted;
  switch (decoded.channels()) {
    case 1: converted = decoded; break;
    case 2: break;  // gray + alpha, expanded below
    case 3: cv::cvtColor(decoded, converted, cv::COLOR_BGR2RGB); break;
    case 4: cv::cvtColor(decoded, converted, cv::COLOR_BGRA2RGBA); break;
    default: throw Error(source + ": unsupported channel count " + std::to_string(decoded.channels()));
  }
  if (decoded.channels() == 2) {
    // Gray + alpha: OpenCV has no conversion for it; expand by hand.
    converted.create(decoded.rows, decoded.cols, CV_8UC4);
    for (int y = 0; y < decoded.rows; ++y)
      for (int x = 0; x < decoded.cols; ++x) {
        const cv::Vec2b v = decoded.at<cv::Vec2b>(y, x);
        converted.at<cv::Vec4b>(y, x) = cv::Vec4b(v[0], v[0], v[0], v[1]);
      }
  }
  if (!header.decoder_orients) converted = orient(converted, header.orientation);
  if (!converted.isContinuous()) converted = converted.clone();

  Image image;
  image.width = converted.cols;
  image.height = converted.rows;
  image.channels = converted.channels();
  image.pixels.assign(converted.data, converted.data + converted.total() * converted.elemSize());
  return image;
}

Image decode_image_file(const std::filesystem::path& path, const DecodeLimits& limits) {
  const std::string bytes =
      read_regular_file(path, static_cast<std::uint64_t>(std::max<std::int64_t>(limits.max_file_bytes, 0)));
  return decode_image(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), path.string(),
                      limits);
}

}  // namespace lightdesk::vision
