// SentencePiece models (tokenizer.model) through Debian's libsentencepiece, for models that ship
// one instead of a tokenizer.json.
#include "sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "lightdesk/input_files.h"
#include "utf8.h"

namespace lightdesk {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& file) {
    // Read here: SentencePiece itself would read a FIFO or a device without end.
    const auto status = processor_.LoadFromSerializedProto(read_regular_file(file, kMaxConfigFileBytes));
    if (!status.ok()) throw Error(file.string() + ": not a readable SentencePiece model: " + status.ToString());
    // Control symbols are the special tokens. (User-defined symbols are not: SentencePiece itself
    // matches them in any text.)
    for (int id = 0; id < processor_.GetPieceSize(); ++id)
      if (processor_.IsControl(id)) specials_.push_back(id);
    // With add_dummy_prefix (the default) encoding puts a space before the text; decoding drops it.
    const auto pieces = processor_.EncodeAsPieces("a");
    dummy_prefix_ = !pieces.empty() && pieces.front().rfind(kSpaceMark, 0) == 0;
  }

  std::vector<TokenId> encode(std::string_view text, int) const override {
    // Control symbols are never matched in text by SentencePiece itself.
    std::vector<int> ids;
    const auto status = processor_.Encode(sanitize_utf8(text), &ids);
    if (!status.ok()) throw Error("SentencePiece encoding failed: " + status.ToString());
    return {ids.begin(), ids.end()};
  }

  std::vector<TokenId> encode_with_special(std::string_view text) const override {
    std::vector<TokenId> ids;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t best_at = text.size(), best_size = 0;
      TokenId best = -1;
      for (TokenId id : specials_) {
        const std::string& piece = processor_.IdToPiece(id);
        const std::size_t at = piece.empty() ? std::string_view::npos : text.find(piece, pos);
        if (at < best_at || (at == best_at && at != text.size() && piece.size() > best_size)) {
          best_at = at;
          best_size = piece.size();
          best = id;
        }
      }
      const auto part = encode(text.substr(pos, best_at - pos), 1);
      ids.insert(ids.end(), part.begin(), part.end());
      if (best < 0) break;
      ids.push_back(best);
      pos = best_at + best_size;
    }
    return ids;
  }

  std::string token_bytes(TokenId id) const override {
    if (id < 0 || id >= vocab_size())
      throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" + std::to_string(vocab_size()) +
                  " ids)");
    const std::string& piece = processor_.IdToPiece(id);
    if (processor_.IsByte(id)) return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    std::string bytes;
    for (std::size_t pos = 0; pos < piece.size();) {
      if (piece.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
        bytes += ' ';
        pos += kSpaceMark.size();
      } else {
        bytes += piece[pos++];
      }
    }
    return bytes;
  }

  std::optional<TokenId> special_token_id(std::string_view content) const override {
    for (TokenId id : specials_)
      if (processor_.IdToPiece(id) == content) return id;
    return std::nullopt;
  }
  bool is_special(TokenId id) const override { return std::find(specials_.begin(), specials_.end(), id) != specials_.end(); }
  std::vector<std::string> special_tokens() const override {
    std::vector<std::string> contents;
    for (TokenId id : specials_) contents.push_back(processor_.IdToPiece(id));
    return contents;
  }
  int vocab_size() const override { return processor_.GetPieceSize(); }
  bool drops_leading_space() const override { return dummy_prefix_; }

 private:
  sentencepiece::SentencePieceProcessor processor_;
  std::vector<TokenId> specials_;
  bool dummy_prefix_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> open_sentencepiece_tokenizer(const std::filesystem::path& model_file) {
  return std::make_unique<SentencePieceTokenizer>(model_file);
}

}  // namespace lightdesk
