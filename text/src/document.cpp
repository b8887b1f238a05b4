// Document loaders: text in its detected encoding, HTML (libxml2) as Markdown-like lines, PDF
// text per page (text/pdf_document.h).
#include <libxml/HTMLparser.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "lightdesk/input_files.h"
#include "lightdesk/text.h"
#include "pdf_document.h"
#include "utf8.h"

namespace lightdesk {
namespace {

std::string utf16_to_utf8(std::string_view bytes, bool big_endian) {
  std::string out;
  out.reserve(bytes.size() * 3 / 2);
  auto unit = [&](std::size_t i) {
    const auto a = static_cast<unsigned char>(bytes[i]), b = static_cast<unsigned char>(bytes[i + 1]);
    return static_cast<char32_t>(big_endian ? (a << 8 | b) : (b << 8 | a));
  };
  std::size_t i = 0;
  for (; i + 1 < bytes.size(); i += 2) {
    char32_t cp = unit(i);
    if (cp >= 0xD800 && cp <= 0xDBFF && i + 3 < bytes.size()) {
      const char32_t low = unit(i + 2);
      if (low >= 0xDC00 && low <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        i += 2;
      }
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // an unpaired surrogate
    utf8::append(out, cp);
  }
  if (i < bytes.size()) out += utf8::kReplacement;  // an odd trailing byte
  return out;
}

std::string utf32_to_utf8(std::string_view bytes, bool big_endian) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t i = 0;
  for (; i + 3 < bytes.size(); i += 4) {
    const auto b0 = static_cast<unsigned char>(bytes[i]), b1 = static_cast<unsigned char>(bytes[i + 1]),
               b2 = static_cast<unsigned char>(bytes[i + 2]), b3 = static_cast<unsigned char>(bytes[i + 3]);
    char32_t cp = big_endian ? static_cast<char32_t>(b0) << 24 | static_cast<char32_t>(b1) << 16 | b2 << 8 | b3
                             : static_cast<char32_t>(b3) << 24 | static_cast<char32_t>(b2) << 16 | b1 << 8 | b0;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    utf8::append(out, cp);
  }
  if (i < bytes.size()) out += utf8::kReplacement;  // a partial trailing unit
  return out;
}

// Text without a byte order mark that holds zero bytes: UTF-32 or UTF-16 when its zeros fall
// where those encodings put them (the high bytes of mostly Latin or ASCII text), judged on a
// sample from the start. nullopt for anything else.
enum class WideEncoding { Utf16Le, Utf16Be, Utf32Le, Utf32Be };
std::optional<WideEncoding> detect_wide_encoding(std::string_view bytes) {
  const std::string_view sample = bytes.substr(0, std::min<std::size_t>(bytes.size(), 1 << 16) & ~std::size_t{3});
  if (sample.empty()) return std::nullopt;
  std::size_t zeros[4] = {};
  for (std::size_t i = 0; i < sample.size(); ++i) zeros[i % 4] += sample[i] == '\0';
  const std::size_t units = sample.size() / 4;
  // UTF-32: every code point is below 0x110000, so its top byte is always zero and the next
  // one nearly always.
  if (bytes.size() % 4 == 0) {
    if (zeros[3] == units && zeros[2] * 10 >= units * 9) return WideEncoding::Utf32Le;
    if (zeros[0] == units && zeros[1] * 10 >= units * 9) return WideEncoding::Utf32Be;
  }
  // UTF-16: the high byte of each unit is zero for Latin text, the low byte almost never.
  if (bytes.size() % 2 == 0) {
    const std::size_t even = zeros[0] + zeros[2], odd = zeros[1] + zeros[3], pairs = sample.size() / 2;
    if (odd * 10 >= pairs * 3 && even * 20 <= pairs) return WideEncoding::Utf16Le;
    if (even * 10 >= pairs * 3 && odd * 20 <= pairs) return WideEncoding::Utf16Be;
  }
  return std::nullopt;
}

// Text that is not valid UTF-8 is either UTF-8 with damage (keep it, U+FFFD for the damage) or
// a single-byte encoding, read as Latin-1: the second when invalid bytes outnumber valid
// multi-byte characters.
std::string decode_text(std::string bytes, const std::string& where) {
  using namespace std::string_view_literals;
  // UTF-32's marks first: little-endian UTF-32's begins with UTF-16's.
  if (bytes.rfind("\xFF\xFE\0\0"sv, 0) == 0) return utf32_to_utf8(std::string_view(bytes).substr(4), false);
  if (bytes.rfind("\0\0\xFE\xFF"sv, 0) == 0) return utf32_to_utf8(std::string_view(bytes).substr(4), true);
  if (bytes.rfind("\xEF\xBB\xBF", 0) == 0) bytes.erase(0, 3);
  else if (bytes.rfind("\xFF\xFE", 0) == 0) return utf16_to_utf8(std::string_view(bytes).substr(2), false);
  else if (bytes.rfind("\xFE\xFF", 0) == 0) return utf16_to_utf8(std::string_view(bytes).substr(2), true);
  if (bytes.find('\0') != std::string::npos) {
    if (const auto wide = detect_wide_encoding(bytes)) {
      switch (*wide) {
        case WideEncoding::Utf16Le: return utf16_to_utf8(bytes, false);
        case WideEncoding::Utf16Be: return utf16_to_utf8(bytes, true);
        case WideEncoding::Utf32Le: return utf32_to_utf8(bytes, false);
        case WideEncoding::Utf32Be: return utf32_to_utf8(bytes, true);
      }
    }
    throw Error(where + ": holds binary data (zero bytes that are not UTF-16 or UTF-32 text), not a text document");
  }
  std::size_t valid_multibyte = 0, invalid = 0;
  for (std::size_t pos = 0; pos < bytes.size();) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int n = utf8::sequence_length(bytes, pos);
    if (n > 0) {
      ++valid_multibyte;
      pos += static_cast<std::size_t>(n);
    } else {
      ++invalid;
      ++pos;
    }
  }
  if (invalid == 0) return bytes;
  if (invalid <= valid_multibyte) return sanitize_utf8(bytes);
  std::string latin1;
  latin1.reserve(bytes.size() + invalid + valid_multibyte);
  for (char c : bytes) utf8::append(latin1, static_cast<unsigned char>(c));
  return latin1;
}

// HTML as Markdown-like lines: headings as "# ", list items as "- ", paragraphs and other blocks
// on their own lines, whitespace collapsed outside <pre>, scripts and styles dropped.
class HtmlText {
 public:
  std::string take() {
    while (!out_.empty() && out_.back() == '\n') out_.pop_back();
    if (!out_.empty()) out_ += '\n';
    return std::move(out_);
  }

