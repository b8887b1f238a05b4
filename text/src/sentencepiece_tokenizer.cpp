// SentencePiece models (tokenizer.model) through Debian's libsentencepiece, for models that ship
// one instead of a tokenizer.json.
//
// Large texts are cut where the model's rules make cutting exact and the pieces are encoded in
// parallel, each by the library in one pass. For a BPE model (SentencePiece's own BPE: two
// adjacent symbols merge only when their concatenation is a piece, highest score first, leftmost
// first among equals), a boundary between two characters that are adjacent in no piece is never
// merged across, and the merges on either side of it do not depend on each other: encoding the
// two sides apart gives the ids of encoding them together. Cuts are made only between ASCII
// characters that the built-in normalizers leave as they are (a single space or line break
// between two of them becomes one U+2581 there, which the dummy prefix of the next piece stands
// for), so that normalising the pieces apart gives the normalised whole. A model of any other kind
// (unigram, whose Viterbi search may break near-ties differently on a shorter text; a custom
// normalizer; whitespace as suffix) and a run with no such boundary are encoded in one pass.
#include "sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <deque>
#include <optional>

#include "lightdesk/input_files.h"
#include "lightdesk/thread_pool.h"
#include "utf8.h"

namespace lightdesk {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space
// Texts are encoded in pieces of about this size, on several threads when there are several: the
// library takes about a hundred bytes of memory per byte it encodes at once, and is faster on
// short pieces than on long ones.
constexpr std::size_t kChunkBytes = 16 * 1024;

// Protocol-buffer wire format, just enough to read and edit the few fields of
// sentencepiece_model.proto that decide where cutting is exact (Debian ships the library without
// that message's header).
struct ProtoField {
  std::uint32_t number = 0;
  std::uint32_t wire_type = 0;
  std::uint64_t value = 0;  // varint fields
  std::string_view bytes;   // length-delimited fields
  std::string_view raw;     // the whole field as encoded
};

std::uint64_t read_varint(std::string_view data, std::size_t& pos) {
  std::uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= data.size()) throw Error("truncated varint");
    const auto byte = static_cast<unsigned char>(data[pos++]);
    value |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
    if (byte < 0x80) return value;
  }
  throw Error("varint too long");
}

void write_varint(std::string& out, std::uint64_t value) {
  for (; value >= 0x80; value >>= 7) out += static_cast<char>((value & 0x7F) | 0x80);
  out += static_cast<char>(value);
}

std::vector<ProtoField> proto_fields(std::string_view message) {
  std::vector<ProtoField> fields;
  for (std::size_t pos = 0; pos < message.size();) {
    const std::size_t begin = pos;
    const std::uint64_t key = read_varint(message, pos);
    ProtoField field{static_cast<std::uint32_t>(key >> 3), static_cast<std::uint32_t>(key & 7), 0, {}, {}};
    std::size_t length = 0;
    switch (field.wire_type) {
      case 0: field.value = read_varint(message, pos); break;
      case 1: length = 8; break;
      case 2: length = static_cast<std::size_t>(read_varint(message, pos)); break;
      case 5: length = 4; break;
      default: throw Error("unsupported wire type " + std::to_string(field.wire_type));
    }
    if (length > message.size() - pos) throw Error("truncated field " + std::to_string(field.number));
    field.bytes = message.substr(pos, length);
    pos += length;
    field.raw = message.substr(begin, pos - begin);
    fields.push_back(field);
  }
  return fields;
}

std::optional<std::uint64_t> varint_field(const std::vector<ProtoField>& fields, std::uint32_t number) {
  std::optional<std::uint64_t> value;
  for (const ProtoField& f : fields)
    if (f.number == number && f.wire_type == 0) value = f.value;
  return value;
}

// ModelProto fields: trainer_spec = 2 (model_type = 3, treat_whitespace_as_suffix = 24),
// normalizer_spec = 3 (name = 1, add_dummy_prefix = 3, remove_extra_whitespaces = 4,
// escape_whitespaces = 5).
constexpr std::uint32_t kTrainerSpec = 2, kNormalizerSpec = 3;
constexpr std::uint32_t kModelType = 3, kWhitespaceAsSuffix = 24;
constexpr std::uint32_t kNormalizerName = 1, kAddDummyPrefix = 3, kEscapeWhitespaces = 5;
constexpr std::uint64_t kBpeModel = 2;

