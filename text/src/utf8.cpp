#include "utf8.h"

#include "lightdesk/text.h"

namespace lightdesk::utf8 {

int sequence_length(std::string_view text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return 1;
  int length = 0;
  // The second byte's range depends on the lead (no overlongs, no surrogates, <= U+10FFFF).
  unsigned char low = 0x80, high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < length; ++k) {
    if (pos + k >= text.size()) return -1;
    const unsigned char b = byte(pos + k);
    const unsigned char lo = k == 1 ? low : 0x80, hi = k == 1 ? high : 0xBF;
    if (b < lo || b > hi) return 0;
  }
  return length;
}

std::size_t complete_prefix(std::string_view text) {
  // An incomplete character is at most 3 bytes long, so only the tail needs a look; bytes
  // there that continue an earlier character are complete, whatever the scan makes of them.
  std::size_t pos = text.size() > 3 ? text.size() - 3 : 0;
  while (pos < text.size()) {
    const int n = sequence_length(text, pos);
    if (n < 0) return pos;
    pos += n == 0 ? 1 : static_cast<std::size_t>(n);
  }
  return text.size();
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace lightdesk::utf8

namespace lightdesk {

std::string sanitize_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const int n = utf8::sequence_length(bytes, pos);
    if (n > 0) {
      out.append(bytes.substr(pos, static_cast<std::size_t>(n)));
      pos += static_cast<std::size_t>(n);
      continue;
    }
    // A maximal invalid subpart: the lead plus the continuation bytes it validly began with.
    std::size_t end = pos + 1;
    while (end < bytes.size() && end - pos < 4 && (static_cast<unsigned char>(bytes[end]) & 0xC0) == 0x80) {
      const int prefix = utf8::sequence_length(bytes.substr(0, end + 1), pos);
      if (prefix != -1) break;
      ++end;
    }
    out += utf8::kReplacement;
    pos = end;
  }
  return out;
}

}  // namespace lightdesk
