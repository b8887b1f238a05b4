// SentencePiece texts encoded in pieces, in parallel, against the library encoding the whole
// text in one pass: the ids must be identical, on the demo documents and on adversarial text.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <zlib.h>

#include <fstream>
#include <random>
#include <sstream>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::filesystem::path kDemoModel = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo";
const std::filesystem::path kDemo = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/demo";

std::vector<TokenId> library_ids(const std::filesystem::path& model_dir, const std::string& text) {
  sentencepiece::SentencePieceProcessor processor;
  EXPECT_TRUE(processor.Load((model_dir / "tokenizer.model").string()).ok());
  std::vector<int> ids;
  EXPECT_TRUE(processor.Encode(text, &ids).ok());
  return {ids.begin(), ids.end()};
}

std::string read_gzip(const std::filesystem::path& path) {
  gzFile file = gzopen(path.string().c_str(), "rb");
  EXPECT_NE(file, nullptr) << path;
  std::string text;
  char buffer[1 << 16];
  for (int n; (n = gzread(file, buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
  gzclose(file);
  return text;
}

// `bytes` of letters drawn at random, with `separator` (if any) every 3 to 12 letters.
std::string random_text(std::size_t bytes, char separator) {
  std::mt19937 rng(19);
  std::string text(bytes, 'a');
  std::size_t next_separator = 8;
  for (std::size_t i = 0; i < bytes; ++i) {
    if (separator && i == next_separator) {
      text[i] = separator;
      next_separator += 4 + rng() % 10;
    } else {
      const auto r = static_cast<char>(rng() % 52);
      text[i] = static_cast<char>(r < 26 ? 'a' + r : 'A' + r - 26);
    }
  }
  return text;
}

TEST(SentencePieceCuts, DemoDocumentsEncodeAsInOnePass) {
  const auto tokenizer = Tokenizer::open(kDemoModel);
  std::ifstream in(kDemo / "demo.txt", std::ios::binary);
  std::stringstream small;
  small << in.rdbuf();
  // The short demo document repeated: cut into many pieces (the million-token one below too).
  std::string text;
  while (text.size() < 700000) text += small.str();
  const auto expected = library_ids(kDemoModel, text);
  EXPECT_EQ(tokenizer->encode(text, 2), expected);
  EXPECT_EQ(tokenizer->encode(text, 1), expected);
}

TEST(SentencePieceCuts, MillionTokenDemoDocumentEncodesAsInOnePass) {
  const auto tokenizer = Tokenizer::open(kDemoModel);
  const std::string text = read_gzip(kDemo / "demo-1m.txt.gz");
  ASSERT_GT(text.size(), 3000000u);
  const auto ids = tokenizer->encode(text, 2);
  EXPECT_EQ(ids, library_ids(kDemoModel, text));
  EXPECT_GT(ids.size(), 990000u);
}

TEST(SentencePieceCuts, AdversarialTextEncodesAsInOnePass) {
  const auto tokenizer = Tokenizer::open(kDemoModel);
  // No spaces, only line breaks; one long word; one character repeated; words with every kind
  // of whitespace run between them.
  std::string mixed = random_text(600000, ' ');
  for (std::size_t i = 0; i < mixed.size(); i += 97) mixed[i] = "\n\t\r  \n\n \t"[i % 9];
  for (const std::string& text :
       {random_text(1 << 20, '\n'), random_text(1 << 20, 0), std::string(600000, 'a'), mixed}) {
    const auto expected = library_ids(kDemoModel, text);
    EXPECT_EQ(tokenizer->encode(text, 2), expected) << text.substr(0, 40);
  }
}

TEST(SentencePieceCuts, DocumentPromptReadsTheDocumentWhereItLies) {
  // The document's text is not copied into the prompt: it is encoded where the Document holds
  // it, joined to the template's text around it. Reference: the library over each run of the
  // rendered prompt between special tokens, in one pass.
  const auto tokenizer = Tokenizer::open(kDemoModel);
  const auto format = ChatFormat::for_model(kDemoModel, *tokenizer);
  std::ifstream in(kDemo / "demo.txt", std::ios::binary);
  std::stringstream small;
  small << in.rdbuf();
  Document document{"demo.txt", "text", "", {}};
  while (document.text.size() < 1000000) document.text += small.str();
  const std::string question = "What is the pass key?";
  const auto prompt = document_prompt(format, *tokenizer, {document}, question, 2);

  Conversation conversation;
  conversation.messages.push_back({ChatMessage::Role::User, {{ChatPart::Kind::Text, document_question_text({document}, question), {}}}});
  const std::string rendered = format.render(conversation).to_string();
  std::vector<TokenId> expected;
  std::size_t pos = 0;
  for (;;) {
    std::size_t best_at = rendered.size();
    std::string best;
    for (const std::string& special : tokenizer->special_tokens())
      if (const std::size_t at = rendered.find(special, pos); at < best_at) {
        best_at = at;
        best = special;
      }
    const auto run = library_ids(kDemoModel, rendered.substr(pos, best_at - pos));
    expected.insert(expected.end(), run.begin(), run.end());
    if (best.empty()) break;
    expected.push_back(*tokenizer->special_token_id(best));
    pos = best_at + best.size();
  }
  EXPECT_EQ(prompt.ids, expected);
  ASSERT_EQ(prompt.documents.size(), 1u);
  EXPECT_GT(prompt.documents[0].end_token - prompt.documents[0].first_token, 200000);
}

TEST(SentencePieceCuts, FiftyMegabyteWordIsCutWhereThePiecesAllow) {
  // Too long for the library in one pass (gigabytes of memory), so: the one-pass ids of its first
  // megabyte (cuts come every 16 KiB), and every byte of it in the ids.
  const auto tokenizer = Tokenizer::open(kDemoModel);
  const std::string word = random_text(50 << 20, 0);
  const auto ids = tokenizer->encode(word, 2);
  const auto head_ids = library_ids(kDemoModel, word.substr(0, 1 << 20));
  ASSERT_LT(head_ids.size(), ids.size());
  // The head's last few ids may merge with what follows it; the rest must match.
  EXPECT_TRUE(std::equal(head_ids.begin(), head_ids.end() - 8, ids.begin()));
  std::vector<std::size_t> token_size(static_cast<std::size_t>(tokenizer->vocab_size()));
  for (TokenId id = 0; id < tokenizer->vocab_size(); ++id)
    token_size[static_cast<std::size_t>(id)] = tokenizer->token_bytes(id).size();
  std::size_t bytes = 0;
  for (TokenId id : ids) bytes += token_size[static_cast<std::size_t>(id)];
  EXPECT_EQ(bytes, word.size() + 1);  // and the dummy prefix's space
}

}  // namespace
}  // namespace lightdesk
