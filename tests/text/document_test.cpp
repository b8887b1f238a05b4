// Document loaders on files made by tools/make_document_data.py (groff, qpdf, Python codecs).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <span>
#include <vector>

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

TEST(Documents, ReadsHtmlAsMarkdownLikeText) {
  const Document doc = load_document(kDocs / "page.html");
  EXPECT_EQ(doc.format, "html");
  EXPECT_EQ(doc.text,
            "# Main heading\n\n"
            "First paragraph with bold and a link & an entity: café 東京.\n\n"
            "- one\n- two\n\n"
            "## Code\n\n"
            "  indented\n    more\n\n"
            "Latin-1 byte: été\nafter break\n");
}

TEST(Documents, PromptKnowsWhereEachDocumentAndPageLies) {
  const std::filesystem::path model = LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8";
  const auto tokenizer = Tokenizer::open(model);
  const auto format = ChatFormat::for_model(model, *tokenizer);
  const std::vector<Document> docs{load_document(kDocs / "two-pages.pdf"), load_document(kDocs / "utf8.md")};
  const DocumentPrompt prompt = document_prompt(format, *tokenizer, docs, "What is on page two?");
  ASSERT_EQ(prompt.documents.size(), 2u);
  auto text_of = [&](std::int64_t first, std::int64_t end) {
    return tokenizer->decode(std::span(prompt.ids).subspan(static_cast<std::size_t>(first),
                                                           static_cast<std::size_t>(end - first)));
  };
  std::int64_t previous_end = 0;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const auto& span = prompt.documents[i];
    EXPECT_EQ(span.path, docs[i].path);
    EXPECT_GT(span.first_token, previous_end);
    EXPECT_LE(span.end_token, static_cast<std::int64_t>(prompt.ids.size()));
    previous_end = span.end_token;
    // The span holds the document (its last line break may share a token with what follows).
    const std::string spanned = text_of(span.first_token, span.end_token + 1);
    const std::string body = docs[i].text.substr(docs[i].anchors.empty() ? 0 : docs[i].anchors.back().offset);
    EXPECT_NE(spanned.find(body.substr(0, body.size() - 1)), std::string::npos) << spanned;
  }
  const auto& pdf = prompt.documents[0];
  ASSERT_EQ(pdf.anchors.size(), 2u);
  EXPECT_EQ(pdf.anchors[1].first.page, 2);
  EXPECT_EQ(text_of(pdf.anchors[1].second, pdf.end_token).rfind("Page two talks", 0), 0u)
      << text_of(pdf.anchors[1].second, pdf.end_token);
  EXPECT_EQ(text_of(pdf.anchors[0].second, pdf.anchors[1].second).rfind("Page one says hello.", 0), 0u);
  const std::string whole = tokenizer->decode(prompt.ids);
  EXPECT_EQ(whole.rfind("<begin_of_document><beginning_of_sentence>user name=user\nDocument: two-pages.pdf\n", 0), 0u)
      << whole;
  EXPECT_NE(whole.find("Question: What is on page two?<end_of_sentence>\n"), std::string::npos) << whole;
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

