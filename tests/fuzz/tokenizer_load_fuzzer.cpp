// Loading a tokenizer: the input is tokenizer.json (Hugging Face BPE) when its first byte is even,
// else tokenizer.model (SentencePiece), followed by the file's bytes. An accepted tokenizer then
// encodes and decodes a fixed text.
#include "fuzz_util.h"
#include "lightdesk/text.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDirectory directory;
  if (size == 0) return 0;
  const bool json = data[0] % 2 == 0;
  directory.remove(json ? "tokenizer.model" : "tokenizer.json");
  directory.write(json ? "tokenizer.json" : "tokenizer.model", fuzz::as_text(data + 1, size - 1));
  fuzz::expect_clear_error([&] {
    const auto tokenizer = Tokenizer::open(directory.path());
    const int vocab = tokenizer->vocab_size();
    auto check_ids = [&](const std::vector<TokenId>& ids) {
      for (TokenId id : ids) fuzz::check(id >= 0 && id < vocab, "encoded ids are inside the vocabulary");
    };
    const std::string text = "Hello, world! <think>2 + 2</think> caf\xC3\xA9 \xF0\x9F\x98\x80\n\n  x";
    const auto ids = tokenizer->encode(text, 1);
    check_ids(ids);
    tokenizer->decode(ids);
    for (const std::string& special : tokenizer->special_tokens()) {
      const auto id = tokenizer->special_token_id(special);
      fuzz::check(id && *id >= 0 && *id < vocab && tokenizer->is_special(*id), "special tokens have ids");
      check_ids(tokenizer->encode_with_special(text + special));
    }
  });
  return 0;
}
