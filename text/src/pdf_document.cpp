// PDF text per page through poppler-cpp.
#include <poppler/cpp/poppler-document.h>
#include <poppler/cpp/poppler-page.h>

#include <algorithm>
#include <memory>

#include "pdf_document.h"

namespace lightdesk {

Document load_pdf(const std::filesystem::path& path) {
  std::unique_ptr<poppler::document> pdf(poppler::document::load_from_file(path.string()));
  if (!pdf) throw Error(path.string() + ": not a readable PDF (damaged or not a PDF)");
  if (pdf->is_locked()) throw Error(path.string() + ": the PDF is encrypted with a password; it cannot be read");
  Document doc{path, "pdf", {}, {}};
  const int pages = pdf->pages();
  for (int i = 0; i < pages; ++i) {
    std::unique_ptr<poppler::page> page(pdf->create_page(i));
    if (!page) throw Error(path.string() + ": page " + std::to_string(i + 1) + " cannot be read");
    if (!doc.text.empty() && doc.text.back() != '\n') doc.text += '\n';
    doc.anchors.push_back({doc.text.size(), i + 1, 1});
    const poppler::byte_array utf8_text = page->text(poppler::rectf(), poppler::page::physical_layout).to_utf8();
    doc.text += sanitize_utf8(std::string_view(utf8_text.data(), utf8_text.size()));
  }
  // Page text comes with form feeds between pages in some layouts; they carry nothing.
  std::replace(doc.text.begin(), doc.text.end(), '\f', '\n');
  return doc;
}

}  // namespace lightdesk