class HostileDocuments : public ::testing::Test {
 protected:
  std::filesystem::path write(const std::string& name, const std::string& bytes) {
    const auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  std::string error_of(const std::filesystem::path& path, std::uint64_t limit = kMaxDocumentBytes) {
    try {
      load_document(path, limit);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_ = [] {
    auto d = std::filesystem::temp_directory_path() /
             ("lightdesk-documents-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(d);
    return d;
  }();
};

// libxml2 drops everything below 256 open elements unless told otherwise; the walk over the tree
// must not recurse either, since the file decides the depth.
TEST_F(HostileDocuments, DeeplyNestedHtmlKeepsAllItsText) {
  for (const char* tag : {"<div>", "<b>", "<span>"}) {
    std::string html = "<html><body>";
    for (int i = 0; i < 300; ++i) html += std::string(tag) + "w" + std::to_string(i) + " ";
    html += "THE-END</body></html>";
    const Document doc = load_document(write("nested.html", html));
    EXPECT_NE(doc.text.find("w299"), std::string::npos) << tag;
    EXPECT_NE(doc.text.find("THE-END"), std::string::npos) << tag;
  }
  std::string deep = "<html><body>";
  for (int i = 0; i < 100000; ++i) deep += "<div>";
  deep += "bottom</body></html>";
  EXPECT_NE(load_document(write("deep.html", deep)).text.find("bottom"), std::string::npos);
}

std::string encode_wide(const std::u32string& text, int width, bool big_endian) {
  std::string out;
  for (char32_t c : text) {
    std::vector<char32_t> units;
    if (width == 2 && c >= 0x10000) {
      units = {0xD800 + ((c - 0x10000) >> 10), 0xDC00 + ((c - 0x10000) & 0x3FF)};
    } else {
      units = {c};
    }
    for (char32_t u : units)
      for (int b = 0; b < width; ++b) {
        const int shift = 8 * (big_endian ? width - 1 - b : b);
        out += static_cast<char>((u >> shift) & 0xFF);
      }
  }
  return out;
}

TEST_F(HostileDocuments, Utf16WithoutBomAndUtf32AreRecognised) {
  const std::u32string text = U"Plain English text, with a Café and 東京 🚀\nsecond line\n";
  const std::string utf8 = "Plain English text, with a Café and 東京 🚀\nsecond line\n";
  EXPECT_EQ(load_document(write("le16.txt", encode_wide(text, 2, false))).text, utf8);
  EXPECT_EQ(load_document(write("be16.txt", encode_wide(text, 2, true))).text, utf8);
  EXPECT_EQ(load_document(write("le32.txt", encode_wide(text, 4, false))).text, utf8);
  EXPECT_EQ(load_document(write("be32.txt", encode_wide(text, 4, true))).text, utf8);
  EXPECT_EQ(load_document(write("le32bom.txt", encode_wide(U"\uFEFF" + text, 4, false))).text, utf8);
  EXPECT_EQ(load_document(write("be32bom.txt", encode_wide(U"\uFEFF" + text, 4, true))).text, utf8);
}

TEST_F(HostileDocuments, BinaryEmptyAndTextlessFilesAreReported) {
  EXPECT_NE(error_of(write("binary.txt", std::string("\x7f" "ELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0", 20)))
                .find("binary.txt: holds binary data"),
            std::string::npos);
  EXPECT_NE(error_of(write("empty.txt", "")).find("empty.txt: no text in it (an empty file)"), std::string::npos);
  EXPECT_NE(error_of(write("blank.md", " \n\t\n")).find("blank.md: no text in it (only white space)"),
            std::string::npos);
  EXPECT_NE(error_of(write("script.html", "<html><script>var x = 1;</script></html>")).find("script.html: no text"),
            std::string::npos);
}

// A PDF whose page tree is damaged opens with no pages or pages without text: reported, never
// returned as an empty document.
TEST_F(HostileDocuments, PdfWithADamagedPageTreeIsReported) {
  std::ifstream in(kDocs / "two-pages.pdf", std::ios::binary);
  std::string pdf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* from : {"/Kids", "/Count", "/Pages"}) {
    std::string damaged = pdf;
    for (std::size_t at = damaged.find(from); at != std::string::npos; at = damaged.find(from, at + 1))
      damaged[at + 1] = 'X';
    const auto path = write("damaged-tree.pdf", damaged);
    try {
      const Document doc = load_document(path);
      EXPECT_NE(doc.text.find_first_not_of(" \n"), std::string::npos) << from;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("damaged-tree.pdf: "), std::string::npos) << e.what();
    }
  }
}

TEST_F(HostileDocuments, FifosDevicesAndOversizedFilesAreRefusedWithoutReading) {
  const auto fifo = dir_ / "notes.txt";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of(fifo).find("notes.txt: a FIFO (named pipe), not a regular file"), std::string::npos);
  std::filesystem::create_symlink("/dev/zero", dir_ / "zero.txt");
  EXPECT_NE(error_of(dir_ / "zero.txt").find("zero.txt: a character device"), std::string::npos);
  std::filesystem::create_symlink("/dev/zero", dir_ / "zero.pdf");
  EXPECT_NE(error_of(dir_ / "zero.pdf").find("zero.pdf: a character device"), std::string::npos);
  const auto big = write("big.txt", std::string(1000, 'a'));
  EXPECT_NE(error_of(big, document_byte_limit(10)).find("big.txt: 1.0 kB is more than the model's context can hold"),
            std::string::npos)
      << error_of(big, document_byte_limit(10));
  EXPECT_EQ(load_document(big, document_byte_limit(1000)).text.size(), 1000u);
  EXPECT_NE(error_of(kDocs / "two-pages.pdf", 10).find("more than the model's context can hold"), std::string::npos);
}

}  // namespace
}  // namespace lightdesk