  // Iterative: a document may nest elements thousands deep.
  void walk(const xmlNode* root) {
    struct Open {
      const xmlNode* element;
      bool preformatted;  // inside it
      bool block;
      bool paragraph;
    };
    std::vector<Open> open;
    bool preformatted = false;
    for (const xmlNode* node = root;;) {
      if (!node) {
        if (open.empty()) return;
        const Open done = open.back();
        open.pop_back();
        if (done.block) line_break(done.paragraph);
        node = done.element->next;
        preformatted = !open.empty() && open.back().preformatted;
        continue;
      }
      if (node->type == XML_TEXT_NODE || node->type == XML_CDATA_SECTION_NODE) {
        text(reinterpret_cast<const char*>(node->content), preformatted);
        node = node->next;
        continue;
      }
      const std::string name = node->type == XML_ELEMENT_NODE ? reinterpret_cast<const char*>(node->name) : "";
      if (name.empty() || name == "script" || name == "style" || name == "noscript" || name == "template" ||
          name == "head") {
        node = node->next;
        continue;
      }
      if (name == "br") {
        line_break(false);
        node = node->next;
        continue;
      }
      const bool heading = name.size() == 2 && name[0] == 'h' && name[1] >= '1' && name[1] <= '6';
      const bool block = heading || name == "p" || name == "div" || name == "pre" || name == "li" ||
                         name == "ul" || name == "ol" || name == "table" || name == "tr" || name == "blockquote" ||
                         name == "section" || name == "article" || name == "header" || name == "footer" ||
                         name == "title" || name == "dt" || name == "dd" || name == "hr";
      const bool paragraph = name == "p" || heading || name == "pre" || name == "table";
      if (block) line_break(paragraph);
      if (heading) out_ += std::string(static_cast<std::size_t>(name[1] - '0'), '#') + " ";
      if (name == "li") out_ += "- ";
      if ((name == "td" || name == "th") && !out_.empty() && out_.back() != '\n') out_ += " | ";
      preformatted = preformatted || name == "pre";
      open.push_back({node, preformatted, block, paragraph});
      node = node->children;
    }
  }

