// PDF documents in builds without poppler (LIGHTDESK_WITH_PDF=OFF).
#include "pdf_document.h"

namespace lightdesk {

Document load_pdf(const std::filesystem::path& path, std::uint64_t) {
  throw Error("cannot read " + path.string() +
              ": this build of Lightdesk has no PDF support (built with LIGHTDESK_WITH_PDF=OFF)");
}

}  // namespace lightdesk
