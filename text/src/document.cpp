// Document loaders: text in its detected encoding, HTML (libxml2) as Markdown-like lines, PDF
// text per page (text/pdf_document.h).
#include <libxml/HTMLparser.h>

#include <cstring>
#include <fstream>

#include "lightdesk/text.h"
#include "pdf_document.h"
#include "utf8.h"

namespace lightdesk {
namespace {

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
  std::string bytes;
  in.seekg(0, std::ios::end);
  bytes.resize(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!in) throw Error(path.string() + ": read failed");
  return bytes;
}

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

// Text that is not valid UTF-8 is either UTF-8 with damage (keep it, U+FFFD for the damage) or
// a single-byte encoding, read as Latin-1: the second when invalid bytes outnumber valid
// multi-byte characters.
std::string decode_text(std::string bytes) {
  if (bytes.rfind("\xEF\xBB\xBF", 0) == 0) bytes.erase(0, 3);
  else if (bytes.rfind("\xFF\xFE", 0) == 0) return utf16_to_utf8(std::string_view(bytes).substr(2), false);
  else if (bytes.rfind("\xFE\xFF", 0) == 0) return utf16_to_utf8(std::string_view(bytes).substr(2), true);
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

  void walk(const xmlNode* node, bool preformatted) {
    for (; node; node = node->next) {
      if (node->type == XML_TEXT_NODE || node->type == XML_CDATA_SECTION_NODE) {
        text(reinterpret_cast<const char*>(node->content), preformatted);
        continue;
      }
      if (node->type != XML_ELEMENT_NODE) continue;
      const std::string name = reinterpret_cast<const char*>(node->name);
      if (name == "script" || name == "style" || name == "noscript" || name == "template" || name == "head") continue;
      const bool heading = name.size() == 2 && name[0] == 'h' && name[1] >= '1' && name[1] <= '6';
      const bool block = heading || name == "p" || name == "div" || name == "pre" || name == "li" ||
                         name == "ul" || name == "ol" || name == "table" || name == "tr" || name == "blockquote" ||
                         name == "section" || name == "article" || name == "header" || name == "footer" ||
                         name == "title" || name == "dt" || name == "dd" || name == "hr";
      if (name == "br") {
        line_break(false);
        continue;
      }
      if (block) line_break(name == "p" || heading || name == "pre" || name == "table");
      if (heading) out_ += std::string(static_cast<std::size_t>(name[1] - '0'), '#') + " ";
      if (name == "li") out_ += "- ";
      if ((name == "td" || name == "th") && !out_.empty() && out_.back() != '\n') out_ += " | ";
      walk(node->children, preformatted || name == "pre");
      if (block) line_break(name == "p" || heading || name == "pre" || name == "table");
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

Document load_html(const std::filesystem::path& path) {
  const std::string bytes = read_bytes(path);
  // libxml2 follows the document's declared charset (meta tag or BOM), else guesses.
  std::unique_ptr<xmlDoc, decltype(&xmlFreeDoc)> doc(
      htmlReadMemory(bytes.data(), static_cast<int>(bytes.size()), path.string().c_str(), nullptr,
                     HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET),
      &xmlFreeDoc);
  if (!doc) throw Error(path.string() + ": not readable as HTML");
  HtmlText text;
  text.walk(xmlDocGetRootElement(doc.get()), false);
  return Document{path, "html", sanitize_utf8(text.take()), {}};
}

}  // namespace

Document load_document(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path)) throw Error(path.string() + ": no such file");
  char magic[5] = {};
  std::ifstream(path, std::ios::binary).read(magic, sizeof magic);
  if (std::string_view(magic, sizeof magic) == "%PDF-") return load_pdf(path);
  if (path.extension() == ".pdf") throw Error(path.string() + ": not a PDF (no %PDF- header)");
  if (path.extension() == ".html" || path.extension() == ".htm" || path.extension() == ".xhtml") return load_html(path);
  return Document{path, "text", decode_text(read_bytes(path)), {}};
}

}  // namespace lightdesk