 private:
  // Ends the current line; `paragraph` leaves an empty line after it.
  void line_break(bool paragraph) {
    while (!out_.empty() && out_.back() == ' ') out_.pop_back();
    if (out_.empty()) return;
    if (out_.back() != '\n') out_ += '\n';
    if (paragraph && (out_.size() < 2 || out_[out_.size() - 2] != '\n')) out_ += '\n';
  }

  void text(const char* content, bool preformatted) {
    if (!content) return;
    if (preformatted) {
      out_ += content;
      return;
    }
    for (const char* c = content; *c; ++c) {
      const bool space = *c == ' ' || *c == '\n' || *c == '\t' || *c == '\r' || *c == '\f';
      if (!space) {
        out_ += *c;
      } else if (!out_.empty() && out_.back() != ' ' && out_.back() != '\n') {
        out_ += ' ';
      }
    }
  }

  std::string out_;
};

Document load_html(const std::filesystem::path& path, const std::string& bytes) {
  // libxml2 follows the document's declared charset (meta tag or BOM), else guesses.
  // XML_PARSE_HUGE: without it the parser drops everything nested deeper than 256 elements,
  // which 256 unclosed tags already are.
  std::unique_ptr<xmlDoc, decltype(&xmlFreeDoc)> doc(
      htmlReadMemory(bytes.data(), static_cast<int>(bytes.size()), path.string().c_str(), nullptr,
                     HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET |
                         XML_PARSE_HUGE),
      &xmlFreeDoc);
  if (!doc) throw Error(path.string() + ": not readable as HTML");
  HtmlText text;
  text.walk(xmlDocGetRootElement(doc.get()));
  Document document{path, "html", sanitize_utf8(text.take()), {}, {}};
  // Markup, scripts and styles are most of many pages, but not 99% of a large one.
  constexpr std::size_t kMarkupOnlyBytes = 64 * 1024;
  if (bytes.size() >= kMarkupOnlyBytes && document.text.size() * 100 < bytes.size())
    document.notice = path.string() + ": only " + byte_count_text(document.text.size()) + " of text in " +
                      byte_count_text(bytes.size()) + " of HTML (the rest is markup, scripts or styles)";
  return document;
}

}  // namespace

std::uint64_t document_byte_limit(std::int64_t tokens) {
  return static_cast<std::uint64_t>(std::max<std::int64_t>(tokens, 0)) * kDocumentBytesPerToken;
}

Document load_document(const std::filesystem::path& path, std::uint64_t max_text_bytes) {
  const std::string where = path.string();
  Document document;
  {
    const RegularFile file(path, std::max(max_text_bytes, kMaxPdfFileBytes));
    if (file.read_prefix(5) == "%PDF-") {
      document = load_pdf(path, max_text_bytes);
    } else if (path.extension() == ".pdf") {
      throw Error(where + ": not a PDF (no %PDF- header)");
    } else {
      // Text and HTML: the file's bytes are the text's, give or take an encoding.
      if (file.size() > max_text_bytes)
        throw Error(where + ": " + byte_count_text(file.size()) + " is more than the model's context can hold (" +
                    byte_count_text(max_text_bytes) + " at most)");
      const std::string bytes = file.read_all();
      if (path.extension() == ".html" || path.extension() == ".htm" || path.extension() == ".xhtml")
        document = load_html(path, bytes);
      else
        document = Document{path, "text", decode_text(bytes, where), {}, {}};
    }
  }
  if (document.text.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
    throw Error(where + ": no text in it (" +
                (document.format == "pdf" ? "scanned pages without a text layer, or a damaged PDF"
                                          : std::string(document.text.empty() ? "an empty file" : "only white space")) +
                ")");
  return document;
}

}  // namespace lightdesk