// The serialized model with add_dummy_prefix set to `on`.
std::string with_dummy_prefix(std::string_view model, bool on) {
  std::string out;
  for (const ProtoField& top : proto_fields(model)) {
    if (top.number != kNormalizerSpec || top.wire_type != 2) {
      out += top.raw;
      continue;
    }
    std::string spec;
    for (const ProtoField& f : proto_fields(top.bytes))
      if (f.number != kAddDummyPrefix) spec += f.raw;
    write_varint(spec, kAddDummyPrefix << 3);
    write_varint(spec, on ? 1 : 0);
    write_varint(out, kNormalizerSpec << 3 | 2);
    write_varint(out, spec.size());
    out += spec;
  }
  return out;
}

bool is_graphic_ascii(char c) { return c > ' ' && c < 0x7F; }

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
    read_cut_rules();
  }

  std::vector<TokenId> encode(std::string_view text, int threads) const override {
    return encode_joined({&text, 1}, threads);
  }

  // The parts' own stretches between cuts are encoded where they lie; only the stretches that
  // run across a join (from a part's last cut to the next part's first) are copied.
  std::vector<TokenId> encode_joined(std::span<const std::string_view> parts, int threads) const override {
    std::vector<Stretch> stretches;
    std::deque<std::string> joined;  // the copied stretches (stable addresses)
    std::string pending;             // a stretch that runs on into the next part
    Start pending_start = Start::TextStart;
    for (std::string_view part : parts) {
      const std::vector<Cut> cuts = find_cuts(part);
      if (cuts.size() == 2) {  // no cut inside
        pending += part;
        continue;
      }
      for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
        // A stretch ends before the space that the next one's dummy prefix stands for.
        const std::size_t end = cuts[i + 1].after_space ? cuts[i + 1].at - 1 : cuts[i + 1].at;
        const std::string_view text = part.substr(cuts[i].at, end - cuts[i].at);
        const Start start = cuts[i].after_space ? Start::AfterSpace : Start::Joined;
        if (i == 0) {
          pending += text;
          stretches.push_back({joined.emplace_back(std::move(pending)), pending_start});
          pending.clear();
        } else if (i + 2 == cuts.size()) {
          pending = text;
          pending_start = start;
        } else {
          stretches.push_back({text, start});
        }
      }
    }
    if (!pending.empty() || stretches.empty()) stretches.push_back({joined.emplace_back(std::move(pending)), pending_start});

    std::vector<TokenId> ids;
    const bool parallel = threads != 1 && stretches.size() > 1;
    std::optional<ThreadPool> pool;
    if (parallel) pool.emplace(threads);
    // Blocks of a few stretches per worker keep the memory held at once bounded.
    const std::size_t block = pool ? static_cast<std::size_t>(pool->size()) * 4 : 1;
    std::vector<std::vector<int>> block_ids(block);
    for (std::size_t first = 0; first < stretches.size(); first += block) {
      const std::size_t count = std::min(block, stretches.size() - first);
      auto encode_stretch = [&](std::int64_t i) {
        const Stretch& stretch = stretches[first + static_cast<std::size_t>(i)];
        const auto& processor = stretch.start == Start::TextStart    ? processor_
                                : stretch.start == Start::AfterSpace ? prefixed()
                                                                     : unprefixed();
        auto& out = block_ids[static_cast<std::size_t>(i)];
        out.clear();
        const auto status = processor.Encode(sanitize_utf8(stretch.text), &out);
        if (!status.ok()) throw Error("SentencePiece encoding failed: " + status.ToString());
      };
      if (pool && count > 1)
        pool->parallel_for(static_cast<std::int64_t>(count), encode_stretch);
      else
        for (std::size_t i = 0; i < count; ++i) encode_stretch(static_cast<std::int64_t>(i));
      for (std::size_t i = 0; i < count; ++i) ids.insert(ids.end(), block_ids[i].begin(), block_ids[i].end());
    }
    return ids;
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
  // Where a piece of the text starts: right after a character its predecessor never merges with,
  // or after a single whitespace character between two such characters (the piece is then
  // encoded with a dummy prefix, which stands for the whitespace).
  struct Cut {
    std::size_t at = 0;
    bool after_space = false;
  };
  // How a stretch of text between cuts is encoded: as the text's start (the model's own
  // settings), after a whitespace character that its dummy prefix stands for, or without a
  // dummy prefix.
  enum class Start { TextStart, AfterSpace, Joined };
  struct Stretch {
    std::string_view text;
    Start start = Start::TextStart;
  };

  const sentencepiece::SentencePieceProcessor& prefixed() const { return dummy_prefix_ ? processor_ : *other_; }
  const sentencepiece::SentencePieceProcessor& unprefixed() const { return dummy_prefix_ ? *other_ : processor_; }

  // Reads from the model whether and where cutting is exact (see the top of the file).
  void read_cut_rules() {
    const std::string model = processor_.serialized_model_proto();
    std::vector<ProtoField> trainer, normalizer;
    try {
      for (const ProtoField& f : proto_fields(model)) {
        if (f.wire_type != 2) continue;
        if (f.number == kTrainerSpec) trainer = proto_fields(f.bytes);
        if (f.number == kNormalizerSpec) normalizer = proto_fields(f.bytes);
      }
    } catch (const Error&) {
      return;  // unreadable here (the library read it): encode in one pass
    }
    std::string name;
    for (const ProtoField& f : normalizer)
      if (f.number == kNormalizerName && f.wire_type == 2) name = f.bytes;
    // Built-in normalizers: Unicode NFKC (leaves printable ASCII as is), the "nmt" ones also
    // mapping control and whitespace characters, "_cf" ones also folding case.
    static const std::array<std::string_view, 5> kBuiltIn = {"nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity"};
    if (varint_field(trainer, kModelType).value_or(1) != kBpeModel ||
        varint_field(trainer, kWhitespaceAsSuffix).value_or(0) != 0 ||
        varint_field(normalizer, kEscapeWhitespaces).value_or(1) != 1 || normalizer.empty() ||
        std::find(kBuiltIn.begin(), kBuiltIn.end(), name) == kBuiltIn.end())
      return;
    fold_case_ = name.size() > 3 && name.compare(name.size() - 3, 3, "_cf") == 0;
    other_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    if (!other_->LoadFromSerializedProto(with_dummy_prefix(model, !dummy_prefix_)).ok()) {
      other_.reset();
      return;
    }
    // Which characters follow one another inside a piece that merges can make.
    bool space_inside = false;
    for (int id = 0; id < processor_.GetPieceSize(); ++id) {
      if (processor_.IsControl(id) || processor_.IsUnknown(id) || processor_.IsByte(id)) continue;
      const std::string& piece = processor_.IdToPiece(id);
      for (std::size_t pos = 0; pos < piece.size();) {
        const int n = std::max(1, utf8::sequence_length(piece, pos));
        const std::size_t next = pos + static_cast<std::size_t>(n);
        if (next < piece.size()) {
          if (piece.compare(next, kSpaceMark.size(), kSpaceMark) == 0) space_inside = true;
          if (static_cast<unsigned char>(piece[pos]) < 0x80 && static_cast<unsigned char>(piece[next]) < 0x80)
            joined_[fold(piece[pos])].set(fold(piece[next]));
        }
        pos = next;
      }
    }
    // A whitespace character between two printable ones is one U+2581 after normalisation
    // (space always; the others where the normalizer maps them to a space).
    if (!space_inside) {
      const auto spaced = processor_.EncodeAsIds("a b");
      for (char c : {' ', '\t', '\n', '\r'})
        space_like_[static_cast<unsigned char>(c)] = processor_.EncodeAsIds(std::string("a") + c + "b") == spaced;
    }
    cuts_ = true;
  }

  std::size_t fold(char c) const {
    return static_cast<unsigned char>(fold_case_ && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  }

  // The pieces' starts, about kChunkBytes apart, and the text's end (as a cut).
  std::vector<Cut> find_cuts(std::string_view text) const {
    std::vector<Cut> cuts{{0, false}};
    std::size_t pos = kChunkBytes;
    while (cuts_ && pos < text.size()) {
      const char a = text[pos - 1], b = text[pos];
      if (is_graphic_ascii(b)) {
        const bool after_space = space_like_[static_cast<unsigned char>(a)] && pos >= 2 && is_graphic_ascii(text[pos - 2]);
        if (after_space || (is_graphic_ascii(a) && !joined_[fold(a)].test(fold(b)))) {
          cuts.push_back({pos, after_space});
          pos += kChunkBytes;
          continue;
        }
      }
      ++pos;
    }
    cuts.push_back({text.size(), false});
    return cuts;
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<TokenId> specials_;
  bool dummy_prefix_ = false;
  // Cutting (see the top of the file): whether the model allows it, the same model with the
  // other dummy-prefix setting, ASCII pairs that occur inside a piece, whitespace that normalises
  // to a space.
  bool cuts_ = false;
  bool fold_case_ = false;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> other_;
  std::array<std::bitset<128>, 128> joined_{};
  std::array<bool, 256> space_like_{};
};

}  // namespace

std::unique_ptr<Tokenizer> open_sentencepiece_tokenizer(const std::filesystem::path& model_file) {
  return std::make_unique<SentencePieceTokenizer>(model_file);
}

}  // namespace lightdesk
