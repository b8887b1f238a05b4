// Document loading: the first byte picks the file's extension (plain text, Markdown or HTML; a
// "%PDF-" start is read as PDF whatever the extension), the rest is the file. Loaded text is
// valid UTF-8 and PDF anchors point into it in order.
#include "fuzz_util.h"
#include "lightdesk/text.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDirectory directory;
  if (size == 0) return 0;
  static const char* const kNames[] = {"document.txt", "document.md", "document.html", "document.pdf"};
  const std::string name = kNames[data[0] % 4];
  const auto file = directory.write(name, fuzz::as_text(data + 1, size - 1));
  fuzz::expect_clear_error([&] {
    const Document document = load_document(file);
    fuzz::check(sanitize_utf8(document.text) == document.text, "a document's text is valid UTF-8");
    std::size_t previous = 0;
    for (const DocumentAnchor& anchor : document.anchors) {
      fuzz::check(anchor.offset >= previous && anchor.offset <= document.text.size(),
                  "anchors point into the text in order");
      previous = anchor.offset;
    }
  });
  directory.remove(name);
  return 0;
}
