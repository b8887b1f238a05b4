// Document loaders on files made by tools/make_document_data.py (groff, qpdf, Python codecs).
#include <gtest/gtest.h>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::filesystem::path kDocs = std::filesystem::path(LIGHTDESK_TEST_DATA) / "documents";
const std::string kText = "Café déjà vu — 東京 🚀\nsecond line\n";

TEST(Documents, DetectsTextEncodings) {
  EXPECT_EQ(load_document(kDocs / "utf8.md").text, "# Title\n\n" + kText);
  EXPECT_EQ(load_document(kDocs / "utf8-bom.txt").text, kText);
  EXPECT_EQ(load_document(kDocs / "utf16le-bom.txt").text, kText);
  EXPECT_EQ(load_document(kDocs / "utf16be-bom.txt").text, kText);
  EXPECT_EQ(load_document(kDocs / "latin1.txt").text, "Café au lait, naïve façade, £5 ±1\n");
  EXPECT_EQ(load_document(kDocs / "source.cpp").text, "int main() {\n  return 0;  // µs\n}\n");
  const Document doc = load_document(kDocs / "utf8.md");
  EXPECT_EQ(doc.format, "text");
  EXPECT_TRUE(doc.anchors.empty());
}

TEST(Documents, ReplacesDamagedUtf8) {
  EXPECT_EQ(load_document(kDocs / "utf8-damaged.txt").text, "Café \xEF\xBF\xBD broken \xEF\xBF\xBD 東京\n");
}

TEST(Documents, ReadsPdfTextPerPageWithAnchors) {
  const Document doc = load_document(kDocs / "two-pages.pdf");
  EXPECT_EQ(doc.format, "pdf");
  ASSERT_EQ(doc.anchors.size(), 2u);
  EXPECT_EQ(doc.anchors[0].page, 1);
  EXPECT_EQ(doc.anchors[0].offset, 0u);
  EXPECT_EQ(doc.anchors[1].page, 2);
  const std::string page1 = doc.text.substr(0, doc.anchors[1].offset);
  const std::string page2 = doc.text.substr(doc.anchors[1].offset);
  EXPECT_NE(page1.find("Page one says hello."), std::string::npos) << page1;
  EXPECT_NE(page1.find("Second line with café."), std::string::npos) << page1;
  EXPECT_NE(page2.find("Page two talks about lightning attention."), std::string::npos) << page2;
  EXPECT_EQ(page2.find("hello"), std::string::npos);
}

void expect_error_mentioning(const std::filesystem::path& path, const std::string& words) {
  try {
    load_document(path);
    FAIL() << path << " loaded";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.filename().string()), std::string::npos) << message;
    EXPECT_NE(message.find(words), std::string::npos) << message;
  }
}

TEST(Documents, RefusesEncryptedBrokenAndMissingFilesClearly) {
  expect_error_mentioning(kDocs / "encrypted.pdf", "encrypted");
  expect_error_mentioning(kDocs / "damaged.pdf", "not a readable PDF");
  expect_error_mentioning(kDocs / "no-such-file.txt", "no such file");
}

TEST(Documents, TruncatedPdfFailsOrKeepsWhatItCanRead) {
  // poppler rebuilds a lost cross-reference table where it can; whatever it returns must be
  // valid text, never garbage bytes.
  try {
    const Document doc = load_document(kDocs / "truncated.pdf");
    EXPECT_EQ(sanitize_utf8(doc.text), doc.text);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated.pdf"), std::string::npos);
  }
}

}  // namespace
}  // namespace lightdesk
