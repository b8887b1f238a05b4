// Encoding and decoding text with the test tokenizers: the first byte picks the tokenizer
// (byte-level BPE, cl100k-style BPE, NFKC BPE, SentencePiece), the rest is the text.
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "lightdesk/text.h"

using namespace lightdesk;

namespace {

struct TestTokenizer {
  std::unique_ptr<Tokenizer> tokenizer;
  // Decoding gives back the text (invalid UTF-8 as U+FFFD): byte-level BPE without a normalizer.
  bool round_trips = false;
};

std::vector<TestTokenizer> load_tokenizers() {
  const std::filesystem::path data = LIGHTDESK_TEST_DATA;
  std::vector<TestTokenizer> all;
  all.push_back({Tokenizer::open(data / "tiny-a-m1-rd8"), true});
  all.push_back({Tokenizer::open(data / "tokenizers/cl100k-bpe"), true});
  all.push_back({Tokenizer::open(data / "tokenizers/nfkc-bpe"), false});
  all.push_back({Tokenizer::open(data / "tokenizers/spm-bpe"), false});
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<TestTokenizer> tokenizers = load_tokenizers();
  if (size == 0) return 0;
  const TestTokenizer& test = tokenizers[data[0] % tokenizers.size()];
  const Tokenizer& tokenizer = *test.tokenizer;
  const std::string_view text = fuzz::as_text(data + 1, size - 1);
  const int vocab = tokenizer.vocab_size();

  for (const auto& ids : {tokenizer.encode(text, 1), tokenizer.encode_with_special(text)}) {
    for (TokenId id : ids) fuzz::check(id >= 0 && id < vocab, "encoded ids are inside the vocabulary");
    const std::string decoded = tokenizer.decode(ids);
    fuzz::check(sanitize_utf8(decoded) == decoded, "decoded text is valid UTF-8");
    TokenStreamDecoder stream(tokenizer);
    std::string streamed;
    for (TokenId id : ids) streamed += stream.feed(id);
    streamed += stream.finish();
    fuzz::check(streamed == decoded, "decoding token by token gives the text decoding all at once does");
  }
  if (test.round_trips)
    fuzz::check(tokenizer.decode(tokenizer.encode(text, 1)) == sanitize_utf8(text),
                "byte-level BPE decodes to the text it encoded");
  return 0;
}
