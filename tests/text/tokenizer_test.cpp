// The tokenizer against Hugging Face `tokenizers`: tests/data/tokenizers/*/reference.json holds
// that library's ids for a varied corpus (tools/make_tokenizer_data.py).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::filesystem::path kData = LIGHTDESK_TEST_DATA;

struct Case {
  std::string text;
  std::vector<TokenId> ids, ids_with_special;
  std::string decoded;  // the text, after the normalizer if there is one
};

std::vector<Case> read_cases(const std::string& name) {
  std::ifstream in(kData / "tokenizers" / name / "reference.json");
  const auto root = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const auto& c : root.at("cases"))
    cases.push_back({c.at("text"), c.at("ids").get<std::vector<TokenId>>(),
                     c.at("ids_with_special").get<std::vector<TokenId>>(), c.at("decoded")});
  return cases;
}

class ReferenceTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTokenizer, EncodesLikeHuggingFaceWithSpecialTokensAsText) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / GetParam());
  const auto cases = read_cases(GetParam());
  ASSERT_GE(cases.size(), 20u);
  for (const Case& c : cases) EXPECT_EQ(tokenizer->encode(c.text, 1), c.ids) << "text: " << c.text;
}

TEST_P(ReferenceTokenizer, EncodesSpecialTokensWhenAllowed) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / GetParam());
  int with_special = 0;
  for (const Case& c : read_cases(GetParam())) {
    EXPECT_EQ(tokenizer->encode_with_special(c.text), c.ids_with_special) << "text: " << c.text;
    with_special += c.ids != c.ids_with_special;
  }
  EXPECT_GE(with_special, 3);  // the corpus does exercise special-token matching
}

TEST_P(ReferenceTokenizer, DecodesBackToTheText) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / GetParam());
  for (const Case& c : read_cases(GetParam())) {
    EXPECT_EQ(tokenizer->decode(c.ids), c.decoded);
    EXPECT_EQ(tokenizer->decode(c.ids_with_special), c.decoded);
  }
}

TEST_P(ReferenceTokenizer, StreamingDecoderEmitsOnlyCompleteCharacters) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / GetParam());
  for (const Case& c : read_cases(GetParam())) {
    TokenStreamDecoder decoder(*tokenizer);
    std::string text;
    for (TokenId id : c.ids) {
      const std::string chunk = decoder.feed(id);
      EXPECT_EQ(sanitize_utf8(chunk), chunk) << "an incomplete character came out";
      text += chunk;
    }
    text += decoder.finish();
    EXPECT_EQ(text, c.decoded);
  }
}

TEST_P(ReferenceTokenizer, ParallelEncodingGivesTheSameIds) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / GetParam());
  // About 1.5 MB: several parallel chunks, cut after line breaks in all kinds of text.
  std::string big;
  std::vector<TokenId> expected;
  const auto cases = read_cases(GetParam());
  for (int round = 0; big.size() < 1500000; ++round)
    for (const Case& c : cases) big += c.text + (round % 3 ? "\n" : "  \n\n ");
  expected = tokenizer->encode(big, 1);
  EXPECT_EQ(tokenizer->encode(big, 4), expected);
}

INSTANTIATE_TEST_SUITE_P(Trained, ReferenceTokenizer, ::testing::Values("gpt2-bpe", "cl100k-bpe", "nfkc-bpe", "tiny-512"));

TEST(Tokenizer, SpecialTokenStringsInUserTextStayText) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / "cl100k-bpe");
  const auto eos = tokenizer->special_token_id("<end_of_sentence>");
  ASSERT_TRUE(eos);
  EXPECT_TRUE(tokenizer->is_special(*eos));
  const auto ids = tokenizer->encode("a <end_of_sentence> b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *eos), 0);
  const auto trusted = tokenizer->encode_with_special("a <end_of_sentence> b");
  EXPECT_EQ(std::count(trusted.begin(), trusted.end(), *eos), 1);
}

TEST(Tokenizer, InvalidUtf8IsReadAsReplacementCharacters) {
  const auto tokenizer = Tokenizer::open(kData / "tokenizers" / "cl100k-bpe");
  const std::string bad = "ok \xE2\x82 then \xFF\xC0\xAF end \xF0\x9F\x98";
  const std::string replaced = "ok \xEF\xBF\xBD then \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD end \xEF\xBF\xBD";
  EXPECT_EQ(sanitize_utf8(bad), replaced);
  EXPECT_EQ(tokenizer->encode(bad), tokenizer->encode(replaced));
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(bad)), replaced);
}

