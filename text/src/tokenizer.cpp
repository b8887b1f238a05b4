// The model directory decides the tokenizer kind; decoding is shared by all kinds.
#include <filesystem>

#include "lightdesk/text.h"
#include "bpe_tokenizer.h"
#include "sentencepiece_tokenizer.h"
#include "utf8.h"

namespace lightdesk {

std::unique_ptr<Tokenizer> Tokenizer::open(const std::filesystem::path& model_directory) {
  const auto json_file = model_directory / "tokenizer.json";
  if (std::filesystem::exists(json_file)) return open_bpe_tokenizer(json_file);
  const auto model_file = model_directory / "tokenizer.model";
  if (std::filesystem::exists(model_file)) return open_sentencepiece_tokenizer(model_file);
  throw Error(model_directory.string() + ": no tokenizer.json or tokenizer.model (the model directory has no tokenizer)");
}

std::vector<TokenId> Tokenizer::encode_joined(std::span<const std::string_view> parts, int threads) const {
  if (parts.size() == 1) return encode(parts.front(), threads);
  std::string text;
  for (std::string_view part : parts) text += part;
  return encode(text, threads);
}

std::string Tokenizer::decode(std::span<const TokenId> ids) const {
  std::string bytes;
  for (TokenId id : ids) bytes += token_bytes(id);
  if (drops_leading_space() && !bytes.empty() && bytes.front() == ' ') bytes.erase(0, 1);
  return sanitize_utf8(bytes);
}

std::string TokenStreamDecoder::feed(TokenId id) {
  pending_ += tokenizer_.token_bytes(id);
  if (!started_ && tokenizer_.drops_leading_space() && !pending_.empty() && pending_.front() == ' ')
    pending_.erase(0, 1);
  started_ = true;
  const std::size_t complete = utf8::complete_prefix(pending_);
  std::string out = sanitize_utf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string TokenStreamDecoder::finish() {
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace lightdesk
