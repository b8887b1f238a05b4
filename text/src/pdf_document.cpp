// PDF text per page through poppler-cpp.
#include <poppler/cpp/poppler-document.h>
#include <poppler/cpp/poppler-page.h>

#include <algorithm>
#include <climits>
#include <memory>

#include "lightdesk/input_files.h"
#include "pdf_document.h"

namespace lightdesk {

Document load_pdf(const std::filesystem::path& path, std::uint64_t max_text_bytes) {
  const std::string where = path.string();
  // Read here, not by poppler from the path: only a regular file of bounded size.
  std::string bytes = read_regular_file(path, std::min<std::uint64_t>(kMaxPdfFileBytes, INT_MAX));
  std::unique_ptr<poppler::document> pdf(
      poppler::document::load_from_raw_data(bytes.data(), static_cast<int>(bytes.size())));
  if (!pdf) throw Error(where + ": not a readable PDF (damaged or not a PDF)");
  if (pdf->is_locked()) throw Error(where + ": the PDF is encrypted with a password; it cannot be read");
  Document doc{path, "pdf", {}, {}, {}};
  const int pages = pdf->pages();
  int pages_without_text = 0;
  for (int i = 0; i < pages; ++i) {
    std::unique_ptr<poppler::page> page(pdf->create_page(i));
    if (!page) throw Error(where + ": page " + std::to_string(i + 1) + " cannot be read");
    if (!doc.text.empty() && doc.text.back() != '\n') doc.text += '\n';
    doc.anchors.push_back({doc.text.size(), i + 1, 1});
    const poppler::byte_array utf8_text = page->text(poppler::rectf(), poppler::page::physical_layout).to_utf8();
    const std::string text = sanitize_utf8(std::string_view(utf8_text.data(), utf8_text.size()));
    if (text.find_first_not_of(" \t\r\n\f") == std::string::npos) ++pages_without_text;
    doc.text += text;
    if (doc.text.size() > max_text_bytes)
      throw Error(where + ": its text passes " + byte_count_text(max_text_bytes) + " by page " +
                  std::to_string(i + 1) + " of " + std::to_string(pages) + ", more than the model's context can hold");
  }
  // Page text comes with form feeds between pages in some layouts; they carry nothing.
  std::replace(doc.text.begin(), doc.text.end(), '\f', '\n');
  if (pages == 0) throw Error(where + ": the PDF has no pages (its page tree is damaged or empty)");
  if (pages_without_text > 0 && pages_without_text < pages)
    doc.notice = where + ": " + std::to_string(pages_without_text) + " of " + std::to_string(pages) +
                 " pages have no text (scanned images or damaged pages are not read)";
  return doc;
}

}  // namespace lightdesk