TEST(Tokenizer, SanitizeKeepsValidUtf8AndSplitsInvalidSubparts) {
  EXPECT_EQ(sanitize_utf8("h\xC3\xA9llo \xF0\x9F\x91\x8D"), "h\xC3\xA9llo \xF0\x9F\x91\x8D");
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate: 3 bytes bad
  EXPECT_EQ(sanitize_utf8("\xE0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong lead
  EXPECT_EQ(sanitize_utf8("\xF0\x9F\x91"), "\xEF\xBF\xBD");                          // truncated: one
}

TEST(Tokenizer, BundledModelHasExactlyItsVocabulary) {
  for (const char* dir : {LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8", LIGHTDESK_TEST_DATA "/tiny-a-m1-rd8"}) {
    const auto tokenizer = Tokenizer::open(dir);
    EXPECT_EQ(tokenizer->vocab_size(), Model::inspect(dir).vocab_size) << dir;
    EXPECT_EQ(tokenizer->special_token_id("<end_of_sentence>"), Model::inspect(dir).eos_token_id) << dir;
  }
}

TEST(SentencePieceTokenizer, EncodesAndDecodesLikeThePythonPackage) {
  const auto dir = kData / "tokenizers" / "spm-bpe";
  const auto tokenizer = Tokenizer::open(dir);  // no tokenizer.json there: tokenizer.model
  std::ifstream in(dir / "reference.json");
  const auto root = nlohmann::json::parse(in);
  ASSERT_GE(root.at("cases").size(), 20u);
  for (const auto& c : root.at("cases")) {
    const std::string text = c.at("text");
    const auto expected = c.at("ids").get<std::vector<TokenId>>();
    EXPECT_EQ(tokenizer->encode(text), expected) << text;
    EXPECT_EQ(tokenizer->decode(expected), c.at("decoded").get<std::string>()) << text;
    TokenStreamDecoder decoder(*tokenizer);
    std::string streamed;
    for (TokenId id : expected) streamed += decoder.feed(id);
    EXPECT_EQ(streamed + decoder.finish(), c.at("decoded").get<std::string>()) << text;
  }
  // MiniMax's tokens are control symbols: text never turns into them, trusted text does.
  const auto eos = tokenizer->special_token_id("<end_of_sentence>");
  ASSERT_TRUE(eos);
  const auto ids = tokenizer->encode("a <end_of_sentence> b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *eos), 0);
  const auto trusted = tokenizer->encode_with_special("a <end_of_sentence> b");
  EXPECT_EQ(std::count(trusted.begin(), trusted.end(), *eos), 1);
}

TEST(Tokenizer, MissingOrBrokenFilesNameTheCause) {
  EXPECT_THROW(Tokenizer::open(kData / "no-such-model"), Error);
  try {
    Tokenizer::open(kData / "tiny-a-hf");  // a model directory without a tokenizer
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::open(kData / "tokenizers" / "cl100k-bpe")->token_bytes(999999), Error);
}

// Damaged tokenizer.json files: each gives one line naming the file, never a crash.
class HostileTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_);
    std::ifstream in(kData / "tokenizers" / "tiny-512" / "tokenizer.json");
    base_ = nlohmann::json::parse(in);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string error_of(const nlohmann::json& j) { return error_of_text(j.dump()); }
  std::string error_of_text(const std::string& text) {
    std::ofstream(dir_ / "tokenizer.json") << text;
    try {
      Tokenizer::open(dir_)->encode("hello world", 1);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::filesystem::path dir_ = std::filesystem::temp_directory_path() /
                               ("lightdesk-tokenizer-" + std::to_string(::getpid()));
  nlohmann::json base_;
};

TEST_F(HostileTokenizer, AddedTokenIdsOutOfRangeAreRefused) {
  for (const long long id : {-1LL, 4294967297LL, 1000000000LL}) {
    nlohmann::json j = base_;
    j["added_tokens"].push_back({{"id", id}, {"content", "<zz>"}, {"special", true}});
    const std::string e = error_of(j);
    EXPECT_NE(e.find("tokenizer.json: added token \"<zz>\" has id " + std::to_string(id) + ", outside 0.."),
              std::string::npos)
        << e;
  }
  nlohmann::json j = base_;
  j["model"]["vocab"]["zz"] = -5;
  EXPECT_NE(error_of(j).find("vocab id of \"zz\" -5, outside"), std::string::npos) << error_of(j);
}

// 100,000 levels are refused before parsing (the JSON library recurses when copying and freeing
// values); 20 levels parse, and the tokenizer refuses them instead of recursing.
TEST_F(HostileTokenizer, DeeplyNestedSequencesAreRefusedNotRecursedInto) {
  for (const char* key : {"normalizer", "pre_tokenizer"}) {
    const std::string list = std::string(key) == "normalizer" ? "normalizers" : "pretokenizers";
    for (const auto& [depth, expected] : {std::pair{100000, "JSON nested more than 64 levels deep"},
                                          std::pair{20, "Sequences nest more than 16 deep"}}) {
      std::string nested;
      for (int i = 0; i < depth; ++i) nested += "{\"type\":\"Sequence\",\"" + list + "\":[";
      nested += "null";
      for (int i = 0; i < depth; ++i) nested += "]}";
      nlohmann::json j = base_;
      j[key] = nullptr;
      std::string text = j.dump();
      const std::string slot = "\"" + std::string(key) + "\":null";
      text.replace(text.find(slot), slot.size(), "\"" + std::string(key) + "\":" + nested);
      const std::string e = error_of_text(text);
      EXPECT_NE(e.find("tokenizer.json: "), std::string::npos) << e.substr(0, 200);
      EXPECT_NE(e.find(expected), std::string::npos) << e.substr(0, 200);
    }
  }
}

TEST_F(HostileTokenizer, WrongTypesGiveOneLineNamingTheFile) {
  for (const auto& [path, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"/model", 5}, {"/model/vocab", "x"}, {"/model/merges", {5}}, {"/added_tokens", {{{"id", "x"}}}}}) {
    nlohmann::json j = base_;
    j[nlohmann::json::json_pointer(path)] = value;
    const std::string e = error_of(j);
    EXPECT_EQ(e.find("[json.exception"), std::string::npos) << path << ": " << e;
    EXPECT_NE(e.find("tokenizer.json: "), std::string::npos) << path << ": " << e;
  }
  EXPECT_NE(error_of_text("[1, 2]").find("tokenizer.json: not a tokenizer"), std::string::npos);
}

TEST_F(HostileTokenizer, FifoInPlaceOfTheTokenizerIsRefused) {
  ASSERT_EQ(::mkfifo((dir_ / "tokenizer.json").c_str(), 0600), 0);
  try {
    Tokenizer::open(dir_);
    FAIL() << "a FIFO was read as tokenizer.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: a FIFO"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lightdesk
