// PDF text per page: poppler-cpp in builds with LIGHTDESK_WITH_PDF (pdf_document.cpp), else a
// clear refusal (no_pdf_document.cpp), so GPU machines without poppler still build the CLI.
#pragma once

#include <filesystem>

#include "lightdesk/text.h"

namespace lightdesk {

// The text of each page, with an anchor at each page's start, of a file that starts with "%PDF-".
// The text of at most max_text_bytes; a longer text is an Error.
Document load_pdf(const std::filesystem::path& path, std::uint64_t max_text_bytes);

}  // namespace lightdesk
