// UTF-8 helpers shared by the tokenizer, the stream decoder and the document loaders.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace lightdesk::utf8 {

// Length of the valid UTF-8 sequence starting at text[pos]: 1..4, 0 when the bytes there are
// invalid, or -1 when they are a valid but incomplete beginning cut off by the end of `text`.
int sequence_length(std::string_view text, std::size_t pos);

// Length of the longest prefix of `text` that ends on a character boundary, given that
// incomplete sequences at the end may still be completed (invalid bytes count as complete).
std::size_t complete_prefix(std::string_view text);

// Appends the UTF-8 encoding of a code point.
void append(std::string& out, char32_t code_point);

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace lightdesk::utf8
